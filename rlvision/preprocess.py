"""Preprocessing stages in front of a backbone: super-resolution (FlexNet, the SR transformer), bicubic, identity.

One registry, like the backbones': ``create_preprocess(name, scale=2, channels=3, **kwargs)`` and
``list_preprocess()``. Every stage is a :class:`PreprocessStage`: (B, channels, H, W) in [0, 1] ->
(B, channels, scale*H, scale*W). A stage works on single frames; :meth:`PreprocessStage.forward_stack` runs it on
frame stacks (B, k*channels, H, W) by folding the k frames into the batch.

Weights are saved with :func:`save_preprocess` (name, config and state dict) and loaded with
:func:`load_preprocess` (``torch.load(weights_only=True)``); a file made for another stage or config is refused with
a message that says what it holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .checks import accepted_keywords, check_keywords
from .registry import lookup


class PreprocessStage(nn.Module):
    """Base of every stage. Subclasses set ``scale``, ``channels`` and ``min_input_size`` and implement forward."""

    scale: int
    channels: int
    min_input_size: int = 1

    def forward_stack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, k*channels, H, W) -> (B, k*channels, s*H, s*W), each of the k frames through the stage."""
        b, c, h, w = x.shape
        if c % self.channels:
            raise ValueError(f"{type(self).__name__} works on {self.channels}-channel frames; the observation has "
                             f"{c} channels, not a multiple. Build the stage with channels=1 (grey stacks) or 3 (RGB).")
        if min(h, w) < self.min_input_size:
            raise ValueError(f"{type(self).__name__} needs frames of at least {self.min_input_size} px, got {h}x{w}.")
        y = self(x.reshape(b * (c // self.channels), self.channels, h, w))
        return y.reshape(b, c, *y.shape[-2:])

    def reparameterize(self) -> PreprocessStage:
        """Fuse multi-branch layers for inference (no-op for stages without any); ``train()`` undoes it."""
        for module in self.modules():
            if module is not self and hasattr(module, "reparameterize"):
                module.reparameterize()
        return self


class Identity(PreprocessStage):
    """No preprocessing (scale 1)."""

    def __init__(self, channels: int = 3, scale: int = 1):
        super().__init__()
        if scale != 1:
            raise ValueError("identity has scale 1.")
        self.scale, self.channels = 1, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def bicubic(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upscaling of (B, C, H, W) by ``scale`` (not clamped)."""
    return x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


class Bicubic(PreprocessStage):
    """Bicubic upscaling by ``scale`` (the baseline every SR stage must beat), clamped to [0, 1]."""

    def __init__(self, channels: int = 3, scale: int = 2):
        super().__init__()
        self.scale, self.channels = scale, channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bicubic(x, self.scale).clamp(0, 1)


@dataclass(frozen=True)
class PreprocessInfo:
    name: str
    builder: Callable[..., PreprocessStage]
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, PreprocessInfo] = {}


def register_preprocess(name: str, builder: Callable[..., PreprocessStage], description: str = "",
                        **defaults: Any) -> None:
    if name in _REGISTRY:
        raise ValueError(f"Preprocessing stage {name!r} is already registered.")
    _REGISTRY[name] = PreprocessInfo(name, builder, description, dict(defaults))


def list_preprocess() -> list[str]:
    return sorted(_REGISTRY)


def preprocess_info(name: str) -> PreprocessInfo:
    """The :class:`PreprocessInfo` of ``name``; an unknown name raises a ValueError listing the known ones."""
    return lookup(_REGISTRY, name, "preprocessing stage")


def create_preprocess(name: str, scale: int | None = None, channels: int = 3, **kwargs: Any) -> PreprocessStage:
    """Build stage ``name`` for ``channels``-channel frames, upscaling by ``scale`` (default: the stage's own)."""
    info = preprocess_info(name)
    check_keywords(kwargs, accepted_keywords(info.builder), f"Preprocessing stage {name!r}")
    config = {**info.defaults, **kwargs, "channels": channels}
    if scale is not None:
        config["scale"] = scale
    stage = info.builder(**config)
    stage.preprocess_name, stage.preprocess_config = name, config
    return stage


def save_preprocess(stage: PreprocessStage, path: str) -> None:
    """Save name, config and weights so :func:`load_preprocess` can check what it loads (written under a temporary
    name, then renamed: a crash never leaves a half-written file at ``path``)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save({"name": getattr(stage, "preprocess_name", type(stage).__name__),
                "config": getattr(stage, "preprocess_config", {}), "state_dict": stage.state_dict()}, tmp)
    os.replace(tmp, path)


def read_preprocess_file(path: str) -> dict:
    """The contents of a preprocessing-weights file, or an error that names the file, the problem and the fix:
    missing, empty, truncated or not a torch file, a pickled object instead of weights. Entry points call it before
    anything trains (``rlvision compare --preprocess stage:FILE`` checks every file first)."""
    fix = "train the stage again with `rlvision train-sr` (it writes weights.pt), or pass the file it wrote"
    if not os.path.exists(path):
        raise FileNotFoundError(f"No preprocessing weights at {path!r}; {fix}.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"Preprocessing weights {path!r} are empty (0 bytes): an interrupted copy or save? {fix}.")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001  (truncated or foreign files fail in many ways)
        kind = ("holds pickled Python objects, which are never unpickled here"
                if "weights only load failed" in str(error).lower() else
                "is not a readable torch file (truncated, or another format)")
        raise ValueError(f"Preprocessing weights {path!r} {kind}: {type(error).__name__}: {str(error)[:200]}. "
                         f"{fix[0].upper()}{fix[1:]}.") from None
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"Preprocessing weights {path!r} hold {type(data).__name__}, not a state dict or a file "
                         f"saved by rlvision.save_preprocess; {fix}.")
    return data if isinstance(data, dict) and "state_dict" in data else {"state_dict": state}


def load_preprocess(stage: PreprocessStage, path: str) -> PreprocessStage:
    """Load weights saved by :func:`save_preprocess` (or a bare state dict) into ``stage``.

    Uses ``torch.load(weights_only=True)``; a file for another stage, scale, channel count or width raises a
    ValueError naming what the file holds and what was asked for. Fused inference kernels are rebuilt from the
    loaded weights on the next ``reparameterize()``, never reused stale.
    """
    data = read_preprocess_file(path)
    state = data["state_dict"]
    asked = (getattr(stage, "preprocess_name", None), getattr(stage, "preprocess_config", None))
    if "name" in data and asked[0] is not None and (data["name"], data.get("config")) != asked:
        raise ValueError(f"{path} holds weights for {data['name']} {data.get('config')}, but the stage is "
                         f"{asked[0]} {asked[1]}. Build the stage with the file's config, or train new weights.")
    own = stage.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{path} does not fit {type(stage).__name__}: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, wrong shapes {wrong[:5]} (first 5 of each).")
    stage.load_state_dict(state)
    return stage


register_preprocess("identity", Identity, "no preprocessing", scale=1)
register_preprocess("bicubic", Bicubic, "bicubic upscaling", scale=2)
