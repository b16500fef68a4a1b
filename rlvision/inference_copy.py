"""The rollout fast path, for any module (nothing here knows SB3).

- :class:`InferenceCopy`: an inference-only twin of a module: BatchNorm folded into convs, channels_last,
  ``torch.inference_mode``, re-synced from the training weights only when they have changed (once per rollout in
  PPO). On CUDA its forward is captured once per input shape in a CUDA graph and replayed
  (:class:`rlvision.cuda_graphs.CudaGraphRunner`: a small forward at the rollout batch is bound by kernel launches,
  a MobileNet launches ~100 of them; a replay launches one).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .cuda_graphs import CudaGraphCache, CudaGraphRunner


def foldable_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of (Conv2d, BatchNorm2d) pairs that follow each other in an ``nn.Sequential`` (e.g. ConvNormAct), so
    the norm can be folded into the conv for inference. BatchNorm without running statistics is left out."""
    pairs = []
    for name, seq in module.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
                    and conv.out_channels == bn.num_features):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + conv_name, prefix + bn_name))
    return pairs


class InferenceCopy:
    """A frozen, folded copy of ``source`` that follows its weights.

    Call it like the source (in eval mode, without autograd): it re-syncs first when :meth:`mark_stale` was called
    since the last sync (the owner calls it on every switch to train mode and after ``load_state_dict``) or when a
    parameter or buffer changed in a way tensor version counters and storage pointers see (``copy_``, ``.to()``,
    a foreach optimizer step; a few microseconds to check). Fused optimizers and writes through ``.data`` do not bump
    version counters, hence the explicit marking. Then it runs the copy under ``torch.inference_mode``. Its outputs
    equal the source's in eval mode up to float rounding.

    Not a submodule of anything: it never shows up in ``state_dict``, ``parameters()`` or the optimizer.

    :param source: the training module (kept by reference).
    :param channels_last: store 4D weights and feed inputs in channels_last (faster convolutions on CPU).
    :param prepare: called on the fresh deep copy before folding (e.g. to switch off the source's own fast path).
    :param cuda_graph: on CUDA inputs, replay the copy's forward from a CUDA graph per input shape
        (:class:`CudaGraphRunner`; re-syncs copy weights in place, so graphs survive them). If capture fails, a
        warning says why and the copy runs eagerly from then on, with the same results.
    :param backend: ``"torch"`` (default) or ``"onnxruntime"``: on CPU inputs, run the copy on onnxruntime
        (:class:`rlvision.ort_backend.OrtRunner`: exported once per input shape; after each re-sync a new session
        is made from the same graph with the new weights, no re-export; the copy is kept contiguous, not
        channels_last). If the export fails, a warning says why and the copy runs on torch from then on.
    """

    def __init__(self, source: nn.Module, channels_last: bool = True, prepare=None, cuda_graph: bool = True,
                 backend: str = "torch"):
        if backend not in ("torch", "onnxruntime"):
            raise ValueError(f"backend must be 'torch' or 'onnxruntime', got {backend!r}.")
        self.source = source
        self.channels_last = channels_last
        self.prepare = prepare
        self.cuda_graph = cuda_graph
        self.backend = backend
        if backend == "onnxruntime":
            self.channels_last = False  # onnxruntime reads the weights in place: contiguous
        self.runner = None
        self.runner_error: str | None = None
        self.graphs: CudaGraphCache | None = None
        self.model: nn.Module | None = None
        self._source_tensors: list[torch.Tensor] = []
        self._signature: list | None = None
        self.stale = True
        self.syncs = 0

    @property
    def graph_error(self) -> str | None:
        """Why the CUDA graph capture failed (the copy then runs eagerly), or None."""
        return self.graphs.error if self.graphs is not None else None

    def mark_stale(self) -> None:
        """The source's weights may change: re-sync before the next call."""
        self.stale = True

    def __deepcopy__(self, memo: dict) -> InferenceCopy:
        """A deep copy of the source gets a fresh, empty twin of its own (built on first use)."""
        return InferenceCopy(copy.deepcopy(self.source, memo), self.channels_last, self.prepare, self.cuda_graph,
                             self.backend)

    def _tensors(self) -> list[torch.Tensor]:
        return [*self.source.parameters(), *self.source.buffers()]

    def _current_signature(self) -> list:
        """Version counter and storage of each source tensor (the tensor list is collected at sync time: walking
        the module tree on every call would cost more than a CUDA-graph replay of the forward)."""
        return [(t._version, t.data_ptr()) for t in self._source_tensors]

    def _build(self) -> None:
        # hooks (the profiler's, a user's) stay on the source: the copy starts with empty hook dicts
        memo = {id(hooks): type(hooks)() for module in self.source.modules() for name, hooks in vars(module).items()
                if name.endswith("_hooks") or "_hooks_" in name}
        model = copy.deepcopy(self.source, memo)
        if self.prepare is not None:
            self.prepare(model)
        self.folds = []
        src_modules = dict(self.source.named_modules())
        for conv_name, bn_name in foldable_pairs(model):
            conv = model.get_submodule(conv_name)
            if conv.bias is None:
                conv.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device))
            parent_name, _, child = bn_name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, nn.Identity())
            self.folds.append((conv, src_modules[conv_name], src_modules[bn_name]))
        model.eval().requires_grad_(False)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        elif self.backend == "onnxruntime":  # weights read in place by onnxruntime: plain contiguous layout
            model.to(memory_format=torch.contiguous_format)
        dst = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        src = {**dict(self.source.named_parameters()), **dict(self.source.named_buffers())}
        folded = {id(conv.weight) for conv, _, _ in self.folds} | {id(conv.bias) for conv, _, _ in self.folds}
        self.copies = [(dst[name], src[name]) for name in dst if id(dst[name]) not in folded]
        self.model = model
        self.graphs = CudaGraphRunner(model) if self.cuda_graph else None
        self.runner = None
        if self.backend == "onnxruntime" and self.runner_error is None:
            from .ort_backend import OrtRunner

            self.runner = OrtRunner(model)

    @torch.no_grad()
    def sync(self) -> None:
        """Copy the source's current weights into the copy (folding BatchNorm again)."""
        if self.model is None or self._signature is None or len(self._signature) != len(self._tensors()):
            self._build()
        for dst, src in self.copies:
            dst.copy_(src)
        for conv, src_conv, bn in self.folds:
            weight, bias = fuse_conv_bn_weights(src_conv.weight, src_conv.bias, bn.running_mean, bn.running_var,
                                                bn.eps, bn.weight, bn.bias)
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
        self._source_tensors = self._tensors()
        self._signature = self._current_signature()
        self.stale = False
        self.syncs += 1
        if self.runner is not None:
            self.runner.weights_changed()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.stale or self._signature != self._current_signature():
            src, dst = self._tensors(), [*self.model.parameters(), *self.model.buffers()] if self.model else []
            if src and dst and src[0].device != dst[0].device:
                self.model = None  # moved with .to(device): rebuild there
            self.sync()
        if self.runner is not None and x.device.type == "cpu":
            try:
                with torch.no_grad():
                    return self.runner(x)
            except Exception as error:  # noqa: BLE001  (the exporter's or onnxruntime's: the copy runs on torch from here)
                import warnings

                self.runner, self.runner_error = None, f"{type(error).__name__}: {error}"[:500]
                warnings.warn(f"onnxruntime rollout backend unavailable ({self.runner_error}); running on torch.",
                              RuntimeWarning, stacklevel=2)
        with torch.inference_mode():
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            out = self.graphs(x) if self.graphs is not None else self.model(x)  # eager off CUDA or after a failure
        return out.clone()  # a normal tensor: SB3 may use it in later autograd graphs (DQN/SAC targets)
