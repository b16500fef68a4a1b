"""Deploy what was trained: a policy as one ONNX (or TorchScript) file, its outputs checked against SB3.

    rlvision export runs/train/ppo_.../model.zip --format onnx --out policy.onnx          (or python -m rlvision.export)
    rlvision export model.zip --format onnx --out policy.onnx --with-value --obs-from SyntheticPixel-v0
    rlvision export policy.onnx --check-only --zip model.zip                            (re-verify a written file)

The exported graph takes what the env returns (uint8 channel-first frames, as SB3 stores them, or one input per key
of a Dict space), does what SB3's policy does before acting (the division by 255, the SR stage, ImageNet
normalisation, a frozen encoder) and returns the deterministic action, as ``model.predict(obs, deterministic=True)``
returns it (continuous actions unscaled or clipped to the action space). Options: ``with_value`` adds the critic's
value (actor-critic algorithms), ``logits`` the distribution's parameters. BatchNorm is folded into the convolutions
(the rollout inference copy's folding), training-only stages (augmentation) are not in the graph, the batch
dimension is dynamic unless ``batch`` fixes it.

Covered: PPO, A2C, GraphedPPO, TRPO (Discrete, Box, MultiDiscrete actions), MaskablePPO (the action mask is a second
input, ``action_mask``, bool (B, n)), RecurrentPPO (inputs ``state_h``, ``state_c`` (layers, B, hidden) and
``episode_start`` (B,), outputs ``state_h_out``, ``state_c_out``: the actor's LSTM state, reset where an episode
starts, as SB3 does), SAC, TD3, TQC, CrossQ (the actor), DQN and QR-DQN (the greedy action).

Formats: ONNX (``.onnx``, torch.onnx's dynamo exporter), TorchScript (``.pt``) and ExecuTorch (``.pte``: the
graph lowered to XNNPACK, or to ExecuTorch's portable kernels where XNNPACK's do not reproduce the policy (ResT),
with a fixed batch, 1 unless ``batch`` says otherwise: ExecuTorch 1.5.1 plans a dynamic batch's input memory too
small; a ``.pte.json`` next to it names the inputs and outputs; larger batches are run in chunks).

After writing, the file is run (onnxruntime for ONNX, torch for TorchScript, ExecuTorch's Python runtime for
``.pte``) on ``n_check`` observations drawn from the observation space (or from an env,
``obs_from``) and compared with the SB3 model: the max difference of every output and the action agreement are
printed; a mismatch raises :class:`ExportMismatchError` with the numbers and the file is removed. :class:`OnnxPolicy`
and :class:`ExecuTorchPolicy` run an exported file with SB3's ``predict`` signature, so SB3's ``evaluate_policy``
takes them directly. Needs ``pip install 'rlvision[export]'`` (onnx, onnxruntime, onnxscript); ExecuTorch needs
``pip install 'rlvision[executorch]'`` (executorch 1.5.1, checked with rlvision's torch 2.13; it pulls torchao,
coremltools and scikit-learn, hence its own extra).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from .algorithms import ALGORITHMS
from .policies import policy_outputs
from .quiet import quiet_exporter, quiet_native_stderr

FORMATS = ("onnx", "torchscript", "executorch")
EXTENSIONS = {"onnx": ".onnx", "torchscript": ".pt", "executorch": ".pte"}
SUPPORTED = tuple(name for name, row in ALGORITHMS.items() if row.exportable)


class ExportMismatchError(RuntimeError):
    """The exported file's outputs differ from the SB3 model's."""


ExportMismatch = ExportMismatchError  # the name before issue 33 (ruff N818), kept for old imports


def _algo_name(model) -> str:
    return type(model).__name__.lower()


def _folded_policy(model) -> nn.Module:
    """A CPU copy of the policy in eval mode whose rlvision extractors are their folded inference twins (BatchNorm in
    the convolutions, the plain forward: no inference-copy bookkeeping, no augmentation)."""
    from .extractors import VisionExtractor, _plain_forward
    from .inference_copy import InferenceCopy

    source = model.policy  # rebuilt, not deep-copied: a policy keeps its last distribution (non-leaf tensors)
    # SB3's constructor parameters leave some keywords out (share_features_extractor, RecurrentPPO's LSTM sizes):
    # the model's policy_kwargs, as SB3 itself passes them when it builds the policy, fill them in
    params = source._get_constructor_parameters()
    accepted = inspect.signature(type(source)).parameters
    params.update({k: v for k, v in getattr(model, "policy_kwargs", {}).items() if k in accepted})
    policy = type(source)(**params)
    policy.load_state_dict(source.state_dict())
    policy = policy.to("cpu").eval()
    folded: dict[int, nn.Module] = {}
    for parent in list(policy.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, VisionExtractor):
                if id(child) not in folded:
                    twin = InferenceCopy(child, channels_last=False, prepare=_plain_forward, cuda_graph=False)
                    twin.sync()
                    folded[id(child)] = twin.model
                setattr(parent, name, folded[id(child)])
    return policy.requires_grad_(False)


class _PolicyGraph(nn.Module):
    """What goes into the file: raw observations (and a mask) -> action (, value) (, distribution parameters)."""

    def __init__(self, model, with_value: bool, logits: bool):
        super().__init__()
        from stable_baselines3.common.distributions import (CategoricalDistribution, DiagGaussianDistribution,
                                                            MultiCategoricalDistribution)

        self.algo = _algo_name(model)
        if self.algo not in SUPPORTED:
            raise ValueError(f"Cannot export {type(model).__name__}; supported: {', '.join(SUPPORTED)}.")
        row = ALGORITHMS[self.algo]
        self.head = row.head
        self.policy = _folded_policy(model)
        self.space = model.observation_space
        self.keys = list(self.space.spaces) if isinstance(self.space, spaces.Dict) else None
        self.with_value, self.logits = with_value, logits
        self.masked = row.masked
        self.recurrent = row.recurrent  # the actor's LSTM state in and out, episode starts in
        action_space = model.action_space
        box = isinstance(action_space, spaces.Box)
        if box:
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))
        self.actor_critic = row.head == "distribution"  # SB3's action distribution and a state value
        if with_value and (not self.actor_critic or self.recurrent):
            raise ValueError(f"with_value: {type(model).__name__} has no state-value critic to export; export "
                             f"without it (Q values of SAC/TD3 critics and RecurrentPPO's value are not exported).")
        if self.actor_critic:
            dist = self.policy.action_dist
            if isinstance(dist, CategoricalDistribution) or type(dist).__name__ == "MaskableCategoricalDistribution":
                self.kind = "categorical"
            elif isinstance(dist, MultiCategoricalDistribution):
                self.kind, self.action_dims = "multicategorical", list(dist.action_dims)
            elif isinstance(dist, DiagGaussianDistribution):
                self.kind, self.squash = "gaussian", bool(self.policy.squash_output)
            else:
                raise ValueError(f"Cannot export the {type(dist).__name__} action distribution; supported: "
                                 f"Categorical (Discrete), MultiCategorical (MultiDiscrete), DiagGaussian (Box, "
                                 f"no gSDE).")
        elif row.head == "squashed_gaussian":
            if self.policy.actor.use_sde:
                raise ValueError("Cannot export a SAC-style actor with gSDE (use_sde=True).")
            self.kind = "squashed"
        elif row.head == "deterministic":
            self.kind = "deterministic"
        else:  # "q", "quantile": greedy on the values per action
            self.kind = "greedy"
        if logits and self.kind == "greedy":
            raise ValueError(f"logits: {type(model).__name__} acts greedily on Q values; export without --logits.")

    def input_names(self) -> list[str]:
        return ((list(self.keys) if self.keys else ["obs"]) + (["action_mask"] if self.masked else [])
                + (["state_h", "state_c", "episode_start"] if self.recurrent else []))

    def batch_axes(self) -> list[int]:
        """The batch axis of each input (the LSTM state is (layers, batch, hidden))."""
        return [1 if name in ("state_h", "state_c") else 0 for name in self.input_names()]

    def output_names(self) -> list[str]:
        names = ["action"] + (["value"] if self.with_value else [])
        if self.recurrent:
            names += ["state_h_out", "state_c_out"]
        if self.logits:
            names += ["mean", "log_std"] if self.kind in ("gaussian", "squashed") else (
                ["mu"] if self.kind == "deterministic" else ["logits"])
        return names

    def _unscale(self, action: torch.Tensor) -> torch.Tensor:  # [-1, 1] -> the action space, as SB3's predict
        return self.low + 0.5 * (action + 1.0) * (self.high - self.low)

    def forward(self, *inputs: torch.Tensor):
        obs = dict(zip(self.keys, inputs, strict=False)) if self.keys else inputs[0]
        p = self.policy
        out: list[torch.Tensor] = []
        if self.recurrent:  # one step of the actor's LSTM, its state reset where an episode starts (as SB3)
            h, c, start = inputs[-3:]
            features = p.extract_features(obs)
            pi_features = features if p.share_features_extractor else features[0]
            keep = (1.0 - start.to(h.dtype)).view(1, -1, 1)
            hidden, (h, c) = p.lstm_actor(pi_features.unsqueeze(0), (keep * h, keep * c))
            latent_pi = p.mlp_extractor.forward_actor(hidden.squeeze(0))
            params = p.action_net(latent_pi)
            out.append(params.argmax(dim=1) if self.kind == "categorical" else
                       torch.clamp(params, self.low, self.high) if self.kind == "gaussian" else
                       torch.stack([part.argmax(dim=1) for part in torch.split(params, self.action_dims, dim=1)], 1))
            out += [h, c]
            if self.logits:
                out += [params, p.log_std.expand_as(params)] if self.kind == "gaussian" else [params]
            return tuple(out)
        outputs = policy_outputs(p, obs, self.head)
        if self.actor_critic:
            params = outputs.params
            if self.kind == "categorical":
                if self.masked:
                    params = torch.where(inputs[-1].to(torch.bool), params, torch.full_like(params, -1e8))
                action = params.argmax(dim=1)
            elif self.kind == "multicategorical":
                action = torch.stack([part.argmax(dim=1) for part in torch.split(params, self.action_dims, dim=1)],
                                     dim=1)
            else:
                action = self._unscale(torch.tanh(params)) if self.squash else torch.clamp(params, self.low, self.high)
            out.append(action)
            if self.with_value:
                out.append(outputs.value)
            if self.logits:
                out += [params, outputs.log_std.expand_as(params)] if self.kind == "gaussian" else [params]
        elif self.kind == "squashed":
            out.append(self._unscale(torch.tanh(outputs.params)))
            if self.logits:
                out += [outputs.params, outputs.log_std]
        elif self.kind == "deterministic":
            out.append(self._unscale(outputs.params))
            if self.logits:
                out.append(outputs.params)
        else:
            out.append(outputs.q.argmax(dim=1))  # SB3's greedy _predict
        return tuple(out)


def _sample_inputs(model, n: int, obs_from: str | None, seed: int = 0) -> list[np.ndarray]:
    """n observations (and masks for MaskablePPO) as the graph's inputs, from the observation space or an env."""
    space = model.observation_space
    if obs_from:
        from rlvision.envs import make_env

        env = make_env(obs_from, n_envs=1, seed=seed)
        if env.observation_space != space:
            raise ValueError(f"--obs-from {obs_from}: its observations {env.observation_space} are not the model's "
                             f"{space}; pass the env the model was trained on (and its env kwargs) or leave it out.")
        rng = np.random.default_rng(seed)
        frames = []
        obs = env.reset()
        for _ in range(n):
            frames.append(obs)
            obs, *_ = env.step(np.array([env.action_space.sample()]))
        env.close()
        del rng
        stacked = ({k: np.concatenate([f[k] for f in frames]) for k in space.spaces} if isinstance(space, spaces.Dict)
                   else np.concatenate(frames))
    else:
        space.seed(seed)
        samples = [space.sample() for _ in range(n)]
        stacked = ({k: np.stack([s[k] for s in samples]) for k in space.spaces} if isinstance(space, spaces.Dict)
                   else np.stack(samples))
    inputs = [stacked[k] for k in space.spaces] if isinstance(space, spaces.Dict) else [stacked]
    if ALGORITHMS[_algo_name(model)].recurrent:
        rng = np.random.default_rng(seed)
        layers, _, hidden = model.policy.lstm_hidden_state_shape
        inputs += [rng.standard_normal((layers, n, hidden)).astype(np.float32) for _ in range(2)]
        inputs.append((rng.random(n) < 0.3).astype(np.float32))
    if ALGORITHMS[_algo_name(model)].masked:
        rng = np.random.default_rng(seed)
        masks = rng.random((n, int(model.action_space.n))) < 0.6
        masks[np.arange(n), rng.integers(0, model.action_space.n, n)] = True  # at least one legal action
        inputs.append(masks)
    return inputs


