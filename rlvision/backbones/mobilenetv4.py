"""MobileNet-v4: the seed repository's variants and the paper's configs, from one block set and one builder.

A variant is data: a list of block specs read by :class:`MobileNetV4`. Block specs are tuples:

- ``("conv", out, k, stride)``                     conv-norm-act
- ``("fused", out, exp, k, stride)``               FusedIB: k x k expand conv (stride) -> 1x1 projection
- ``("uib", out, exp, start_k, mid_k, stride, n)`` UIB, repeated n times (stride on the first):
  start_k>0 & mid_k>0 ExtraDW, 0 & k IB, k & 0 ConvNeXt, 0 & 0 FFN
- ``("se", squeeze)``                              squeeze-excite block (seed only)
- ``("cmqa", heads, downsample)``                  the seed's "MobileMQA": per-head d x d channel attention
- ``("mqa", heads, key_dim, kv_stride)``           the paper's mobile multi-query attention

``exp`` is an expansion ratio of the block's input width; the hidden width is rounded to ``style.divisor``.
A :class:`Style` holds what differs between the seed and the paper: norm, activation, whether the depthwise start
conv and the projection have an activation, residuals and layer scale.

Sources: Qin et al. 2024, "MobileNetV4 - Universal Models for the Mobile Ecosystem" (layer tables of Conv-S/M/L and
Hybrid-M/L); the seed README (../shared/seeds/mobilenet-v4-readme.ru.md) and its code at ddd0a47 for the seed
variants (stride-1 stem, constant width, GroupNorm + SiLU after every conv, no residuals, BatchNorm1d head).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import ConvNormAct, LayerScale2d, make_divisible, make_norm
from ..pretrained import load_timm_weights
from ..registry import Backbone, register_backbone


@dataclass(frozen=True)
class Style:
    """How blocks are built. ``start_act``: activation after the depthwise start conv; ``proj_act``: after the
    1x1 projection; ``residual``: skip when stride 1 and widths match; ``layer_scale``: init value or None."""

    norm: str = "bn"
    act: str = "relu"
    start_act: bool = False
    proj_act: bool = False
    residual: bool = True
    layer_scale: float | None = None
    divisor: int = 8


PAPER_STYLE = Style()
SEED_STYLE = Style(norm="gn", act="silu", start_act=True, proj_act=True, residual=False, divisor=1)


class _Residual(nn.Module):
    """Mixin logic: ``x + layer_scale(body(x))`` when the block keeps its shape and the style asks for it."""

    def _finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + self.layer_scale(y) if self.has_skip else self.layer_scale(y)


class FusedIB(_Residual):
    """Fused inverted bottleneck: k x k full conv (stride) C_in -> mid, then 1x1 mid -> C_out."""

    def __init__(self, in_chs: int, out_chs: int, mid_chs: int, kernel_size: int, stride: int, style: Style):
        super().__init__()
        self.expand = ConvNormAct(in_chs, mid_chs, kernel_size, stride, norm=style.norm, act=style.act)
        self.project = ConvNormAct(mid_chs, out_chs, 1, norm=style.norm, act=style.act if style.proj_act else "none")
        self.has_skip = style.residual and stride == 1 and in_chs == out_chs
        self.layer_scale = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(x, self.project(self.expand(x)))


class UIB(_Residual):
    """Universal inverted bottleneck: [dw start_k] -> 1x1 expand -> [dw mid_k] -> 1x1 project (+ scale, skip).

    The stride sits on the middle depthwise conv, or on the start one when there is no middle one.
    (B, C_in, H, W) -> (B, C_out, H/stride, W/stride).
    """

    def __init__(self, in_chs: int, out_chs: int, mid_chs: int, start_k: int, mid_k: int, stride: int,
                 style: Style):
        super().__init__()
        start_stride = 1 if mid_k else stride
        self.dw_start = (ConvNormAct(in_chs, in_chs, start_k, start_stride, groups=in_chs, norm=style.norm,
                                     act=style.act if style.start_act else "none") if start_k else nn.Identity())
        self.expand = ConvNormAct(in_chs, mid_chs, 1, norm=style.norm, act=style.act)
        self.dw_mid = (ConvNormAct(mid_chs, mid_chs, mid_k, stride, groups=mid_chs, norm=style.norm, act=style.act)
                       if mid_k else nn.Identity())
        self.project = ConvNormAct(mid_chs, out_chs, 1, norm=style.norm, act=style.act if style.proj_act else "none")
        self.layer_scale = LayerScale2d(out_chs, style.layer_scale) if style.layer_scale else nn.Identity()
        self.has_skip = style.residual and stride == 1 and in_chs == out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(x, self.project(self.dw_mid(self.expand(self.dw_start(x)))))


class SqueezeExcite(nn.Module):
    """x * sigmoid(W2 SiLU(W1 mean_HW(x))), 1x1 convs with bias. (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))))


