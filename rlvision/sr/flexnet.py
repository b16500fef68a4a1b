"""FlexNet V1 (umzi2/FlexNet): window-attention / RWKV-channel-mix SR network, linear and meta (U-Net) pipelines.

Block: ``x += g1 * Attention(RMSNorm x)``; ``x += g2 * ChannelMix(RMSNorm x)``, channels-last. Attention is an
OmniShift (learned 1x1 + 3x3 + 5x5 depthwise + identity) followed by single-head attention in non-overlapping
windows with a LePE term (a depthwise 3x3 conv of V inside each window). ChannelMix is RWKV's channel mix with an
OmniShift as its token shift: ``sigmoid(W_r x') * W_v relu(W_k x')^2``. Groups of blocks end in a ConvBlock over
[input, output]. The image path: ConvBlock shortcut + 3x3 conv -> pipeline -> concat -> 3x3 conv -> PixelShuffle.

Fixed here, compared with upstream:
- any window size (upstream's LePE hard-codes 8); windows pad internally when a map is not a multiple;
- any input side: padding to the pipeline's multiple falls back from reflect to replicate for small frames
  (upstream meta crashes below 33 px);
- OmniShift reparameterization is explicit (:meth:`OmniShift.reparameterize`, undone by ``train()`` and by
  loading weights), never a kernel cached on the first eval forward; the fused kernel does not train;
- ``attention="lmlt"`` gives LMLT's true multi-level attention (channel split, pooled levels, low-to-high fusion,
  aggregation gate), of which upstream keeps one level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..preprocess import PreprocessStage, bicubic, register_preprocess


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (B, C, H, W) at the bottom/right to multiples of ``multiple``: reflect, or replicate when too small."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if not ph and not pw:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class OmniShift(nn.Module):
    """a0*x + a1*dw1x1(x) + a2*dw3x3(x) + a3*dw5x5(x) (Restore-RWKV). (B, C, H, W) -> same.

    ``reparameterize()`` folds the four branches into one 5x5 depthwise kernel (exact: correlation is linear in the
    kernel); ``train()`` and loading a state dict return to the branches.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv1x1 = nn.Conv2d(dim, dim, 1, groups=dim, bias=False)
        self.conv3x3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.conv5x5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim, bias=False)
        self.alpha = nn.Parameter(torch.randn(4))
        # the fused kernel: a Parameter (as upstream, so parameter counts and checkpoints match) that never trains
        self.fused = nn.Parameter(torch.zeros(dim, 1, 5, 5), requires_grad=False)
        self.deploy = False

    def fused_kernel(self) -> torch.Tensor:
        identity = F.pad(torch.ones_like(self.conv1x1.weight), (2, 2, 2, 2))
        a = self.alpha
        return (a[0] * identity + a[1] * F.pad(self.conv1x1.weight, (2, 2, 2, 2))
                + a[2] * F.pad(self.conv3x3.weight, (1, 1, 1, 1)) + a[3] * self.conv5x5.weight)

    @torch.no_grad()
    def reparameterize(self) -> None:
        self.fused.copy_(self.fused_kernel())
        self.deploy = True

    def train(self, mode: bool = True):
        if mode:
            self.deploy = False
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self.deploy = False  # new weights: the fused kernel is stale until reparameterize() runs again
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            return F.conv2d(x, self.fused, padding=2, groups=x.shape[1])
        a = self.alpha
        return a[0] * x + a[1] * self.conv1x1(x) + a[2] * self.conv3x3(x) + a[3] * self.conv5x5(x)