def _reference(model, inputs: list[np.ndarray], graph: _PolicyGraph) -> list[np.ndarray]:
    """The SB3 model's own outputs for ``inputs``: predict(deterministic=True) (and predict_values)."""
    space = model.observation_space
    obs = dict(zip(space.spaces, inputs, strict=False)) if isinstance(space, spaces.Dict) else inputs[0]
    kwargs = dict(action_masks=inputs[-1]) if graph.masked else {}
    if graph.recurrent:
        kwargs = dict(state=(inputs[-3], inputs[-2]), episode_start=inputs[-1].astype(bool))
    action, state = model.predict(obs, deterministic=True, **kwargs)
    out = [np.asarray(action)]
    if graph.recurrent:
        return out + [np.asarray(state[0]), np.asarray(state[1])]
    if graph.with_value:
        with torch.no_grad():
            out.append(model.policy.predict_values(model.policy.obs_to_tensor(obs)[0]).cpu().numpy())
    return out


def _run_file(path: str, fmt: str, inputs: list[np.ndarray], graph: _PolicyGraph) -> dict[str, np.ndarray]:
    """The file's outputs by name (a TorchScript file's are positional: ``graph`` names them)."""
    if fmt == "onnx":
        session = OnnxPolicy._session(path)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, dict(zip(graph.input_names(), inputs, strict=False))), strict=False))
    if fmt == "torchscript":
        module = torch.jit.load(path, map_location="cpu")
        with torch.no_grad():
            outputs = module(*[torch.as_tensor(x) for x in inputs])
        return {name: t.numpy() for name, t in zip(graph.output_names(), outputs, strict=False)}
    if fmt == "executorch":
        session = ExecuTorchPolicy._session(path)
        feeds = dict(zip(graph.input_names(), inputs, strict=True))
        return dict(zip(session.output_names, session.run(None, feeds), strict=True))
    raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}.")