class ChannelMQA(nn.Module):
    """The seed's "MobileMQA": channel attention per head.

    q, k, v = 1x1 convs (C -> C, bias), split into h heads of d = C/h channels; with ``downsample`` q passes through
    its own 3x3 stride-2 conv and k, v through one shared 3x3 stride-2 conv. Per head softmax(q k^T) is a d x d map
    (no 1/sqrt(d) scaling, as in the seed) applied to v. (B, C, H, W) -> (B, C, H', W'), H' = H or ceil(H/2).
    ``residual`` (off in the seed) adds x when the block keeps its shape.
    """

    def __init__(self, channels: int, heads: int, downsample: bool, residual: bool = False):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads}).")
        self.heads = heads
        self.query = nn.Conv2d(channels, channels, 1)
        self.key = nn.Conv2d(channels, channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.down_q = nn.Conv2d(channels, channels, 3, 2, 1) if downsample else nn.Identity()
        self.down_kv = nn.Conv2d(channels, channels, 3, 2, 1) if downsample else nn.Identity()
        self.has_skip = residual and not downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.down_q(self.query(x))
        k = self.down_kv(self.key(x))
        v = self.down_kv(self.value(x))
        b, c, h, w = q.shape
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2), dim=-1)  # (B, heads, d, d)
        out = (attn @ v).reshape(b, c, h, w)
        return x + out if self.has_skip else out


