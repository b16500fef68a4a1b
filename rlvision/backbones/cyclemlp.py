"""CycleMLP (Chen et al., ICLR 2022, "CycleMLP: A MLP-like Architecture for Dense Prediction").

Channels-last (B, H, W, C) stages of blocks LN -> Cycle token mixer -> LN -> MLP, a 7x7 stride-4 patch embedding and
3x3 stride-2 downsampling between stages. The token mixer sums three branches, a channel FC and two Cycle FCs
(1x3 and 3x1), weighted per channel by a softmax over branches computed from their pooled sum.

Cycle FC is, in the official code, torchvision's deformable conv with a 1x1 kernel and fixed integer offsets
((i + 1) mod 3 - 1 for channel i, along one axis). That is exactly: shift each channel by its offset (zero fill),
then a 1x1 projection, which is what :class:`CycleFC` does, with no torchvision and no deformable kernel.
``cyclemlp_rl`` is a small three-stage (stride 16) config for 64-96 px RL frames.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..layers import Mlp
from ..registry import Backbone, register_backbone


class CycleFC(nn.Module):
    """Shift channel i by (i + 1) % 3 - 1 positions along ``axis`` (out[p] = in[p + offset], zeros past the edge),
    then Linear(C, C). (B, H, W, C) -> (B, H, W, C). ``axis``: 2 = width (the 1x3 Cycle FC), 1 = height (3x1)."""

    def __init__(self, dim: int, axis: int):
        super().__init__()
        self.axis = axis
        self.proj = nn.Linear(dim, dim)

    def shift(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        out[..., 0::3] = x[..., 0::3]  # offset 0
        if self.axis == 2:
            out[:, :, :-1, 1::3] = x[:, :, 1:, 1::3]  # offset +1
            out[:, :, 1:, 2::3] = x[:, :, :-1, 2::3]  # offset -1
        else:
            out[:, :-1, :, 1::3] = x[:, 1:, :, 1::3]
            out[:, 1:, :, 2::3] = x[:, :-1, :, 2::3]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.shift(x))


class CycleMixer(nn.Module):
    """Channel FC + Cycle FC (1x3) + Cycle FC (3x1), mixed per channel by softmax weights, then a projection."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp_c = nn.Linear(dim, dim, bias=False)
        self.cycle_w = CycleFC(dim, axis=2)
        self.cycle_h = CycleFC(dim, axis=1)
        self.reweight = Mlp(dim, dim // 4, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, _, c = x.shape
        w, h, ch = self.cycle_w(x), self.cycle_h(x), self.mlp_c(x)
        a = self.reweight((w + h + ch).mean((1, 2))).reshape(b, c, 3).permute(2, 0, 1).softmax(0)
        return self.proj(w * a[0, :, None, None] + h * a[1, :, None, None] + ch * a[2, :, None, None])


class CycleBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = CycleMixer(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CycleMLP(Backbone):
    """(B, C_in, H, W) -> (B, dims[-1], H', W'), total stride 2^(n+1), after a LayerNorm."""

    def __init__(self, dims, layers, mlp_ratios, in_channels: int = 3, num_classes: int = 0):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dims[0], 7, 4, 2)
        self.downsamples = nn.ModuleList(
            [nn.Identity()] + [nn.Conv2d(dims[i - 1], dims[i], 3, 2, 1) for i in range(1, len(dims))])
        self.stages = nn.ModuleList(nn.Sequential(*(CycleBlock(dims[i], mlp_ratios[i]) for _ in range(layers[i])))
                                    for i in range(len(dims)))
        self.norm = nn.LayerNorm(dims[-1])
        self.in_channels, self.num_classes, self.num_features = in_channels, num_classes, dims[-1]
        self.total_stride, self.min_input_size = 2 ** (len(dims) + 1), 32
        self.head = nn.Linear(dims[-1], num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        for i, (down, stage) in enumerate(zip(self.downsamples, self.stages, strict=False)):
            if i:
                x = down(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            x = stage(x)
        return self.norm(x).permute(0, 3, 1, 2)


class CycleMLPVariant(NamedTuple):
    """A row of the variant table: :class:`CycleMLP`'s keyword arguments."""

    layers: tuple[int, ...]
    dims: tuple[int, ...]
    mlp_ratios: tuple[int, ...]


VARIANTS = {
    "cyclemlp_b1": CycleMLPVariant((2, 2, 4, 2), (64, 128, 320, 512), (4, 4, 4, 4)),
    "cyclemlp_b2": CycleMLPVariant((2, 3, 10, 3), (64, 128, 320, 512), (4, 4, 4, 4)),
    "cyclemlp_b3": CycleMLPVariant((3, 4, 18, 3), (64, 128, 320, 512), (8, 8, 4, 4)),
    "cyclemlp_b4": CycleMLPVariant((3, 8, 27, 3), (64, 128, 320, 512), (8, 8, 4, 4)),
    "cyclemlp_b5": CycleMLPVariant((3, 4, 24, 3), (96, 192, 384, 768), (4, 4, 4, 4)),
    "cyclemlp_rl": CycleMLPVariant((2, 2, 2), (48, 96, 192), (4, 4, 4)),  # stride 16: 84 px -> 6x6 map
}

for _name, _row in VARIANTS.items():
    # default_init "sb3": SB3's orthogonal init over the whole extractor, as before issue 21 (not measured)
    register_backbone(_name, CycleMLP, family="cyclemlp", default_init="sb3", min_input_size=32,
                      description=f"CycleMLP-{_name.removeprefix('cyclemlp_').upper()} layers {_row.layers} "
                      f"dims {_row.dims}", **_row._asdict())