@dataclass
class ExportReport:
    """What the check found: max absolute difference per output, fraction of equal actions, observations used."""

    path: str
    format: str
    n: int
    max_diff: dict[str, float]
    action_agreement: float

    def __str__(self) -> str:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in self.max_diff.items())
        return (f"{self.path} ({self.format}): on {self.n} observations, max |difference| vs SB3: {diffs}; "
                f"actions equal: {self.action_agreement:.1%}")


def file_output_names(path: str, fmt: str) -> list[str] | None:
    """The output names an exported file declares (ONNX: its graph; ExecuTorch: its names file; TorchScript: the
    names rlvision stores inside it), or None (a TorchScript file written before that)."""
    import json

    if fmt == "onnx":
        return [o.name for o in OnnxPolicy._session(path).get_outputs()]
    if fmt == "executorch":
        with open(path + ".json") as f:
            return list(json.load(f)["outputs"])
    extra = {"outputs.json": ""}
    torch.jit.load(path, map_location="cpu", _extra_files=extra)
    return json.loads(extra["outputs.json"]) if extra["outputs.json"] else None


def verify(model, path: str, format: str | None = None, n_check: int = 32, obs_from: str | None = None,
           with_value: bool | None = None, atol: float = 1e-4, logits: bool = False) -> ExportReport:
    """Run the exported file on ``n_check`` observations and compare with the SB3 model (see the module doc).
    ``with_value``: also compare the critic's value; None (default): when the file has a value output.
    Raises :class:`ExportMismatchError` with the numbers when an action differs (continuous actions: by more than
    ``atol``) or the value by more than ``atol`` (relative to its scale)."""
    fmt = format or _format_of(path)
    if with_value is None:
        names = file_output_names(path, fmt)
        with_value = bool(names) and "value" in names
    graph = _PolicyGraph(model, with_value, logits)
    inputs = _sample_inputs(model, n_check, obs_from)
    outputs = _run_file(path, fmt, inputs, graph)
    want = _reference(model, inputs, graph)
    diffs, agreement = {}, 1.0
    names = [n for n in graph.output_names() if n not in ("mean", "log_std", "mu", "logits")]
    missing = [n for n in names if n not in outputs]
    if missing:
        raise ExportMismatchError(f"{path} has no output {missing} (it has {sorted(outputs)}): it was exported with "
                                  f"other options (--with-value, or another model); export it again.")
    for name, w in zip(names, want, strict=False):
        g = outputs[name]
        g, w = np.asarray(g).reshape(np.shape(w)), np.asarray(w)
        diffs[name] = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))) if w.size else 0.0
        if name == "action":
            close = np.isclose(g, w, atol=atol, rtol=0) if np.issubdtype(w.dtype, np.floating) else g == w
            agreement = float(np.mean(close.reshape(len(w), -1).all(axis=1)))
    report = ExportReport(path, fmt, n_check, diffs, agreement)
    scale = max(1.0, float(np.max(np.abs(want[1])))) if with_value else 1.0
    states_off = graph.recurrent and max(diffs["state_h_out"], diffs["state_c_out"]) > atol
    if agreement < 1.0 or (with_value and diffs["value"] > atol * scale) or states_off:
        raise ExportMismatchError(f"{report}. The exported graph does not act as the SB3 model; please report it "
                                  f"with the model's algorithm, backbone and spaces.")
    return report