class MultiQueryAttention2d(_Residual):
    """Mobile MQA of MobileNet-v4: pre-norm, h query heads of key_dim, one shared key and value of key_dim,
    optionally computed on a map downsampled by a depthwise 3x3 stride-``kv_stride`` conv + norm; scaled dot-product
    attention over positions; 1x1 output projection; layer scale; residual. (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, heads: int, key_dim: int, kv_stride: int, style: Style):
        super().__init__()
        self.heads, self.key_dim = heads, key_dim
        self.norm = make_norm(style.norm, channels)
        self.query = nn.Conv2d(channels, heads * key_dim, 1, bias=False)

        def down() -> nn.Module:
            if kv_stride == 1:
                return nn.Identity()
            return ConvNormAct(channels, channels, 3, kv_stride, groups=channels, norm=style.norm, act="none")

        self.key_down, self.value_down = down(), down()
        self.key = nn.Conv2d(channels, key_dim, 1, bias=False)
        self.value = nn.Conv2d(channels, key_dim, 1, bias=False)
        self.out = nn.Conv2d(heads * key_dim, channels, 1, bias=False)
        self.layer_scale = LayerScale2d(channels, style.layer_scale) if style.layer_scale else nn.Identity()
        self.has_skip = style.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        y = self.norm(x)
        q = self.query(y).reshape(b, self.heads, self.key_dim, h * w).transpose(-1, -2)  # (B, heads, HW, d)
        k = self.key(self.key_down(y)).reshape(b, 1, self.key_dim, -1).transpose(-1, -2)  # (B, 1, L, d)
        v = self.value(self.value_down(y)).reshape(b, 1, self.key_dim, -1).transpose(-1, -2)
        out = F.scaled_dot_product_attention(q, k.expand(-1, self.heads, -1, -1), v.expand(-1, self.heads, -1, -1))
        out = out.transpose(-1, -2).reshape(b, self.heads * self.key_dim, h, w)
        return self._finish(x, self.out(out))


def build_blocks(specs: list[tuple], in_chs: int, style: Style) -> tuple[list[nn.Module], int, int]:
    """Turn block specs into modules. Returns (modules, output channels, total stride)."""
    blocks: list[nn.Module] = []
    stride_total = 1
    for spec in specs:
        kind, args = spec[0], spec[1:]
        if kind == "conv":
            out, k, s = args
            blocks.append(ConvNormAct(in_chs, out, k, s, norm=style.norm, act=style.act))
        elif kind == "fused":
            out, exp, k, s = args
            blocks.append(FusedIB(in_chs, out, make_divisible(in_chs * exp, style.divisor), k, s, style))
        elif kind == "uib":
            out, exp, start_k, mid_k, s, n = args
            for i in range(n):
                stride = s if i == 0 else 1
                blocks.append(UIB(in_chs, out, make_divisible(in_chs * exp, style.divisor), start_k, mid_k, stride,
                                  style))
                in_chs = out
                stride_total *= stride
            continue
        elif kind == "se":
            (squeeze,) = args
            blocks.append(SqueezeExcite(in_chs, squeeze))
            out, s = in_chs, 1
        elif kind == "cmqa":
            heads, downsample = args
            blocks.append(ChannelMQA(in_chs, heads, downsample, residual=style.residual))
            out, s = in_chs, 2 if downsample else 1
        elif kind == "mqa":
            heads, key_dim, kv_stride = args
            blocks.append(MultiQueryAttention2d(in_chs, heads, key_dim, kv_stride, style))
            out, s = in_chs, 1
        else:
            raise ValueError(f"Unknown block kind {kind!r} in spec {spec}.")
        in_chs = out
        stride_total *= s
    return blocks, in_chs, stride_total


class MobileNetV4(Backbone):
    """A MobileNet-v4 built from block specs (see the module docstring).

    ``head``: ``("seed", hidden, dropout, head_norm)`` = pool -> Linear -> BatchNorm1d|GroupNorm -> SiLU -> Dropout
    -> Linear (the seed's head; its default BatchNorm1d fails on a batch of one in train mode, ``head_norm="gn"``
    avoids that), or ``("paper", hidden, dropout)`` = pool -> 1x1 conv -> norm -> act -> Dropout -> Linear.
    Headless (``num_classes=0``): ``forward`` returns the globally pooled (B, num_features) features.
    """

    def __init__(self, specs: list[tuple], in_channels: int = 3, num_classes: int = 0, style: Style = PAPER_STYLE,
                 head: tuple = ("paper", 1280, 0.0)):
        super().__init__()
        blocks, self.num_features, self.total_stride = build_blocks(specs, in_channels, style)
        self.features = nn.Sequential(*blocks)
        self.in_channels, self.num_classes = in_channels, num_classes
        self.min_input_size = min(max(self.total_stride, 8), 32)
        self.head = nn.Identity()
        if num_classes:
            if head[0] == "seed":
                _, hidden, dropout, head_norm = head
                norm = {"bn": lambda: nn.BatchNorm1d(hidden), "gn": lambda: make_norm("gn", hidden)}[head_norm]()
                layers = [nn.Linear(self.num_features, hidden), norm, nn.SiLU()]
            else:
                _, hidden, dropout = head
                layers = [nn.Unflatten(1, (self.num_features, 1, 1)),
                          ConvNormAct(self.num_features, hidden, 1, norm=style.norm, act=style.act), nn.Flatten()]
            self.head = nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's MobileNet initialisation: convs normal with std sqrt(2 / fan_out) (fan_out = k*k*C_out/groups,
        so depthwise kernels get full-size filters), conv biases 0, norms weight 1 bias 0, linears uniform
        +-1/sqrt(out_features); and the last norm of every residual branch at weight 0, so each block with a skip
        starts as the identity (Goyal et al. 2017)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                module.weight.normal_(0.0, (2.0 / fan_out) ** 0.5)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Linear):
                bound = 1.0 / module.out_features ** 0.5
                module.weight.uniform_(-bound, bound)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.BatchNorm1d)) and module.weight is not None:
                module.weight.fill_(1.0)
                module.bias.zero_()
        for module in self.modules():
            if isinstance(module, (FusedIB, UIB)) and module.has_skip and isinstance(module.layer_scale, nn.Identity):
                norm = module.project.norm
                if getattr(norm, "weight", None) is not None:
                    norm.weight.zero_()


# --- the seed repository's variants ------------------------------------------------------------------------------

def seed_specs(base_channels: int, expanded_channels: int, squeezed_channels: int, num_heads: int,
               downsample: bool, fused: int, uib_extradw: int, se_uib: int, se_mqa: int,
               stem_stride: int = 1) -> list[tuple]:
    """Block specs of a seed variant: stem, stride-2 FusedIBs, [UIB+ExtraDW], [SE+UIB], [SE+MobileMQA]; one width."""
    c, exp = base_channels, expanded_channels / base_channels
    return ([("conv", c, max(3, stem_stride), stem_stride)] + [("fused", c, exp, 3, 2)] * fused
            + [("uib", c, exp, 5, 0, 1, 1), ("uib", c, exp, 5, 3, 1, 1)] * uib_extradw
            + [("se", squeezed_channels), ("uib", c, exp, 5, 0, 1, 1)] * se_uib
            + [("se", squeezed_channels), ("cmqa", num_heads, downsample)] * se_mqa)


def mobilenetv4_custom(in_channels: int = 3, num_classes: int = 0, base_channels: int = 16,
                       expanded_channels: int = 32, squeeze_ratio: float = 0.25, num_heads: int = 2,
                       downsample: bool = True, hidden_dim_classifier: int = 64, dropout: float = 0.2,
                       FusedIBs: int = 1, UIB_and_ExtraDWs: int = 1, SE_and_UIBs: int = 1,  # noqa: N803 (seed names)
                       SE_and_MobileMQAs: int = 1, norm: str = "gn", act: str = "silu", residual: bool = False,  # noqa: N803
                       head_norm: str = "bn", stem_stride: int = 1) -> MobileNetV4:
    """The seed's configurable network, with the seed README's keyword arguments.

    RL options (defaults are the seed's): ``residual=True`` adds skips where a block keeps its shape (the seed has
    none); ``head_norm="gn"`` replaces the head's BatchNorm1d, which fails on a batch of one in train mode;
    ``norm``/``act`` swap GroupNorm/SiLU; ``stem_stride`` > 1 shrinks every feature map (kernel max(3, stride));
    the seed's stride-1 stem keeps the input resolution, which is what makes it slow on 84x84 frames.
    """
    if base_channels % num_heads:
        raise ValueError(f"base_channels ({base_channels}) must be divisible by num_heads ({num_heads}).")
    squeezed = max(1, int(base_channels * squeeze_ratio))
    specs = seed_specs(base_channels, expanded_channels, squeezed, num_heads, downsample,
                       FusedIBs, UIB_and_ExtraDWs, SE_and_UIBs, SE_and_MobileMQAs, stem_stride)
    style = replace(SEED_STYLE, norm=norm, act=act, residual=residual)
    return MobileNetV4(specs, in_channels, num_classes, style, ("seed", hidden_dim_classifier, dropout, head_norm))


class SeedVariant(NamedTuple):
    """A row of the seed repository's variant table (the seed README's keyword arguments)."""

    base_channels: int  # C: one width throughout
    expanded_channels: int  # E: the blocks' hidden width
    num_heads: int  # MobileMQA heads
    downsample: bool  # MobileMQA downsamples
    FusedIBs: int  # noqa: N815 (the seed's names)
    UIB_and_ExtraDWs: int  # noqa: N815
    SE_and_UIBs: int  # noqa: N815
    SE_and_MobileMQAs: int  # noqa: N815
    hidden_dim_classifier: int
    dropout: float

    @property
    def min_input_size(self) -> int:
        """The smallest side the stride-1-stem variant takes (its stride, at least 8, at most 32)."""
        return min(max(2 ** (self.FusedIBs + 4 * self.downsample), 8), 32)


SEED_VARIANTS = {
    "mobilenetv4_nano": SeedVariant(24, 64, 4, False, 2, 2, 3, 1, 512, 0.2),
    "mobilenetv4_small": SeedVariant(48, 96, 6, False, 2, 3, 4, 2, 1024, 0.2),
    "mobilenetv4_medium": SeedVariant(96, 192, 8, False, 2, 5, 6, 3, 1024, 0.2),
    "mobilenetv4_large": SeedVariant(224, 512, 14, False, 3, 6, 5, 3, 1280, 0.2),
    "mobilenetv4_hybrid_large": SeedVariant(384, 768, 16, True, 3, 7, 6, 4, 1280, 0.3),
}


class RLPreset(NamedTuple):
    """An RL preset: a seed variant with changes (keyword arguments of :func:`mobilenetv4_custom`)."""

    seed: str
    changes: dict


# RL presets for 64-96 px frames: a seed variant with these changes. A 4x4 stride-4 stem (as NatureCNN's first
# layer) puts the blocks on 21x21 -> 6x6 maps instead of 84x84 -> 21x21 (about 1/16 of the activations); residuals
# where a block keeps its shape; GroupNorm head (works at batch 1). Norm: running_bn, BatchNorm that normalises
# with its running statistics in rollouts and updates alike (acting = learning) while the statistics still follow
# the data; with the family's own init it learned the synthetic task and DoorKey-5x5 above nature_cnn (issue 21:
# README "Normalisation in RL", BENCHMARKS.md "Learning v2"). History, each kept loadable (tests/data/saved): before
# issue 21 the presets used norm="bn" and pinned nothing (such zips rebuild with running_bn: same parameters and
# statistics, the same eval-mode function, so they act identically); issue 21 first shipped frozen_bn, pinned in
# the saved kwargs, so those zips rebuild with frozen_bn.
_RL = dict(stem_stride=4, norm="running_bn", act="relu", residual=True, head_norm="gn")
RL_PRESETS = {
    "mobilenetv4_nano_rl": RLPreset("mobilenetv4_nano", _RL),
    "mobilenetv4_small_rl": RLPreset("mobilenetv4_small", _RL),
}


# --- block strings: a variant in one line (RL presets designed on the device, and the search over them) ------------

BLOCK_FIELDS = {  # kind: (its spec tuple's fields in order, defaults)
    "cn": (("c", "k", "s"), dict(k=3, s=1)),
    "er": (("c", "e", "k", "s"), dict(e=4, k=3, s=1)),
    "uir": (("c", "e", "a", "k", "s", "r"), dict(e=4, a=0, k=3, s=1, r=1)),
    "se": (("d",), {}),
    "mqa": (("h", "d", "v"), dict(h=4, d=64, v=1)),
}
_SPEC_KIND = {"cn": "conv", "er": "fused", "uir": "uib", "se": "se", "mqa": "mqa"}


def parse_blocks(text: str) -> list[tuple]:
    """Block specs from a block string: blocks joined by ``-``, each ``kind_field..._field`` with one-letter fields
    followed by an int: ``cn_c16_k4_s4-er_c32_e2_s2-er_c32_e2-uir_c32_e4_a3_k0``.

    Kinds and fields: ``cn`` conv-norm-act (``c`` out, ``k`` kernel 3, ``s`` stride 1); ``er`` FusedIB (``c``, ``e``
    expansion 4 of its input width, ``k`` 3, ``s`` 1); ``uir`` UIB (``c``, ``e`` 4, ``a`` start depthwise kernel 0 =
    none, ``k`` middle depthwise kernel 3 (0 = none), ``s`` 1); ``se`` squeeze-excite (``d`` squeeze width);
    ``mqa`` mobile MQA (``h`` heads 4, ``d`` key dim 64, ``v`` key/value stride 1). ``r`` repeats any block (the
    stride on the first). Raises a ValueError that names the block at fault."""
    specs: list[tuple] = []
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"blocks must be a non-empty block string such as 'cn_c16_k4_s4-er_c32_e2_s2', got {text!r}.")
    for block in text.strip().split("-"):
        kind, *fields = block.split("_")
        if kind not in BLOCK_FIELDS:
            raise ValueError(f"block {block!r}: unknown kind {kind!r}; choose one of {sorted(BLOCK_FIELDS)}.")
        names, defaults = BLOCK_FIELDS[kind]
        values = dict(defaults, r=1)
        for item in fields:
            key, digits = item[:1], item[1:]
            if key not in names + ("r",) or not digits.isdigit():
                raise ValueError(f"block {block!r}: field {item!r} is not one of {', '.join(names + ('r',))} "
                                 f"followed by an integer (e.g. {kind}_{names[0]}16).")
            values[key] = int(digits)
        missing = [n for n in names if n not in values]
        if missing:
            raise ValueError(f"block {block!r} needs {', '.join(missing)} (e.g. {kind}_{missing[0]}32).")
        repeats = values.pop("r")
        if repeats < 1:
            raise ValueError(f"block {block!r}: r must be >= 1.")
        if kind == "uir":  # the uib spec carries its repeats
            specs.append(("uib", values["c"], values["e"], values["a"], values["k"], values["s"], repeats))
            continue
        spec = (_SPEC_KIND[kind], *(values[n] for n in names))
        specs.append(spec)
        for _ in range(repeats - 1):  # later repeats at stride 1
            specs.append(tuple(1 if n == "s" else v for n, v in zip(("kind",) + names, spec, strict=False)))
    return specs


CPU_RL_BLOCKS = "cn_c24_k4_s4-er_c48_e2_s2"


def mobilenetv4_blocks(in_channels: int = 3, num_classes: int = 0, blocks: str = CPU_RL_BLOCKS,
                       norm: str = "running_bn", act: str = "relu", residual: bool = True) -> MobileNetV4:
    """A MobileNet-v4 from a block string (:func:`parse_blocks`): paper-style blocks (linear projections, skips
    where a block keeps its shape), ``norm`` and ``act`` after every conv, a GroupNorm head for ``num_classes`` > 0
    (works at batch 1). The RL presets below are such strings, chosen by measuring candidates on the device; without
    ``blocks`` it builds the CPU preset's string (``mobilenetv4_cpu_rl``)."""
    style = replace(PAPER_STYLE, norm=norm, act=act, residual=residual)
    return MobileNetV4(parse_blocks(blocks), in_channels, num_classes, style, ("seed", 128, 0.0, "gn"))


