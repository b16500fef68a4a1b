"""The window/channel-attention SR transformer of the seed "transformer SR" README (DaViT-like).

``x - 0.5`` -> 3x3 conv (C_in -> dim) -> ``num_blocks`` pairs of [window-attention block, channel-attention block]
-> 3x3 conv (dim -> C_in * f^2) -> PixelShuffle(f) -> ``+ 0.5``. Each block is pre-LN: ``x += MHA(LN x)``,
``x += MLP(LN x)`` (4x, GELU), with separate q/k/v/out projections.

- Window attention: heads attend within non-overlapping ``window`` x ``window`` windows (spatial tokens).
- Channel attention: per head, the head's channels attend to each other over all H*W positions
  (a head_dim x head_dim map).

Scaling: by default the standard rule, 1/sqrt(length of the dot product): 1/sqrt(head_dim) for window attention,
1/sqrt(H*W) for channel attention, so the temperature does not drift with resolution. ``upstream_scaling=True``
gives the seed code's 1/head_dim^2 (window) and 1/(H*W)^2 (channel). Any input side: the map is padded to a
multiple of the window (replicate) and the output cropped. ``global_skip=True`` (the RL preset) replaces the
``+ 0.5`` by the bicubic upscale of the input and starts the last conv at zero: the stage begins as bicubic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Mlp
from ..preprocess import PreprocessStage, bicubic, register_preprocess


class AttentionBlock(nn.Module):
    """Pre-LN transformer block with window (``channel=False``) or channel (``channel=True``) attention.
    (B, H, W, C) -> same; H, W multiples of the window."""

    def __init__(self, dim: int, heads: int, window: int, channel: bool, upstream_scaling: bool):
        super().__init__()
        self.heads, self.window, self.channel, self.upstream = heads, window, channel, upstream_scaling
        self.norm1 = nn.LayerNorm(dim)
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def _attend(self, t: torch.Tensor) -> torch.Tensor:
        """t: (N, L, C) token groups -> attention output (N, L, C)."""
        n, length, c = t.shape
        d = c // self.heads
        q, k, v = (proj(t).reshape(n, length, self.heads, d).transpose(1, 2) for proj in (self.q, self.k, self.v))
        if self.channel:  # channels attend to channels over the L positions: (N, h, d, d)
            q, k, v = q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
            scale = length ** -2.0 if self.upstream else length ** -0.5
        else:
            scale = d ** -2.0 if self.upstream else d ** -0.5
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        if self.channel:
            out = out.transpose(-1, -2)
        return self.out(out.transpose(1, 2).reshape(n, length, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        y = self.norm1(x)
        if self.channel:
            y = self._attend(y.reshape(b, h * w, c)).reshape(b, h, w, c)
        else:
            ws = self.window
            y = y.reshape(b, h // ws, ws, w // ws, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
            y = self._attend(y).reshape(b, h // ws, w // ws, ws, ws, c).transpose(2, 3).reshape(b, h, w, c)
        x = x + y
        return x + self.mlp(self.norm2(x))


class TransformerSR(PreprocessStage):
    """(B, channels, H, W) in [0, 1] -> (B, channels, factor*H, factor*W), not clamped (as upstream)."""

    def __init__(self, channels: int = 3, scale: int = 4, num_blocks: int = 8, dim: int = 256, window_size: int = 4,
                 num_heads: int = 16, upstream_scaling: bool = False, global_skip: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}).")
        self.scale, self.channels, self.window, self.min_input_size = scale, channels, window_size, 1
        self.in_conv = nn.Conv2d(channels, dim, 3, 1, 1)
        self.blocks = nn.Sequential(*(AttentionBlock(dim, num_heads, window_size, channel, upstream_scaling)
                                      for _ in range(num_blocks) for channel in (False, True)))
        self.out_conv = nn.Conv2d(dim, channels * scale ** 2, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(scale)
        self.global_skip = global_skip
        if global_skip:
            nn.init.zeros_(self.out_conv.weight)
            nn.init.zeros_(self.out_conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ws = self.window
        y = F.pad(x - 0.5, (0, -w % ws, 0, -h % ws), mode="replicate")
        y = self.blocks(self.in_conv(y).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = self.shuffle(self.out_conv(y))[:, :, :h * self.scale, :w * self.scale]
        return y + (bicubic(x, self.scale) if self.global_skip else 0.5)


register_preprocess("transformer_sr", TransformerSR, "window/channel-attention SR transformer (seed config)",
                    scale=4)
register_preprocess("transformer_sr_rl", TransformerSR, "RL-sized SR transformer: dim 16, 1 block pair, "
                    "bicubic skip, x2", scale=2, num_blocks=1, dim=16, num_heads=2, global_skip=True)