def _format_of(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    formats = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".pte": "executorch"}
    if ext not in formats:
        raise ValueError(f"Cannot tell the format of {path!r} from its extension (.onnx, .pt, .pte); pass format= "
                         f"({', '.join(FORMATS)}).")
    return formats[ext]


def export_policy(model, path: str, format: str = "onnx", batch: int | None = None, opset: int | None = None,
                  with_value: bool = False, logits: bool = False, check: bool = True, n_check: int = 32,
                  obs_from: str | None = None, log=print) -> ExportReport | None:
    """Write ``model``'s deterministic policy to ``path`` (see the module doc); with ``check`` (default) run the
    file and compare with SB3 (:func:`verify`). The file is written under a temporary name and renamed when it has
    passed the check; on a mismatch nothing is left at ``path``."""
    if format not in FORMATS:
        raise ValueError(f"format {format!r}: choose one of {', '.join(FORMATS)}.")
    if format == "executorch" and batch is None:
        batch = 1  # a fixed batch (module doc); the policy classes run larger batches in chunks
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive int (or None for a dynamic batch), got {batch!r}.")
    graph = _PolicyGraph(model, with_value, logits).eval()
    example = [torch.as_tensor(x) for x in _sample_inputs(model, batch or 2, None)]
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise ValueError(f"Cannot write {path}: cannot create its folder ({error}); choose another --out.") from error
    if not os.access(folder, os.W_OK):
        raise ValueError(f"Cannot write {path}: its folder {folder} is not writable; choose another --out.")
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}{os.path.splitext(path)[1]}")
    # ExecuTorch: XNNPACK first; if its kernels do not reproduce the policy (they approximate some operators: ResT's
    # actions differed), the portable kernels (exact, slower)
    backends = ("xnnpack", "portable") if format == "executorch" else (None,)
    try:
        for attempt, backend in enumerate(backends):
            with torch.no_grad():
                if format == "onnx":
                    _onnx_export(graph, example, tmp, batch, opset)
                elif format == "executorch":
                    _executorch_export(graph, example, tmp, batch, backend)
                else:
                    import json

                    torch.jit.save(torch.jit.trace(graph, tuple(example), check_trace=False), tmp,  # names inside
                                   _extra_files={"outputs.json": json.dumps(graph.output_names())})
            report = None
            if check:
                try:
                    report = verify(model, tmp, format, n_check, obs_from, with_value, logits=logits)
                except ExportMismatchError as error:
                    if attempt + 1 == len(backends):
                        raise
                    log(f"{error}\nExecuTorch: XNNPACK's kernels do not reproduce this policy; lowering it to "
                        f"ExecuTorch's portable kernels instead (exact, slower).")
                    continue
                report.path = path
                log(str(report) + (f" [ExecuTorch {backend} kernels]" if backend else ""))
            break
        if format == "executorch":  # the names file first: a .pte is never left without it
            os.replace(tmp + ".json", path + ".json")
        os.replace(tmp, path)
        return report
    finally:
        for leftover in (tmp, tmp + ".data", tmp + ".json"):
            if os.path.exists(leftover):
                os.remove(leftover)