# RL presets designed on the device (issue 31: rlvision design, BENCHMARKS.md "MobileNet-v4 that wins per second"):
# block strings chosen by measuring candidates' compute in PPO's two regimes on the device against a short learning
# proxy. On a 2-core CPU the front is the shallowest design: a 4x4 stride-4 stem (as NatureCNN's first layer) and one
# stride-2 FusedIB (a dense 3x3 conv, faster than depthwise + pointwise on CPUs), running_bn (acting = learning).
# Of the front's widths the validation sweep picked 24/48: it reached the threshold in 20/20 runs over four tasks
# (16/32, the cheapest: 19/20, one LavaGap seed missed; nature_cnn: 13/20).
BLOCK_PRESETS = {
    "mobilenetv4_cpu_rl": dict(blocks=CPU_RL_BLOCKS, norm="running_bn", act="relu", residual=True),
}


# --- the paper's configs (Qin et al. 2024, Tables 10-14) --------------------------------------------------------

def _uib(out: int, exp: float, start_k: int, mid_k: int, stride: int = 1, n: int = 1) -> tuple:
    return ("uib", out, exp, start_k, mid_k, stride, n)


_CONV_M_HEAD = [("fused", 48, 4, 3, 2), _uib(80, 4, 3, 5, 2), _uib(80, 2, 3, 3)]
_CONV_L_HEAD = [("fused", 48, 4, 3, 2), _uib(96, 4, 3, 5, 2), _uib(96, 4, 3, 3)]
_LAST = [("conv", 960, 1, 1)]

