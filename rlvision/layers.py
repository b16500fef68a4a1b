"""Small building blocks shared by every backbone: norm/activation factories, conv-norm-act, layer scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("bn", "frozen_bn", "running_bn", "phase_bn", "brn", "gn", "ln", "none")
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


class RunningBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalises with its running statistics in train mode too, and still updates them there.

    Acting = learning: a train-mode forward normalises with the statistics as they were before it (those an
    eval-mode forward uses), then moves them; no gradient flows through batch statistics. The running mean and
    variance follow the batch ones with ``momentum`` (0.1) as in BatchNorm2d. State-dict layout and eval behaviour
    are BatchNorm2d's, so it folds into the conv before it and loads BatchNorm2d checkpoints.
    (B, C, H, W) -> (B, C, H, W).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.track_running_stats):
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                self.eps)
        # the statistics the rollout used (copies: the in-place update below must not touch what backward reads)
        mean, var = self.running_mean.clone(), self.running_var.clone()
        out = F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)
        with torch.no_grad():  # BatchNorm2d's own update (unbiased variance, momentum): its fused kernel is 4-7x
            # faster on CPU than torch.var_mean over (0, 2, 3), which took ~20% of a training step
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
            F.batch_norm(x.detach(), self.running_mean, self.running_var, None, None, True, momentum, self.eps)
            self.num_batches_tracked.add_(1)
        return out


class PhaseBatchNorm2d(RunningBatchNorm2d):
    """:class:`RunningBatchNorm2d` whose statistics move once per training phase instead of at every minibatch.

    A phase starts when the module is switched to train mode (SB3 does it once per update: after each rollout in
    PPO). The phase's first train-mode forward normalises with the statistics the rollout used and moves them
    towards that minibatch's (a sample of the rollout just collected); every later forward of the phase normalises
    with those fixed statistics, so conv -> norm runs as one conv with folded weights there (:class:`ConvNormAct`).
    The step per phase is as far as ``k`` per-minibatch updates of running_bn would go, ``1 - (1 - momentum)^k``,
    ``k`` the train-mode forwards of the phase before (the first update takes the minibatch's statistics as they
    are). Acting = learning holds within a phase; state dict and eval behaviour are BatchNorm2d's.
    (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self._pending = False  # a phase has started and its first forward has not moved the statistics yet
        self._forwards = 0  # train-mode forwards in the current phase
        self._last_phase = 0  # ... and in the phase before

    def train(self, mode: bool = True) -> PhaseBatchNorm2d:
        if mode and not self.training:  # a new phase
            self._pending, self._last_phase, self._forwards = True, self._forwards, 0
        return super().train(mode)

    def fixed_statistics(self) -> bool:
        """Whether the next forward normalises with statistics it does not move (then it folds into its conv)."""
        return not (self.training and self.track_running_stats and self._pending)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._forwards += 1
        if self.fixed_statistics():
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        self._pending = False
        mean, var = self.running_mean.clone(), self.running_var.clone()
        out = F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)
        with torch.no_grad():
            k = self._last_phase
            momentum = 1.0 - (1.0 - self.momentum) ** k if k else 1.0
            F.batch_norm(x.detach(), self.running_mean, self.running_var, None, None, True, momentum, self.eps)
            self.num_batches_tracked.add_(1)
        return out


class BatchRenorm2d(nn.BatchNorm2d):
    """Batch Renormalization (Ioffe 2017): in train mode ``(x - mu_B) / sigma_B * r + d`` with the stop-gradient
    corrections ``r = sigma_B / sigma`` clipped to [1/r_max, r_max] and ``d = (mu_B - mu) / sigma`` clipped to
    [-d_max, d_max] (mu, sigma the running statistics); in eval mode BatchNorm2d's running-statistics path.

    While the corrections are not clipped the train-mode output equals the eval-mode one (acting = learning) and
    gradients still flow through the batch statistics. ``r_max`` = 3 and ``d_max`` = 5 from the start (the paper's
    final values; no warm-up), running statistics with ``momentum`` 0.1 (BatchNorm2d's; sb3-contrib's CrossQ uses 0.01
    with a long warm-up, too slow for runs of 10^4-10^5 steps: the clipped corrections keep the gap open). Same
    state-dict layout as BatchNorm2d; folds into the conv before it. (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, r_max: float = 3.0,
                 d_max: float = 5.0):
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.r_max, self.d_max = r_max, d_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                self.eps)
        var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
        std = (var + self.eps).sqrt()
        running_std = (self.running_var + self.eps).sqrt()
        with torch.no_grad():
            r = (std / running_std).clamp(1 / self.r_max, self.r_max)
            d = ((mean - self.running_mean) / running_std).clamp(-self.d_max, self.d_max)
            n = x.numel() / x.shape[1]
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * n / max(n - 1, 1), self.momentum)
            self.num_batches_tracked.add_(1)
        scale = self.weight * r / std
        shift = self.bias + self.weight * (d - mean * r / std)
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation over a (B, C, H, W) map.

    ``bn`` BatchNorm2d (batch statistics in train mode, running ones in eval mode), ``frozen_bn``
    :class:`FrozenBatchNorm2d`, ``running_bn`` :class:`RunningBatchNorm2d`, ``phase_bn`` :class:`PhaseBatchNorm2d`
    (running_bn's statistics moved once per training phase), ``brn`` :class:`BatchRenorm2d`,
    ``gn`` GroupNorm with C//8 groups, ``ln`` GroupNorm with one group (LayerNorm over
    C, H, W), ``none`` Identity. See README "Normalisation in RL" for which to pick.
    """
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if kind == "running_bn":
        return RunningBatchNorm2d(channels)
    if kind == "phase_bn":
        return PhaseBatchNorm2d(channels)
    if kind == "brn":
        return BatchRenorm2d(channels)
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


def folded_conv_weights(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one conv that computes ``norm(conv(x))`` for a norm that normalises with its stored
    statistics: ``s = gamma / sqrt(var + eps)``, ``weight * s``, ``beta + (bias - mean) * s``. Differentiable in the
    conv's and the norm's parameters (the statistics are constants), so gradients equal those of conv -> norm."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    shift = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    return conv.weight * scale.view(-1, 1, 1, 1), shift


class ConvNormAct(nn.Sequential):
    """Conv2d (same padding, no bias by default) -> norm -> activation. (B, Cin, H, W) -> (B, Cout, H/s, W/s).

    Where the norm normalises with stored statistics (``frozen_bn`` always, ``phase_bn`` in every forward of a phase
    but its first), the conv and the norm run as one conv with reparameterised weights (:func:`folded_conv_weights`),
    in training too: the same function and the same gradients, without the norm's pass over the activations.
    State-dict keys stay ``conv.*``, ``norm.*``."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 norm: str = "bn", act: str = "relu", bias: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=bias)
        self.norm = make_norm(norm, out_chs)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        if type(norm) is FrozenBatchNorm2d or (type(norm) is PhaseBatchNorm2d and norm.fixed_statistics()):
            if type(norm) is PhaseBatchNorm2d and norm.training:
                norm._forwards += 1  # counted as its own forward would be
            conv = self.conv
            weight, bias = folded_conv_weights(conv, self.norm)
            return self.act(F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups))
        return super().forward(x)


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