def _onnx_export(graph: _PolicyGraph, example: list[torch.Tensor], path: str, batch: int | None,
                 opset: int | None) -> None:
    try:
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError as error:
        raise ImportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'rlvision[export]'.") \
            from error
    dynamic = None
    if batch is None:
        dim = torch.export.Dim("batch", min=1, max=1 << 16)
        dynamic = (tuple({axis: dim} for axis in graph.batch_axes()),)  # forward(*inputs): the tuple of inputs
    kwargs = dict(dynamo=True, input_names=graph.input_names(), output_names=graph.output_names(),
                  dynamic_shapes=dynamic, external_data=False, verbose=False)
    if opset is not None:
        kwargs["opset_version"] = opset
    with quiet_exporter():
        torch.onnx.export(graph, tuple(example), path, **kwargs)


def _executorch_export(graph: _PolicyGraph, example: list[torch.Tensor], path: str, batch: int,
                       backend: str = "xnnpack") -> None:
    """``graph`` lowered for batches of ``batch`` to ExecuTorch's XNNPACK backend (``backend="xnnpack"``) or left
    on its portable kernels (``"portable"``), written to ``path``; its input and output names, the batch and the
    backend to ``path + ".json"``."""
    import json

    with quiet_exporter():
        try:
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
        except ImportError as error:
            raise ImportError("ExecuTorch export needs executorch: pip install 'rlvision[executorch]' (or use "
                              "format='onnx').") from error
        for tensor in [*graph.parameters(), *graph.buffers()]:  # XNNPACK's passes take contiguous (NCHW) weights
            tensor.data = tensor.data.contiguous()
        program = torch.export.export(graph, tuple(example))
        partitioner = [XnnpackPartitioner()] if backend == "xnnpack" else []
        lowered = to_edge_transform_and_lower(program, partitioner=partitioner).to_executorch()
    with open(path, "wb") as f:
        f.write(lowered.buffer)
    with open(path + ".json", "w") as f:
        json.dump(dict(inputs=graph.input_names(), outputs=graph.output_names(), batch=batch, backend=backend), f)


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


