"""Small building blocks shared by every backbone: norm/activation factories, conv-norm-act, layer scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("bn", "frozen_bn", "gn", "ln", "none")
ACTS = ("relu", "silu", "gelu", "mish", "none")


def group_count(channels: int, per_group: int = 8) -> int:
    """GroupNorm group count ``channels // per_group`` (the seed's rule), lowered until it divides ``channels``."""
    groups = max(1, channels // per_group)
    while channels % groups:
        groups -= 1
    return groups


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its stored statistics, in train mode too, and never updates them.

    Trained from scratch the statistics stay (0, 1), so it is a learned per-channel affine map ``weight * x + bias``
    that behaves the same in rollouts (eval) and PPO updates (train) and folds into the conv before it.
    Statistics loaded from a checkpoint are used as they are. (B, C, H, W) -> (B, C, H, W).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation over a (B, C, H, W) map.

    ``bn`` BatchNorm2d (batch statistics in train mode, running ones in eval mode), ``frozen_bn``
    :class:`FrozenBatchNorm2d`, ``gn`` GroupNorm with C//8 groups, ``ln`` GroupNorm with one group (LayerNorm over
    C, H, W), ``none`` Identity. See README "Normalisation in RL" for which to pick.
    """
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(group_count(channels), channels)
    if kind == "ln":
        return nn.GroupNorm(1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"Unknown norm {kind!r}; choose one of {NORMS}.")


def make_act(kind: str) -> nn.Module:
    """Activation by name: relu, silu, gelu, mish or none."""
    table = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "mish": nn.Mish, "none": nn.Identity}
    if kind not in table:
        raise ValueError(f"Unknown activation {kind!r}; choose one of {ACTS}.")
    return table[kind]()


class ConvNormAct(nn.Sequential):
    """Conv2d (same padding, no bias by default) -> norm -> activation. (B, Cin, H, W) -> (B, Cout, H/s, W/s)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 norm: str = "bn", act: str = "relu", bias: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=bias)
        self.norm = make_norm(norm, out_chs)
        self.act = make_act(act)


class LayerScale2d(nn.Module):
    """Per-channel learned scale ``gamma * x`` on a (B, C, H, W) map (CaiT / MobileNet-v4 hybrids)."""

    def __init__(self, channels: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor``, never more than 10% below it (MobileNet channel rule)."""
    if divisor <= 1:
        return int(round(value))
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class Mlp(nn.Sequential):
    """Linear -> GELU -> Linear on the last dim (transformer MLP). (..., C) -> (..., out)."""

    def __init__(self, in_features: int, hidden: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_features or in_features)


class RandomShift(nn.Module):
    """DrQ / RAD random-shift augmentation, in training mode only: pad by ``pad`` pixels (replicating the border),
    then crop back to the original size at a random offset drawn per sample, batched on the input's device.
    (B, C, H, W) -> (B, C, H, W); the identity in eval mode (rollouts, ``predict``)."""

    def __init__(self, pad: int = 4):
        super().__init__()
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 1:
            raise ValueError(f"pad must be an int >= 1, got {pad!r}.")
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        n, c, h, w = x.shape
        padded = F.pad(x, (self.pad,) * 4, mode="replicate")
        top = torch.randint(0, 2 * self.pad + 1, (n, 1, 1, 1), device=x.device)
        left = torch.randint(0, 2 * self.pad + 1, (n, 1, 1, 1), device=x.device)
        rows = (torch.arange(h, device=x.device).view(1, 1, h, 1) + top).expand(n, c, h, w + 2 * self.pad)
        cols = (torch.arange(w, device=x.device).view(1, 1, 1, w) + left).expand(n, c, h, w)
        return padded.gather(2, rows).gather(3, cols)
