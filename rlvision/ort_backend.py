"""onnxruntime as a rollout backend for any module (nothing here knows SB3).

PyTorch's per-operator cost dominates a small forward on CPU: a MobileNet-v4 at batch 8 spends most of its time in
dispatch, not arithmetic (BENCHMARKS.md). :class:`OrtRunner` exports a module once per frame shape, the batch
dynamic (``torch.onnx.export(..., dynamo=True, optimize=False)``, so every parameter and buffer stays an initializer
under its own name), and keeps the ONNX graph. A session is made from that graph with the module's *current*
tensors written into its initializers; when the weights change (:meth:`OrtRunner.weights_changed`, which the
inference copy calls after each re-sync, once per PPO update) the next call makes a new session the same way: no
re-export, tens of milliseconds. (onnxruntime pre-packs constant weights, which is where its speed comes from;
weights fed as graph inputs run no faster than torch.)

Needs ``pip install 'rlvision[export]'`` (onnx, onnxruntime, onnxscript). If the export fails, the owner falls back
to torch with a warning (:class:`rlvision.inference.InferenceCopy` does).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time

import numpy as np
import torch
from torch import nn


class OrtRunner:
    """Run ``model`` (CPU, eval mode) on onnxruntime: one exported graph per frame shape (any batch), a session made
    with the module's current weights after each change. ``threads``: onnxruntime's intra-op threads (default:
    torch's)."""

    def __init__(self, model: nn.Module, threads: int | None = None):
        import onnxruntime as ort

        self.ort = ort
        self.model = model
        self.threads = threads or torch.get_num_threads()
        self.graphs: dict[tuple, object] = {}  # input shape -> the exported onnx.ModelProto
        self.sessions: dict[tuple, object] = {}
        self.exports = 0
        self.sessions_made = 0
        self.seconds = dict(export=0.0, sessions=0.0)  # spent exporting and making sessions (BENCHMARKS.md)

    def weights_changed(self) -> None:
        """The module's weights changed: the next call of each shape makes a new session."""
        self.sessions.clear()

    def _export(self, shape: tuple):
        start = time.perf_counter()
        state = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
        with tempfile.TemporaryDirectory(prefix="rlvision-ort-") as folder:
            path = os.path.join(folder, "m.onnx")
            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
                batch = torch.export.Dim("batch", min=1, max=1 << 16)
                torch.onnx.export(self.model, (torch.zeros(2, *shape),), path, dynamo=True, input_names=["x"],
                                  output_names=["y"], dynamic_shapes=({0: batch},), external_data=False,
                                  optimize=False, verbose=False)
            import onnx

            proto = onnx.load(path)
        missing = [name for name in state if name not in {i.name for i in proto.graph.initializer}]
        if missing:
            raise ValueError(f"the exported graph does not keep these weights as initializers: {missing[:5]}")
        self.exports += 1
        self.seconds["export"] += time.perf_counter() - start
        return proto

    def _session(self, shape: tuple):
        if shape not in self.sessions:
            if shape not in self.graphs:
                self.graphs[shape] = self._export(shape)
            proto = self.graphs[shape]
            start = time.perf_counter()
            state = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
            for init in proto.graph.initializer:  # the current weights into the graph (same dtype and shape)
                if init.name in state:
                    array = state[init.name].detach().numpy()
                    del init.float_data[:], init.int64_data[:], init.int32_data[:], init.double_data[:]
                    init.raw_data = np.ascontiguousarray(array).tobytes()
            options = self.ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3  # errors only (its graph optimizer warns about nodes it leaves alone)
            # no spin-waiting between calls: the env steps and torch's update share the cores with it
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = self.ort.InferenceSession(proto.SerializeToString(), options,
                                                providers=["CPUExecutionProvider"])
            self.sessions[shape] = session
            self.sessions_made += 1
            self.seconds["sessions"] += time.perf_counter() - start
        return self.sessions[shape]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        session = self._session(tuple(x.shape[1:]))
        out = session.run(["y"], {"x": np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)})[0]
        return torch.from_numpy(out)
