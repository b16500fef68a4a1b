"""onnxruntime as a rollout backend for any module (nothing here knows SB3).

PyTorch's per-operator cost dominates a small forward on CPU: a MobileNet-v4 at batch 8 spends most of its time in
dispatch, not arithmetic (BENCHMARKS.md). :class:`OrtRunner` exports a module once per frame shape, the batch
dynamic (``torch.onnx.export(..., dynamo=True, optimize=False)``, so every parameter and buffer stays an initializer
under its own name), and keeps the ONNX graph. A session is made from that graph with the module's *current*
tensors written into its initializers; when the weights change (:meth:`OrtRunner.weights_changed`, which the
inference copy calls after each re-sync, once per PPO update) the next call makes a new session the same way: no
re-export, tens of milliseconds. (onnxruntime pre-packs constant weights, which is where its speed comes from;
weights fed as graph inputs run no faster than torch.)

The export takes seconds (4-8 s for a MobileNet-v4 on a 2-core CPU), so the graph is kept on disk between runs
(:func:`cache_dir`; only the graph is cached: every session gets the current weights). The key covers the module
tree (classes, the source files that define them, their settings, every tensor's name, shape and dtype), the input
shape and the versions of torch, onnx and onnxscript. The first session of every graph, fresh or cached, is checked
against the torch module on the batch it is called with: a cached graph that disagrees is exported again, and a
fresh one that disagrees raises, so the owner falls back to torch.

Needs ``pip install 'rlvision[export]'`` (onnx, onnxruntime, onnxscript). If the export fails, the owner falls back
to torch with a warning (:class:`rlvision.inference_copy.InferenceCopy` does).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import tempfile
import time

import numpy as np
import torch
from torch import nn

from .quiet import quiet_exporter

CACHE_ENV = "RLVISION_CACHE_DIR"


def cache_dir() -> str | None:
    """Where exported rollout graphs are kept between runs: ``$RLVISION_CACHE_DIR`` if set (empty: no cache), else
    ``$XDG_CACHE_HOME/rlvision/onnx`` or ``~/.cache/rlvision/onnx``."""
    if CACHE_ENV in os.environ:
        return os.environ[CACHE_ENV] or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "rlvision", "onnx")


def _settings(module: nn.Module) -> list:
    """A module's plain attributes (ints, floats, strings, flags, tuples of them): settings that shape its forward
    without showing in its tensors."""
    plain = (bool, int, float, str, type(None))
    return sorted((k, repr(v)) for k, v in vars(module).items()
                  if not k.startswith("_") and (isinstance(v, plain) or isinstance(v, tuple)
                                                and all(isinstance(i, plain) for i in v)))


def graph_key(model: nn.Module, shape: tuple) -> str:
    """The cache key of ``model``'s exported graph for inputs of ``shape`` (batch excluded): the versions of torch,
    onnx and onnxscript, the module tree (``repr``, every module's class and settings, every tensor's name, shape
    and dtype) and the source files that define its classes (which covers the helpers they call there)."""
    import onnx
    import onnxscript

    digest = hashlib.sha256()
    for part in (torch.__version__, onnx.__version__, onnxscript.__version__, tuple(shape), repr(model)):
        digest.update(repr(part).encode())
    files = {}
    for name, module in model.named_modules():
        cls = type(module)
        try:
            path = inspect.getsourcefile(cls)
        except TypeError:  # a class without a source file (built in)
            path = None
        if path and path not in files:
            with open(path, "rb") as f:
                files[path] = hashlib.sha256(f.read()).hexdigest()
        digest.update(repr((name, cls.__module__, cls.__qualname__, _settings(module))).encode())
    for source in sorted(files.values()):
        digest.update(source.encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(repr((name, tuple(tensor.shape), str(tensor.dtype))).encode())
    return digest.hexdigest()[:32]


class OrtRunner:
    """Run ``model`` (CPU, eval mode) on onnxruntime: one exported graph per frame shape (any batch), a session made
    with the module's current weights after each change. ``threads``: onnxruntime's intra-op threads (default:
    torch's). ``cache``: the folder of exported graphs (default :func:`cache_dir`; None: export in every process).

    Counters: ``exports`` (graphs exported here), ``cache_hits`` (graphs read from the cache), ``sessions_made``;
    ``seconds``: time spent exporting (or reading the cache) and making sessions."""

    def __init__(self, model: nn.Module, threads: int | None = None, cache: str | None = "default"):
        import onnxruntime as ort

        self.ort = ort
        self.model = model
        self.threads = threads or torch.get_num_threads()
        self.cache = cache_dir() if cache == "default" else cache
        self.graphs: dict[tuple, object] = {}  # input shape -> the exported onnx.ModelProto
        self.sessions: dict[tuple, object] = {}
        self.checked: set[tuple] = set()  # shapes whose graph has been checked against the torch module
        self.cached: set[tuple] = set()  # shapes whose graph came from the cache
        self.exports = 0
        self.cache_hits = 0
        self.sessions_made = 0
        self.seconds = dict(export=0.0, sessions=0.0)  # spent exporting and making sessions (BENCHMARKS.md)

    def weights_changed(self) -> None:
        """The module's weights changed: the next call of each shape makes a new session."""
        self.sessions.clear()

    def _cache_path(self, shape: tuple) -> str | None:
        return os.path.join(self.cache, graph_key(self.model, shape) + ".onnx") if self.cache else None

    def _export(self, shape: tuple):
        state = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
        with tempfile.TemporaryDirectory(prefix="rlvision-ort-") as folder:
            path = os.path.join(folder, "m.onnx")
            with torch.no_grad(), quiet_exporter():
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
        return proto

    def _load_cached(self, path: str | None):
        """The cached graph at ``path``, or None (no cache, no file, or a file that does not parse: exported
        again and overwritten)."""
        if path is None or not os.path.exists(path):
            return None
        import onnx

        try:
            proto = onnx.load(path)
        except Exception:  # noqa: BLE001  (a damaged file, whatever onnx raises: export again)
            return None
        self.cache_hits += 1
        return proto

    def _store(self, path: str | None, proto) -> None:
        """Write ``proto`` to the cache under a temporary name, then rename (a failure only skips the cache)."""
        if path is None:
            return
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".onnx")
            with os.fdopen(fd, "wb") as f:
                f.write(proto.SerializeToString())
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.remove(tmp)

    def _graph(self, shape: tuple, fresh: bool = False):
        start = time.perf_counter()
        path = self._cache_path(shape)
        proto = None if fresh else self._load_cached(path)
        if proto is None:
            proto = self._export(shape)
            self._store(path, proto)
            self.cached.discard(shape)
        else:
            self.cached.add(shape)
        self.graphs[shape] = proto
        self.seconds["export"] += time.perf_counter() - start
        return proto

    def _session(self, shape: tuple):
        if shape not in self.sessions:
            proto = self.graphs[shape] if shape in self.graphs else self._graph(shape)
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

    def _run(self, shape: tuple, x: np.ndarray) -> np.ndarray:
        return self._session(shape).run(["y"], {"x": x})[0]

    def _check(self, shape: tuple, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The first call of a graph: its output against the torch module's on the same batch. A cached graph that
        disagrees is exported again; a fresh one that disagrees raises ValueError."""
        with torch.no_grad():
            expected = self.model(torch.from_numpy(x)).numpy()
        scale = float(np.abs(expected).max()) + 1e-6

        def agrees(y):
            return y.shape == expected.shape and float(np.abs(y - expected).max()) <= 1e-4 * scale + 1e-6

        if not agrees(out) and shape in self.cached:
            self.sessions.pop(shape, None)
            self._graph(shape, fresh=True)
            out = self._run(shape, x)
        if not agrees(out):
            diff = float(np.abs(out - expected).max()) if out.shape == expected.shape else float("nan")
            raise ValueError(f"the onnxruntime graph does not reproduce the torch module (largest difference "
                             f"{diff:.3g} at scale {scale:.3g}, output {out.shape} vs {expected.shape})")
        self.checked.add(shape)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[1:])
        array = np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)
        out = self._run(shape, array)
        if shape not in self.checked:
            out = self._check(shape, array, out)
        return torch.from_numpy(out)
