"""Exported files run with SB3's ``predict`` signature: :class:`OnnxPolicy` (onnxruntime), :class:`ExecuTorchPolicy`
(ExecuTorch's Python runtime), so SB3's ``evaluate_policy`` takes them."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..quiet import quiet_exporter, quiet_native_stderr


class OnnxPolicy:
    """An exported ONNX policy with SB3's ``predict`` signature: ``predict(obs, state=None, episode_start=None,
    deterministic=True) -> (action, None)`` (RecurrentPPO: ``(action, (h, c))``), for single or batched
    observations (channel-last frames are transposed as SB3 does), so SB3's
    ``evaluate_policy(OnnxPolicy(path), env)`` runs it. ``action_masks=`` for a MaskablePPO export.
    Needs onnxruntime."""

    def __init__(self, path: str, threads: int | None = None):
        self.path = path
        self.session = self._session(path, threads)
        self.inputs = [(i.name, i.shape) for i in self.session.get_inputs()]
        names = [n for n, _ in self.inputs]
        self.masked = "action_mask" in names
        self.recurrent = "state_h" in names
        self.outputs = [o.name for o in self.session.get_outputs()]
        types = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(bool)": np.bool_,
                 "tensor(int64)": np.int64}
        self.dtypes = {i.name: types.get(i.type, np.float32) for i in self.session.get_inputs()}

    @staticmethod
    def _session(path: str, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise ImportError("Running an ONNX policy needs onnxruntime: pip install 'rlvision[export]'.") from error
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such ONNX file; write one with `rlvision export MODEL.zip`.")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ValueError(f"{path}: not a readable ONNX model ({error}); export it again with "
                             f"`rlvision export MODEL.zip --out {path}`.") from error

    def _prepare(self, x: np.ndarray, shape, name: str) -> tuple[np.ndarray, bool]:
        want = tuple(shape[1:])
        x = np.asarray(x)
        single = x.ndim == len(want)
        if single:
            x = x[None]
        if tuple(x.shape[1:]) != want and len(want) == 3 and tuple(x.shape[1:]) == (want[1], want[2], want[0]):
            x = np.transpose(x, (0, 3, 1, 2))  # channel-last frames, as SB3's predict transposes them
        fixed = [d for d in want if isinstance(d, int)]
        dims = [d for d, w in zip(x.shape[1:], want, strict=False) if isinstance(w, int)]
        if x.ndim != len(want) + 1 or dims != fixed:
            raise ValueError(f"{self.path}: input {name!r} wants observations of shape {want} (or a batch of them), "
                             f"got {np.shape(x)}; pass what the env the policy was trained on returns.")
        if x.dtype != self.dtypes[name]:
            x = x.astype(self.dtypes[name])
        return np.ascontiguousarray(x), single

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True,
                action_masks: np.ndarray | None = None) -> tuple[np.ndarray, None]:
        if not deterministic:
            raise ValueError("An exported policy acts deterministically; call predict(..., deterministic=True).")
        feeds, single = {}, False
        for name, shape in self.inputs:
            if name in ("action_mask", "state_h", "state_c", "episode_start"):
                continue
            value = observation[name] if isinstance(observation, dict) else observation
            feeds[name], single = self._prepare(value, shape, name)
        if self.masked:
            if action_masks is None:
                raise ValueError(f"{self.path} is a MaskablePPO policy: pass action_masks= (bool, (n_envs, n)).")
            masks = np.asarray(action_masks, dtype=bool)
            feeds["action_mask"] = masks[None] if masks.ndim == 1 else masks
        if self.recurrent:  # SB3's RecurrentPPO.predict: zero state and no episode start unless given
            n = 1 if single else len(next(iter(feeds.values())))
            layers, hidden = self.inputs[-3][1][0], self.inputs[-3][1][2]
            if state is None:
                zeros = np.zeros((layers, n, hidden), dtype=np.float32)
                state = (zeros, zeros)
            starts = np.zeros(n, dtype=np.float32) if episode_start is None else np.asarray(episode_start, np.float32)
            feeds.update(state_h=np.asarray(state[0], np.float32), state_c=np.asarray(state[1], np.float32),
                         episode_start=starts.reshape(n))
            action, h, c = self.session.run(["action", "state_h_out", "state_c_out"], feeds)
            return (action[0] if single else action), (h, c)
        action = self.session.run(["action"], feeds)[0]
        return (action[0] if single else action), None


class _Input:
    def __init__(self, name: str, shape: list, type_: str):
        self.name, self.shape, self.type = name, shape, type_


class _ExecuTorchSession:
    """An ExecuTorch program behind onnxruntime's session interface (what :class:`OnnxPolicy` calls)."""

    _TYPES = {0: "tensor(uint8)", 4: "tensor(int64)", 6: "tensor(float)", 11: "tensor(bool)"}

    def __init__(self, path: str, method, names: dict):
        self.path, self.method = path, method
        meta = method.metadata
        self.batch = int(names["batch"])
        self.inputs = []
        for i, name in enumerate(names["inputs"]):
            t = meta.input_tensor_meta(i)
            shape = list(t.sizes())
            shape[self._axis(name)] = "batch"  # any batch: run in chunks of the file's
            self.inputs.append(_Input(name, shape, self._TYPES.get(int(t.dtype()), "tensor(float)")))
        self.output_names = list(names["outputs"])

    @staticmethod
    def _axis(name: str) -> int:
        return 1 if name.startswith("state_") else 0  # the LSTM state is (layers, batch, hidden)

    def get_inputs(self) -> list[_Input]:
        return self.inputs

    def get_outputs(self) -> list[_Input]:
        return [_Input(n, [], "") for n in self.output_names]

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs for any batch: chunks of the file's batch, the last one padded by repeating its last row."""
        n = np.shape(feeds[self.inputs[0].name])[self._axis(self.inputs[0].name)]
        chunks: list[list[np.ndarray]] = []
        for start in range(0, n, self.batch):
            index = np.minimum(np.arange(start, start + self.batch), n - 1)
            args = [torch.as_tensor(np.ascontiguousarray(np.take(feeds[i.name], index, axis=self._axis(i.name))))
                    for i in self.inputs]
            keep = min(self.batch, n - start)
            chunks.append([np.take(t.numpy(), np.arange(keep), axis=self._axis(name))
                           for name, t in zip(self.output_names, self.method.execute(args), strict=False)])
        by_name = {name: np.concatenate([c[k] for c in chunks], axis=self._axis(name))
                   for k, name in enumerate(self.output_names)}
        return [by_name[name] for name in (output_names or self.output_names)]