class WindowAttention(nn.Module):
    """Single-head attention over all channels in ws x ws windows, + LePE (depthwise 3x3 of V per window).

    (B, C, H, W) -> (B, H, W, C); maps that are not multiples of ``window`` are zero-padded, then cropped.
    """

    def __init__(self, dim: int, window: int):
        super().__init__()
        self.window = window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws = self.window
        x = F.pad(x, (0, -w % ws, 0, -h % ws))
        hp, wp = x.shape[-2:]
        windows = (x.reshape(b, c, hp // ws, ws, wp // ws, ws).permute(0, 2, 4, 3, 5, 1)
                   .reshape(-1, ws * ws, c))  # (B*nW, ws*ws, C)
        q, k, v = self.qkv(windows).chunk(3, dim=-1)
        lepe = self.lepe(v.transpose(1, 2).reshape(-1, c, ws, ws)).flatten(2).transpose(1, 2)
        out = self.proj(F.scaled_dot_product_attention(q, k, v) + lepe)
        out = out.reshape(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        return out[:, :h, :w]


class FlexAttention(nn.Module):
    """FlexNet's attention ("LMLTVIT" upstream): OmniShift, then window attention. (B, H, W, C) -> same."""

    def __init__(self, dim: int, window: int):
        super().__init__()
        self.shift = OmniShift(dim)
        self.attn = WindowAttention(dim, window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.shift(x.permute(0, 3, 1, 2)))


class LMLTAttention(nn.Module):
    """LMLT's multi-level attention (Kim et al. 2024): split channels into ``levels`` chunks; chunk i is max-pooled
    to 1/2^i; from the coarsest level down, window attention (+ OmniShift here) runs on each level, and its output,
    upsampled x2, is added to the next finer level's input; all outputs are upsampled to H x W, concatenated, fused
    by a 1x1 conv and GELU, and gate x. (B, H, W, C) -> same."""

    def __init__(self, dim: int, window: int, levels: int = 4):
        super().__init__()
        if dim % levels:
            raise ValueError(f"LMLT attention needs dim ({dim}) divisible by levels ({levels}).")
        self.levels = levels
        self.blocks = nn.ModuleList(FlexAttention(dim // levels, window) for _ in range(levels))
        self.aggr = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        chunks = x.permute(0, 3, 1, 2).chunk(self.levels, dim=1)
        outs, carry = [], None
        for i in reversed(range(self.levels)):
            size = (max(1, -(-h // 2 ** i)), max(1, -(-w // 2 ** i)))
            level = F.adaptive_max_pool2d(chunks[i], size) if i else chunks[i]
            if carry is not None:
                level = level + F.interpolate(carry, size=size, mode="nearest")
            out = self.blocks[i](level.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            carry = out
            outs.append(F.interpolate(out, size=(h, w), mode="nearest") if i else out)
        gate = F.gelu(self.aggr(torch.cat(outs[::-1], dim=1)))
        return (gate * x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ChannelMix(nn.Module):
    """RWKV channel mix with an OmniShift token shift: sigmoid(W_r x') * W_v(relu(W_k x')^2). (B, H, W, C)."""

    def __init__(self, dim: int, hidden_rate: int = 4, key_norm: bool = False):
        super().__init__()
        hidden = hidden_rate * dim
        self.shift = OmniShift(dim)
        self.key = nn.Linear(dim, hidden, bias=False)
        self.key_norm = nn.LayerNorm(hidden) if key_norm else nn.Identity()
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shift(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return torch.sigmoid(self.receptance(x)) * self.value(self.key_norm(torch.relu(self.key(x)) ** 2))


class FlexBlock(nn.Module):
    """x + g1 * attention(RMSNorm x); x + g2 * ChannelMix(RMSNorm x). (B, H, W, C)."""

    def __init__(self, dim: int, window: int, hidden_rate: int, key_norm: bool, attention: str):
        super().__init__()
        self.norm1 = nn.RMSNorm(dim)
        self.attn = FlexAttention(dim, window) if attention == "window" else LMLTAttention(dim, window)
        self.norm2 = nn.RMSNorm(dim)
        self.ffn = ChannelMix(dim, hidden_rate, key_norm)
        self.gamma1 = nn.Parameter(torch.ones(dim))
        self.gamma2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma1 * self.attn(self.norm1(x))
        return x + self.gamma2 * self.ffn(self.norm2(x))


class ConvBlock(nn.Module):
    """(3x3 conv, Mish, 3x3 conv, Mish) + 1x1 conv skip. (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_chs, out_chs, 3, 1, 1), nn.Mish(),
                                  nn.Conv2d(out_chs, out_chs, 3, 1, 1), nn.Mish())
        self.skip = nn.Conv2d(in_chs, out_chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class BlockGroup(nn.Module):
    """n FlexBlocks, then ConvBlock(cat[input, output]) back to C. (B, C, H, W) -> same."""

    def __init__(self, dim: int, n: int, window: int, hidden_rate: int, key_norm: bool, attention: str):
        super().__init__()
        self.blocks = nn.Sequential(*(FlexBlock(dim, window, hidden_rate, key_norm, attention) for _ in range(n)))
        self.conv = ConvBlock(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv(torch.cat([x, y], dim=1))


class MetaPipeline(nn.Module):
    """Restormer-style U-Net of BlockGroups: widths C, 2C, 4C, 8C; skips taken after each downsample."""

    def __init__(self, dim: int, num_blocks, **kw):
        super().__init__()
        n0, n1, n2, n3 = num_blocks[:4]

        def down(c: int) -> nn.Module:  # C -> 2C at half resolution
            return nn.Sequential(nn.Conv2d(c, c // 2, 3, 1, 1, bias=False), nn.PixelUnshuffle(2))

        def up(c: int) -> nn.Module:  # C -> C/4 at double resolution
            return nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.PixelShuffle(2))

        self.enc0, self.enc1 = BlockGroup(dim, n0, **kw), BlockGroup(2 * dim, n1, **kw)
        self.enc2, self.enc3 = BlockGroup(4 * dim, n2, **kw), BlockGroup(8 * dim, n3, **kw)
        self.down1, self.down2, self.down3 = down(dim), down(2 * dim), down(4 * dim)
        self.up1, self.up2, self.up3 = up(16 * dim), up(8 * dim), up(4 * dim)
        self.dec0, self.dec1, self.dec2 = BlockGroup(4 * dim, n2, **kw), BlockGroup(2 * dim, n1, **kw), \
            BlockGroup(dim, n0, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = self.down1(self.enc0(x))
        e1 = self.down2(self.enc1(e0))
        e2 = self.down3(self.enc2(e1))
        x = self.dec0(self.up1(torch.cat([self.enc3(e2), e2], dim=1)))
        x = self.dec1(self.up2(torch.cat([x, e1], dim=1)))
        return self.dec2(self.up3(torch.cat([x, e0], dim=1)))


class FlexNet(PreprocessStage):
    """FlexNet V1. (B, channels, H, W) -> (B, channels, scale*H, scale*W).

    :param pipeline: "linear" (one BlockGroup per entry of ``num_blocks``, full resolution) or "meta" (U-Net; the
        first four entries are used).
    :param attention: "window" (upstream) or "lmlt" (multi-level).
    :param global_skip: add the bicubic upscale of the input to the output and start the last conv at zero, so the
        stage begins as bicubic and learns only the residual (not in upstream; on in the RL preset).
    """

    def __init__(self, channels: int = 3, scale: int = 4, dim: int = 64, num_blocks=(6,) * 6, window_size: int = 8,
                 hidden_rate: int = 4, key_norm: bool = False, pipeline: str = "linear", attention: str = "window",
                 global_skip: bool = False):
        super().__init__()
        if pipeline not in ("linear", "meta"):
            raise ValueError(f"pipeline must be 'linear' or 'meta', got {pipeline!r}.")
        if attention not in ("window", "lmlt"):
            raise ValueError(f"attention must be 'window' or 'lmlt', got {attention!r}.")
        if pipeline == "meta" and len(num_blocks) < 4:
            raise ValueError(f"the meta pipeline needs 4 num_blocks entries, got {num_blocks}.")
        self.scale, self.channels = scale, channels
        self.multiple = window_size * (8 if pipeline == "meta" else 1)
        self.min_input_size = 1
        kw = dict(window=window_size, hidden_rate=hidden_rate, key_norm=key_norm, attention=attention)
        self.short_cut = ConvBlock(channels, dim)
        self.in_to_feat = nn.Conv2d(channels, dim, 3, 1, 1)
        self.pipeline = (nn.Sequential(*(BlockGroup(dim, n, **kw) for n in num_blocks)) if pipeline == "linear"
                         else MetaPipeline(dim, num_blocks, **kw))
        self.to_img = nn.Sequential(nn.Conv2d(2 * dim, channels * scale ** 2, 3, 1, 1), nn.PixelShuffle(scale))
        self.global_skip = global_skip
        if global_skip:
            nn.init.zeros_(self.to_img[0].weight)
            nn.init.zeros_(self.to_img[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        y = pad_to_multiple(x, self.multiple)
        y = torch.cat([self.pipeline(self.in_to_feat(y)), self.short_cut(y)], dim=1)
        y = self.to_img(y)[:, :, :h * self.scale, :w * self.scale]
        return y + bicubic(x, self.scale) if self.global_skip else y


register_preprocess("flexnet", FlexNet, "FlexNet V1, linear pipeline (upstream defaults)", scale=4)
register_preprocess("flexnet_meta", FlexNet, "MetaFlexNet: U-Net pipeline, dim 48, blocks (4, 6, 6, 8)", scale=4,
                    dim=48, num_blocks=(4, 6, 6, 8), pipeline="meta")
register_preprocess("flexnet_rl", FlexNet, "RL-sized FlexNet: dim 8, one group of 1 block, bicubic skip, x2",
                    scale=2, dim=8, num_blocks=(1,), hidden_rate=2, global_skip=True)