def main(argv: list[str] | None = None) -> None:
    from rlvision.commands import command_parser
    from rlvision.model_files import UntrustedModelError, read_zip
    from rlvision.model_files import load as load_model

    parser = command_parser("export", __doc__)
    parser.add_argument("model", help="an SB3 model zip (or, with --check-only, the exported file)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="file format (default onnx)")
    parser.add_argument("--out", help="the file to write (default: the zip's name with .onnx / .pt / .pte)")
    parser.add_argument("--algo", help="the algorithm, when the zip's name does not say (ppo, sac, dqn, ...; "
                                       "default: told from the file)")
    parser.add_argument("--batch", type=int, help="fix the batch size (default: dynamic)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--with-value", action="store_true", help="also output the critic's value (actor-critic)")
    parser.add_argument("--logits", action="store_true", help="also output the action distribution's parameters")
    parser.add_argument("--n-check", type=int, default=32, help="observations for the check (default 32)")
    parser.add_argument("--obs-from", metavar="ENV_ID",
                        help="check on frames of this env (default: random observations of the model's space)")
    parser.add_argument("--check-only", action="store_true",
                        help="re-verify an existing exported file (MODEL is the file; --zip gives the model zip)")
    parser.add_argument("--zip", dest="zip_path", help="with --check-only: the SB3 model zip to compare with (default: "
                                                               "none)")
    parser.add_argument("--trust-file", action="store_true",
                        help="open a model zip whose entries need unpickling (runs code from the file; only for files "
                             "you trust; zips rlvision saved never need it)")
    args = parser.parse_args(argv)
    zip_path = args.zip_path if args.check_only else args.model
    if not zip_path or not os.path.isfile(zip_path):
        parser.error(f"{zip_path!r}: no such model zip" + (" (--check-only needs --zip MODEL.zip)"
                                                            if args.check_only else ""))
    try:
        read_zip(zip_path)  # not a zip, or not SB3's: no --algo can fix that
    except ValueError as error:
        parser.error(str(error))
    algo = args.algo or _guess_algo(zip_path)
    if algo is None:
        parser.error(f"cannot tell the algorithm of {zip_path}; pass --algo ({', '.join(SUPPORTED)}).")
    try:  # nothing in the file is unpickled (rlvision.model_files) unless --trust-file
        model = load_model(zip_path, device="cpu", algo=algo, trust=args.trust_file)
    except UntrustedModelError as error:
        parser.error(str(error).replace("trust=True) (the command line: --trust-file)", "trust=True): pass "
                                        "--trust-file"))
    except Exception as error:  # noqa: BLE001  (whatever SB3's loader raises on a file of another algorithm)
        parser.error(f"{zip_path}: cannot load it as {algo} ({error}); pass the right --algo.")
    try:
        if args.check_only:
            # the value too when the file has one (--with-value insists on it)
            print(verify(model, args.model, None, args.n_check, args.obs_from, args.with_value or None,
                         logits=args.logits))
            return
        out = args.out or os.path.splitext(zip_path)[0] + EXTENSIONS[args.format]
        export_policy(model, out, args.format, args.batch, args.opset, args.with_value, args.logits,
                      n_check=args.n_check, obs_from=args.obs_from)
    except (ValueError, ImportError, ExportMismatchError) as error:
        parser.exit(2, f"rlvision export: error: {error}\n")


def _guess_algo(path: str) -> str | None:
    """The algorithm from the file name (``ppo_pong.zip``), or the zip's manifest or policy class
    (:func:`rlvision.model_files.algorithm_of`)."""
    from rlvision.algorithms import ALGORITHMS
    from rlvision.model_files import algorithm_of

    name = os.path.basename(path).lower()
    for algo in sorted(ALGORITHMS, key=len, reverse=True):
        if name.startswith(algo + "_") or name.startswith(algo + "-") or name == algo + ".zip":
            return algo
    return algorithm_of(path)


if __name__ == "__main__":
    main()