# name: (stem width, activation, layer scale, block specs after the stride-2 stem)
PAPER_VARIANTS = {
    "mnv4_conv_small": (32, "relu", None, [
        ("conv", 32, 3, 2), ("conv", 32, 1, 1), ("conv", 96, 3, 2), ("conv", 64, 1, 1),
        _uib(96, 3, 5, 5, 2), _uib(96, 2, 0, 3, 1, 4), _uib(96, 4, 3, 0),
        _uib(128, 6, 3, 3, 2), _uib(128, 4, 5, 5), _uib(128, 4, 0, 5), _uib(128, 3, 0, 5), _uib(128, 4, 0, 3, 1, 2),
    ] + _LAST),
    "mnv4_conv_medium": (32, "relu", None, _CONV_M_HEAD + [
        _uib(160, 6, 3, 5, 2), _uib(160, 4, 3, 3, 1, 2), _uib(160, 4, 3, 5), _uib(160, 4, 3, 3), _uib(160, 4, 3, 0),
        _uib(160, 2, 0, 0), _uib(160, 4, 3, 0),
        _uib(256, 6, 5, 5, 2), _uib(256, 4, 5, 5), _uib(256, 4, 3, 5, 1, 2), _uib(256, 4, 0, 0), _uib(256, 4, 3, 0),
        _uib(256, 2, 3, 5), _uib(256, 4, 5, 5), _uib(256, 4, 0, 0, 1, 2), _uib(256, 2, 5, 0),
    ] + _LAST),
    "mnv4_conv_large": (24, "relu", None, _CONV_L_HEAD + [
        _uib(192, 4, 3, 5, 2), _uib(192, 4, 3, 3, 1, 3), _uib(192, 4, 3, 5), _uib(192, 4, 5, 3, 1, 5),
        _uib(192, 4, 3, 0),
        _uib(512, 4, 5, 5, 2, 4), _uib(512, 4, 5, 0), _uib(512, 4, 5, 3), _uib(512, 4, 5, 0, 1, 2),
        _uib(512, 4, 5, 3), _uib(512, 4, 5, 5), _uib(512, 4, 5, 0, 1, 3),
    ] + _LAST),
    "mnv4_hybrid_medium": (32, "relu", 1e-5, _CONV_M_HEAD + [
        _uib(160, 6, 3, 5, 2), _uib(160, 2, 0, 0), _uib(160, 4, 3, 3), _uib(160, 4, 3, 5),
        ("mqa", 4, 64, 2), _uib(160, 4, 3, 3), ("mqa", 4, 64, 2), _uib(160, 4, 3, 0),
        ("mqa", 4, 64, 2), _uib(160, 4, 3, 3), ("mqa", 4, 64, 2), _uib(160, 4, 3, 0),
        _uib(256, 6, 5, 5, 2), _uib(256, 4, 5, 5), _uib(256, 4, 3, 5, 1, 2), _uib(256, 2, 0, 0), _uib(256, 2, 3, 5),
        _uib(256, 2, 0, 0), _uib(256, 4, 0, 0),
        ("mqa", 4, 64, 1), _uib(256, 4, 3, 0), ("mqa", 4, 64, 1), _uib(256, 4, 5, 5),
        ("mqa", 4, 64, 1), _uib(256, 4, 5, 0), ("mqa", 4, 64, 1), _uib(256, 4, 5, 0),
    ] + _LAST),
    "mnv4_hybrid_large": (24, "gelu", 1e-5, _CONV_L_HEAD + [
        _uib(192, 4, 3, 5, 2), _uib(192, 4, 3, 3, 1, 3), _uib(192, 4, 3, 5), _uib(192, 4, 5, 3, 1, 2),
        ("mqa", 8, 48, 2), _uib(192, 4, 5, 3), ("mqa", 8, 48, 2), _uib(192, 4, 5, 3),
        ("mqa", 8, 48, 2), _uib(192, 4, 5, 3), ("mqa", 8, 48, 2), _uib(192, 4, 3, 0),
        _uib(512, 4, 5, 5, 2, 4), _uib(512, 4, 5, 0), _uib(512, 4, 5, 3), _uib(512, 4, 5, 0, 1, 2),
        _uib(512, 4, 5, 3), _uib(512, 4, 5, 5),
        ("mqa", 8, 64, 1), _uib(512, 4, 5, 0), ("mqa", 8, 64, 1), _uib(512, 4, 5, 0),
        ("mqa", 8, 64, 1), _uib(512, 4, 5, 0), ("mqa", 8, 64, 1), _uib(512, 4, 5, 0),
    ] + _LAST),
}


