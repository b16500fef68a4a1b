"""Loss and quality metrics for super-resolution on [0, 1] images (B, C, H, W)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SOBEL_X = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
_SOBEL_Y = torch.tensor([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])


def sobel_edges(img: torch.Tensor) -> torch.Tensor:
    """Per-channel Sobel magnitude sqrt(Gx^2 + Gy^2) with zero padding (the seed's edge map). (B, C, H, W)."""
    c = img.shape[1]
    kernels = torch.stack([_SOBEL_X, _SOBEL_Y]).to(img)[:, None].repeat(c, 1, 1, 1)  # (2C, 1, 3, 3)
    g = F.conv2d(img, kernels, padding=1, groups=c).reshape(img.shape[0], c, 2, *img.shape[-2:])
    return g.pow(2).sum(2).sqrt()


def edge_weighted_l1(sr: torch.Tensor, hr: torch.Tensor, floor: float = 0.1) -> torch.Tensor:
    """sum(|sr - hr| * w) / sum(w) with w = Sobel edges of hr (no gradient) + ``floor``.

    The seed uses ``floor=0``: flat regions then get no weight at all (and a flat target gives 0/0); the default
    floor keeps them in the loss.
    """
    weight = sobel_edges(hr).detach() + floor
    return ((sr - hr).abs() * weight).sum() / weight.sum().clamp_min(1e-12)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean PSNR in dB over the batch of [0, 1] images."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (-10 * torch.log10(mse)).mean()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03) over valid positions."""
    c = a.shape[1]
    window = min(window, a.shape[-1], a.shape[-2])
    coords = torch.arange(window, dtype=a.dtype, device=a.device) - (window - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = (g[:, None] * g[None, :]) / g.sum() ** 2
    kernel = g.expand(c, 1, window, window)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean()
