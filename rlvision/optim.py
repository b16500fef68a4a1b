"""Adam with a per-parameter learning-rate scale, for fine-tuning a pretrained backbone slower than the heads."""

from __future__ import annotations

import torch


class ScaledLRAdam(torch.optim.Adam):
    """Adam whose parameters are grouped by their ``lr_scale`` attribute (1 where absent); each group steps at
    ``lr * lr_scale``. The scale is applied inside :meth:`step`, so schedulers that set every group's ``lr`` (SB3's
    ``update_learning_rate`` does, before each update) keep working."""

    def __init__(self, params, lr: float = 1e-3, **kwargs):
        params = list(params)
        if params and isinstance(params[0], dict):
            groups = params
        else:
            scales: dict[float, list] = {}
            for p in params:
                scales.setdefault(float(getattr(p, "lr_scale", 1.0)), []).append(p)
            groups = [dict(params=ps, lr_scale=scale) for scale, ps in scales.items()]
        super().__init__(groups, lr=lr, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):
        base = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        try:
            return super().step(closure)
        finally:
            for group, lr in zip(self.param_groups, base, strict=False):
                group["lr"] = lr
