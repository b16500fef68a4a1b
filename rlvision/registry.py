"""One registry for every backbone family.

A family registers a builder per variant name; ``create_backbone`` builds it and every backbone it returns is a
:class:`Backbone`, so the SB3 extractor (and later preprocessing stages, profilers) never special-case a family.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import torch
from torch import nn

from .checks import accepted_keywords, check_keywords


class Backbone(nn.Module):
    """Base class of every registered backbone.

    Subclasses set ``in_channels``, ``num_features`` (channels of the final feature map), ``total_stride``,
    ``min_input_size`` and ``num_classes``, and implement :meth:`forward_features`.

    - ``forward_features(x)``: (B, C_in, H, W) float -> (B, num_features, H', W') feature map, or (B, num_features)
      for backbones that pool themselves (Conformer).
    - ``forward_head(f)``: feature map -> (B, num_classes) logits, or (B, num_features) pooled features when
      ``num_classes == 0`` (headless mode).
    - ``forward(x)`` = ``forward_head(forward_features(x))``.
    """

    in_channels: int
    num_features: int
    total_stride: int
    min_input_size: int
    num_classes: int = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def init_weights(self) -> None:
        """The family's own initialisation (``init="backbone"`` in :class:`rlvision.VisionExtractor`). The base
        keeps what the builder made (PyTorch's default init: CleanRL's IMPALA agent trains its convs from it);
        families override it (MobileNet-v4: timm's kaiming fan-out, residual branches starting at zero)."""

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of the blocks in the order they run, for per-stage diagnostics
        (:mod:`rlvision.diagnostics` groups them by output resolution): the children of ``self.features`` when it
        is an ``nn.Sequential``, else the direct children but a classifier ``head``."""
        features = getattr(self, "features", None)
        if isinstance(features, nn.Sequential):
            return [(f"features.{name}", module) for name, module in features.named_children()]
        return [(name, module) for name, module in self.named_children() if name != "head"]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.mean((2, 3))
        head = getattr(self, "head", None)
        return head(pooled) if head is not None else pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x.shape)
        return self.forward_head(self.forward_features(x))

    def check_input(self, shape: tuple[int, ...] | torch.Size) -> None:
        """Raise a ValueError that says what to do unless ``shape`` is (B, in_channels, H, W), H, W >= minimum."""
        if len(shape) != 4:
            raise ValueError(f"{type(self).__name__} expects a (B, C, H, W) batch, got shape {tuple(shape)}.")
        channels, height, width = shape[1:]
        if channels != self.in_channels:
            hint = " (channel-last input? permute to (B, C, H, W))" if shape[-1] == self.in_channels else ""
            raise ValueError(f"{type(self).__name__} was built for {self.in_channels} input channels, "
                             f"got {channels} in shape {tuple(shape)}{hint}.")
        if min(height, width) < self.min_input_size:
            raise ValueError(f"Input {height}x{width} is smaller than the minimum side {self.min_input_size} of "
                             f"{type(self).__name__}; upscale the observation (e.g. a resize wrapper) to at least "
                             f"{self.min_input_size}x{self.min_input_size}.")

    @torch.no_grad()
    def feature_shape(self, height: int, width: int) -> tuple[int, ...]:
        """(C, H', W') (or (C,)) of ``forward_features`` for a ``height`` x ``width`` input (one dummy eval forward)."""
        self.check_input((1, self.in_channels, height, width))
        was_training = self.training
        self.eval()
        try:
            param = next(self.parameters(), None)
            dummy = torch.zeros(1, self.in_channels, height, width,
                                device=param.device if param is not None else None)
            out = self.forward_features(dummy)
        finally:
            self.train(was_training)
        return tuple(out.shape[1:])  # type: ignore[return-value]


@dataclass(frozen=True)
class BackboneInfo:
    """What the registry knows about a variant before building it."""

    name: str
    family: str
    builder: Callable[..., Backbone]
    min_input_size: int
    description: str = ""
    default_pool: str | int = 4
    defaults: dict[str, Any] = field(default_factory=dict)
    default_init: str = "backbone"
    load_pretrained: Callable[..., Any] | None = None
    channels_last: bool = False


_REGISTRY: dict[str, BackboneInfo] = {}


INITS = ("backbone", "sb3")


def register_backbone(name: str, builder: Callable[..., Backbone], *, family: str, min_input_size: int,
                      description: str = "", default_pool: str | int = 4, default_init: str = "backbone",
                      load_pretrained: Callable[..., Any] | None = None, channels_last: bool = False,
                      **defaults: Any) -> None:
    """Register ``builder(in_channels=..., num_classes=..., **defaults, **kwargs)`` under ``name``.

    ``default_pool`` is how :class:`rlvision.VisionExtractor` reduces the feature map unless told otherwise:
    ``"flatten"``, ``"avg"`` (global average) or an int g (average-pool to at most g x g, then flatten).
    ``default_init`` is the extractor's ``init`` unless told otherwise: ``"backbone"`` (the family's own
    :meth:`Backbone.init_weights`, SB3's orthogonal init only on the heads) or ``"sb3"`` (SB3's orthogonal init
    over the whole extractor, which suits NatureCNN).
    ``load_pretrained(model, name, path, frames=...)`` is the family's hook for ``create_backbone(...,
    pretrained=path)`` (as timm's per-family ``checkpoint_filter_fn``): the registry knows no family's file format.
    ``channels_last``: its convolutions run faster with weights and inputs in channels_last memory format on CPU
    (measured with ``rlvision bench-speed``); the extractor's default for ``channels_last``.
    """
    if name in _REGISTRY:
        raise ValueError(f"Backbone {name!r} is already registered.")
    if default_init not in INITS:
        raise ValueError(f"default_init must be one of {INITS}, got {default_init!r}.")
    _REGISTRY[name] = BackboneInfo(name, family, builder, min_input_size, description, default_pool, dict(defaults),
                                   default_init, load_pretrained, channels_last)


def list_backbones(family: str | None = None) -> list[str]:
    """Registered backbone names (optionally of one family), sorted."""
    return sorted(n for n, info in _REGISTRY.items() if family is None or info.family == family)


def lookup(registry: dict[str, Any], name: str, what: str) -> Any:
    """``registry[name]``; an unknown name raises a ValueError with close matches and every known name."""
    if name not in registry:
        close = difflib.get_close_matches(name, registry, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown {what} {name!r}.{hint} Known {what}s: {', '.join(sorted(registry))}.")
    return registry[name]


def backbone_info(name: str) -> BackboneInfo:
    """The :class:`BackboneInfo` of ``name``; an unknown name raises a ValueError listing the known ones."""
    return lookup(_REGISTRY, name, "backbone")


def create_backbone(name: str, in_channels: int = 3, num_classes: int = 0, pretrained: str | None = None,
                    pretrained_frames: str = "auto", **kwargs: Any) -> Backbone:
    """Build backbone ``name`` for ``in_channels`` input channels.

    ``num_classes=0`` (default) gives the headless feature mode used by the RL extractors; ``num_classes>0`` adds
    the variant's classifier head, as in the original paper or repository.
    ``pretrained``: path of a weights file, read by the family's ``load_pretrained`` hook (today the paper's
    MobileNet-v4 configs ``mnv4_*`` read timm checkpoints, :mod:`rlvision.pretrained`; the stem is adapted to
    ``in_channels``, ``pretrained_frames``: "auto", "rgb" or "grey", see :func:`rlvision.pretrained.adapt_stem`).
    """
    info = backbone_info(name)
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}.")
    if pretrained is not None and info.load_pretrained is None:
        loadable = [n for n, i in sorted(_REGISTRY.items()) if i.load_pretrained is not None]
        raise ValueError(f"pretrained weights load into {', '.join(loadable)}, not {name!r} (its family "
                         f"{info.family!r} has no pretrained loader).")
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0: headless features), got {num_classes!r}.")
    check_keywords(kwargs, accepted_keywords(info.builder), f"Backbone {name!r}")
    model = info.builder(in_channels=in_channels, num_classes=num_classes, **{**info.defaults, **kwargs})
    if pretrained is not None:
        info.load_pretrained(model, name, pretrained, frames=pretrained_frames)
    return model


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())
