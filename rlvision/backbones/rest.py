"""ResT (Zhang & Yang, NeurIPS 2021, "ResT: An Efficient Transformer for Visual Recognition").

Conv stem (stride 4) with pixel-attention positional encoding, then stages of pre-norm blocks with efficient
multi-head self-attention (EMSA): keys/values come from a depthwise-conv spatial reduction of the map (+ LayerNorm),
and with more than one head a 1x1 conv mixes the heads' logits before softmax and an InstanceNorm after it.
Stages 2+ start with a 3x3 stride-2 patch embedding (+ BN + pixel attention).

Unlike the official code (whose patch embedding returns H//2 instead of the conv's output size, so 84 px crashes),
sizes are read from the tensors, so any side >= 33 works (17 for ``rest_rl``). A variant is a row of VARIANTS;
``rest_rl`` is a small three-stage (stride 16) config for 64-96 px RL frames.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..layers import Mlp
from ..registry import Backbone, register_backbone


class PixelAttention(nn.Module):
    """x * sigmoid(depthwise3x3(x)): ResT's positional encoding. (B, C, H, W) -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


class EfficientAttention(nn.Module):
    """EMSA on (B, N, C) tokens of an H x W map: q from all tokens, k/v from the map reduced by a depthwise conv
    (kernel sr+1, stride sr) + LayerNorm; head mixing (1x1 conv over heads) + InstanceNorm when heads > 1."""

    def __init__(self, dim: int, heads: int, sr_ratio: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio + 1, sr_ratio, sr_ratio // 2, groups=dim)
            self.sr_norm = nn.LayerNorm(dim)
        self.mix_heads = heads > 1
        if self.mix_heads:
            self.head_conv = nn.Conv2d(heads, heads, 1)
            self.head_norm = nn.InstanceNorm2d(heads)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, d).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.sr_norm(self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2))
        k, v = self.kv(x).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-1, -2)) * self.scale  # (B, heads, N, M)
        if self.mix_heads:
            attn = self.head_norm(self.head_conv(attn).softmax(-1))
        else:
            attn = attn.softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class ResTBlock(nn.Module):
    """x + EMSA(LN x); x + MLP(LN x). Tokens (B, N, C)."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientAttention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.mlp(self.norm2(x))


class ResT(Backbone):
    """ResT over ``len(dims)`` stages. (B, C_in, H, W) -> (B, dims[-1], H/2^(n+1), W/2^(n+1)) after a LayerNorm."""

    def __init__(self, dims, depths, heads, sr_ratios, mlp_ratio: float = 4.0, in_channels: int = 3,
                 num_classes: int = 0):
        super().__init__()
        c0 = dims[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c0 // 2, 3, 2, 1, bias=False), nn.BatchNorm2d(c0 // 2), nn.ReLU(),
            nn.Conv2d(c0 // 2, c0 // 2, 3, 1, 1, bias=False), nn.BatchNorm2d(c0 // 2), nn.ReLU(),
            nn.Conv2d(c0 // 2, c0, 3, 2, 1, bias=False), PixelAttention(c0))
        self.embeds = nn.ModuleList(
            [nn.Identity()] + [nn.Sequential(nn.Conv2d(dims[i - 1], dims[i], 3, 2, 1), nn.BatchNorm2d(dims[i]),
                                             PixelAttention(dims[i])) for i in range(1, len(dims))])
        self.stages = nn.ModuleList(nn.ModuleList(ResTBlock(dims[i], heads[i], sr_ratios[i], mlp_ratio)
                                                  for _ in range(depths[i])) for i in range(len(dims)))
        self.norm = nn.LayerNorm(dims[-1])
        self.in_channels, self.num_classes, self.num_features = in_channels, num_classes, dims[-1]
        # below stride + 1 px the last stage is a 1x1 map, and InstanceNorm over a 1x1 attention map is undefined
        self.total_stride = 2 ** (len(dims) + 1)
        self.min_input_size = self.total_stride + 1
        self.head = nn.Linear(dims[-1], num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i, (embed, blocks) in enumerate(zip(self.embeds, self.stages, strict=False)):
            x = embed(x)
            b, c, h, w = x.shape
            t = x.flatten(2).transpose(1, 2)
            for block in blocks:
                t = block(t, h, w)
            if i == len(self.stages) - 1:
                t = self.norm(t)
            x = t.transpose(1, 2).reshape(b, c, h, w)
        return x


class ResTVariant(NamedTuple):
    """A row of the variant table: :class:`ResT`'s keyword arguments."""

    dims: tuple[int, ...]
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    sr_ratios: tuple[int, ...]  # spatial-reduction ratios


VARIANTS = {
    "rest_lite": ResTVariant((64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 4, 8), (8, 4, 2, 1)),
    "rest_small": ResTVariant((64, 128, 256, 512), (2, 2, 6, 2), (1, 2, 4, 8), (8, 4, 2, 1)),
    "rest_base": ResTVariant((96, 192, 384, 768), (2, 2, 6, 2), (1, 2, 4, 8), (8, 4, 2, 1)),
    "rest_large": ResTVariant((96, 192, 384, 768), (2, 2, 18, 2), (1, 2, 4, 8), (8, 4, 2, 1)),
    "rest_rl": ResTVariant((32, 64, 128), (1, 2, 2), (1, 2, 4), (4, 2, 1)),  # stride 16: 84 px -> 6x6 map
}

for _name, _row in VARIANTS.items():
    # default_init "sb3": SB3's orthogonal init over the whole extractor, as before issue 21 (not measured)
    register_backbone(_name, ResT, family="rest", default_init="sb3", min_input_size=2 ** (len(_row.dims) + 1) + 1,
                      description=f"ResT-{_name.removeprefix('rest_')} dims {_row.dims} depths {_row.depths}",
                      **_row._asdict())