class ExecuTorchPolicy(OnnxPolicy):
    """An exported ExecuTorch (``.pte``) policy with SB3's ``predict`` signature, as :class:`OnnxPolicy`; runs on
    ExecuTorch's Python runtime (XNNPACK). Needs ``rlvision[executorch]`` and the ``.pte.json`` written next to it."""

    @staticmethod
    def _session(path: str, threads: int | None = None) -> _ExecuTorchSession:
        import json

        try:
            with quiet_exporter():
                from executorch.runtime import Runtime
        except ImportError as error:
            raise ImportError("Running an ExecuTorch policy needs executorch: pip install "
                              "'rlvision[executorch]'.") from error
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such ExecuTorch file; write one with `rlvision export MODEL.zip "
                                    f"--format executorch`.")
        try:
            with open(path + ".json") as f:
                names = json.load(f)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: its names file {path}.json is missing or unreadable ({error}); export the "
                             f"model again with `rlvision export MODEL.zip --format executorch --out {path}`.") \
                from error
        try:
            with quiet_native_stderr():  # XNNPACK's C++ start-up lines (how it read the CPU)
                method = Runtime.get().load_program(path).load_method("forward")
        except Exception as error:  # ExecuTorch raises RuntimeError/ValueError with its own codes
            raise ValueError(f"{path}: not a readable ExecuTorch program ({error}); export it again with "
                             f"`rlvision export MODEL.zip --format executorch --out {path}`.") from error
        return _ExecuTorchSession(path, method, names)
