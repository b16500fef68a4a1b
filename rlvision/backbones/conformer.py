"""Conformer (Peng et al., ICCV 2021, "Conformer: Local Features Coupling Global Representations").

A ResNet-like CNN branch and a ViT branch with a class token run side by side; in every ConvTransBlock, Feature
Coupling Units pass information both ways: FCU-down (1x1 conv, pool to the token grid, LN, GELU) adds CNN features
to the tokens before the transformer block, FCU-up (1x1 conv, BN, ReLU, nearest upsampling) adds tokens to the CNN
map inside the fusion bottleneck. Both classifier heads are kept: in training mode ``forward`` returns
``(conv_logits, trans_logits)`` (the paper trains each with half the cross-entropy), in eval mode their sum.

The official code only runs on sides that are multiples of 32 (FCU-up upsamples the token grid by a fixed factor,
84 px gives 20 vs 21). Here FCU-down pools to the token grid and FCU-up upsamples to the CNN map's own size, so any
side >= 32 works; on multiples of 32 both are the official operations. Headless features (what the RL extractor
uses) are the pooled CNN map and the normalised class token, concatenated: (B, 256*r + E).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Mlp
from ..registry import Backbone, register_backbone


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-6)


class Bottleneck(nn.Module):
    """ResNet bottleneck 1x1 -> 3x3 (stride; + coupled tokens before it) -> 1x1, residual (projected when asked).
    Returns the output and the 3x3 conv's activation (what FCU-down reads)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, project: bool = False):
        super().__init__()
        mid = out_chs // 4
        self.conv1, self.bn1 = nn.Conv2d(in_chs, mid, 1, bias=False), _bn(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), _bn(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, out_chs, 1, bias=False), _bn(out_chs)
        self.shortcut = (nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), _bn(out_chs))
                         if project else nn.Identity())

    def forward(self, x: torch.Tensor, coupled: torch.Tensor | None = None):
        y = F.relu(self.bn1(self.conv1(x)))
        mid = F.relu(self.bn2(self.conv2(y if coupled is None else y + coupled)))
        return F.relu(self.bn3(self.conv3(mid)) + self.shortcut(x)), mid


class TransformerBlock(nn.Module):
    """ViT block: x + MHSA(LN x); x + MLP(LN x). (B, 1 + N, E)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class FCUDown(nn.Module):
    """CNN map (B, C, H, W) -> tokens (B, gh*gw, E): 1x1 conv, average-pool to the token grid, LN, GELU."""

    def __init__(self, in_chs: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chs, dim, 1)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return F.gelu(self.norm(F.adaptive_avg_pool2d(self.proj(x), grid).flatten(2).transpose(1, 2)))


class FCUUp(nn.Module):
    """Tokens (B, 1 + gh*gw, E) -> CNN map (B, C, H, W): drop cls, 1x1 conv, BN, ReLU, nearest resize to H x W."""

    def __init__(self, dim: int, out_chs: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, out_chs, 1)
        self.bn = _bn(out_chs)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
        b, _, e = tokens.shape
        x = tokens[:, 1:].transpose(1, 2).reshape(b, e, *grid)
        return F.interpolate(F.relu(self.bn(self.proj(x))), size=size)


class ConvTransBlock(nn.Module):
    """CNN bottleneck -> FCU-down -> transformer block -> FCU-up -> fusion bottleneck."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, project: bool, dim: int, heads: int,
                 mlp_ratio: float, last: bool = False):
        super().__init__()
        self.cnn = Bottleneck(in_chs, out_chs, stride, project)
        self.fusion = Bottleneck(out_chs, out_chs, 2 if last else 1, project=last)
        self.down = FCUDown(out_chs // 4, dim)
        self.up = FCUUp(dim, out_chs // 4)
        self.trans = TransformerBlock(dim, heads, mlp_ratio)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, grid: tuple[int, int]):
        x, mid = self.cnn(x)
        down = self.down(mid, grid)
        tokens = self.trans(tokens + torch.cat([tokens[:, :1], down], dim=1))
        x, _ = self.fusion(x, self.up(tokens, grid, mid.shape[-2:]))
        return x, tokens


class Conformer(Backbone):
    """Conformer with ``depth`` ConvTransBlocks in three CNN stages of widths 64r, 128r, 256r (base_channel 64)."""

    def __init__(self, channel_ratio: float, embed_dim: int, heads: int, depth: int = 12, mlp_ratio: float = 4.0,
                 patch_size: int = 16, base_channel: int = 64, in_channels: int = 3, num_classes: int = 0):
        super().__init__()
        if depth % 3:
            raise ValueError(f"depth must be a multiple of 3, got {depth}.")
        widths = [int(base_channel * channel_ratio * m) for m in (1, 2, 4)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.patch_size = patch_size
        self.token_embed = nn.Conv2d(64, embed_dim, patch_size // 4, patch_size // 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.conv_1 = Bottleneck(64, widths[0], project=True)
        self.trans_1 = TransformerBlock(embed_dim, heads, mlp_ratio)
        blocks, per_stage = [], depth // 3
        for i in range(2, depth + 1):
            stage = min((i - 1) // per_stage, 2)
            first = i == 1 + stage * per_stage and stage > 0
            in_chs = widths[stage - 1] if first else widths[stage]
            blocks.append(ConvTransBlock(in_chs, widths[stage], 2 if first else 1, first, embed_dim, heads,
                                         mlp_ratio, last=i == depth))
        self.blocks = nn.ModuleList(blocks)
        self.trans_norm = nn.LayerNorm(embed_dim)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.num_features = widths[2] + embed_dim
        self.conv_width = widths[2]
        self.total_stride, self.min_input_size = 32, 32
        if num_classes:
            self.conv_head = nn.Linear(widths[2], num_classes)
            self.trans_head = nn.Linear(embed_dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 256r + E): pooled CNN map and normalised class token."""
        base = self.stem(x)
        x, _ = self.conv_1(base)
        tokens = self.token_embed(base)
        grid = tuple(tokens.shape[-2:])
        tokens = self.trans_1(torch.cat([self.cls_token.expand(x.shape[0], -1, -1),
                                         tokens.flatten(2).transpose(1, 2)], dim=1))
        for block in self.blocks:
            x, tokens = block(x, tokens, grid)
        return torch.cat([x.mean((2, 3)), self.trans_norm(tokens[:, 0])], dim=1)

    def forward_head(self, features: torch.Tensor):
        if not self.num_classes:
            return features
        conv = self.conv_head(features[:, :self.conv_width])
        trans = self.trans_head(features[:, self.conv_width:])
        return (conv, trans) if self.training else conv + trans


class ConformerVariant(NamedTuple):
    """A row of the variant table: :class:`Conformer`'s keyword arguments."""

    channel_ratio: float
    embed_dim: int
    heads: int
    depth: int


VARIANTS = {
    "conformer_tiny": ConformerVariant(1, 384, 6, 12),
    "conformer_small": ConformerVariant(4, 384, 6, 12),
    "conformer_base": ConformerVariant(6, 576, 9, 12),
    "conformer_rl": ConformerVariant(0.5, 128, 4, 6),
}

for _name, _row in VARIANTS.items():
    # default_init "sb3": SB3's orthogonal init over the whole extractor, as before issue 21 (not measured)
    register_backbone(_name, Conformer, family="conformer", default_init="sb3", min_input_size=32,
                      default_pool="flatten", description=f"Conformer-{_name.removeprefix('conformer_')}: CNN ratio "
                      f"{_row.channel_ratio}, ViT dim {_row.embed_dim}, {_row.heads} heads", **_row._asdict())