def mobilenetv4_paper(variant: str, in_channels: int = 3, num_classes: int = 0, norm: str = "bn",
                      act: str | None = None, residual: bool = True, drop_rate: float = 0.0) -> MobileNetV4:
    """A paper config: stride-2 stem, UIB with residuals, linear projections, mobile MQA on hybrids, 1280 head."""
    stem, default_act, layer_scale, specs = PAPER_VARIANTS[variant if variant.startswith("mnv4_") else
                                                         f"mnv4_{variant}"]
    style = replace(PAPER_STYLE, norm=norm, act=act or default_act, residual=residual, layer_scale=layer_scale)
    return MobileNetV4([("conv", stem, 3, 2)] + specs, in_channels, num_classes, style, ("paper", 1280, drop_rate))


def _paper_shapes(name: str) -> dict[str, torch.Size]:
    """State-dict shapes of a headless paper config for 3 channels (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = mobilenetv4_paper(name, in_channels=3)
    return {k: v.shape for k, v in model.state_dict().items()}


def load_timm_checkpoint(model: MobileNetV4, name: str, path: str, frames: str = "auto") -> MobileNetV4:
    """The family's pretrained hook: a timm MobileNetV4 checkpoint into a paper config (:mod:`rlvision.pretrained`);
    a file of another config is named in the error."""
    candidates = {name: functools.partial(_paper_shapes, name) for name in PAPER_VARIANTS}
    return load_timm_weights(model, name, path, frames=frames, candidates=candidates)


def _register() -> None:
    for name, row in SEED_VARIANTS.items():
        register_backbone(name, mobilenetv4_custom, family="mobilenetv4_seed", min_input_size=row.min_input_size,
                          channels_last=True,
                          description=f"seed MobileNet-v4 {name.removeprefix('mobilenetv4_')}: width "
                          f"{row.base_channels}, stride-1 stem, GroupNorm+SiLU", **row._asdict())
    for name, (seed, changes) in RL_PRESETS.items():
        row = SEED_VARIANTS[seed]
        stride = changes["stem_stride"] * 2 ** (row.FusedIBs + row.downsample)
        register_backbone(name, mobilenetv4_custom, family="mobilenetv4_seed", min_input_size=stride,
                          channels_last=True,
                          description=f"RL preset of {seed}: width {row.base_channels}, stride-"
                          f"{changes['stem_stride']} stem, {changes['norm']}+{changes['act']}, residuals",
                          **{**row._asdict(), **changes})
    register_backbone("mobilenetv4_custom", mobilenetv4_custom, family="mobilenetv4_seed", min_input_size=8,
                      channels_last=True,
                      description="seed MobileNet-v4 builder with the seed README's keyword arguments")
    register_backbone("mobilenetv4_blocks", mobilenetv4_blocks, family="mobilenetv4", min_input_size=8,
                      channels_last=True,
                      description="MobileNet-v4 from a block string (blocks='cn_c16_k4_s4-er_c32_e2_s2-...')")
    for name, kwargs in BLOCK_PRESETS.items():
        net = mobilenetv4_blocks(blocks=kwargs["blocks"])
        register_backbone(name, mobilenetv4_blocks, family="mobilenetv4", min_input_size=net.total_stride,
                          channels_last=True,
                          description=f"RL preset designed on a CPU: {kwargs['blocks']}, {kwargs['norm']}", **kwargs)
    for name in PAPER_VARIANTS:
        register_backbone(name, functools.partial(mobilenetv4_paper, name), family="mobilenetv4", channels_last=True,
                          min_input_size=32, load_pretrained=load_timm_checkpoint,
                          description=f"MobileNet-v4 {name.removeprefix('mnv4_').replace('_', '-')} (Qin et al. 2024)")


_register()
