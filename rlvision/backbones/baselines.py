"""RL baselines in the registry: SB3's NatureCNN layout and the IMPALA ResNet (Espeholt et al. 2018)."""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import NatureCNN as SB3NatureCNN
from torch import nn

from ..registry import Backbone, register_backbone


class NatureCNN(Backbone):
    """Mnih et al. 2015: 8x8/4 (32), 4x4/2 (64), 3x3/1 (64), ReLU; the conv stack is SB3's own ``NatureCNN.cnn``.

    (B, C, H, W) -> (B, 64, (H-36)//8+1-ish, ...); 84x84 gives 64x7x7. Minimum side 36.
    """

    def __init__(self, in_channels: int = 4, num_classes: int = 0):
        super().__init__()
        probe = spaces.Box(0, 255, (in_channels, 36, 36), dtype=np.uint8)
        self.features = SB3NatureCNN(probe, features_dim=1).cnn[:-1]  # drop SB3's Flatten: we return the map
        self.in_channels, self.num_features, self.num_classes = in_channels, 64, num_classes
        self.total_stride, self.min_input_size = 8, 36
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class _ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convs with bias (IMPALA)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


class ImpalaCNN(Backbone):
    """IMPALA ResNet: per stack a 3x3 conv, 3x3/2 max-pool and two residual blocks; channels 16/32/32; final ReLU.

    (B, C, H, W) -> (B, 32, ceil(H/8), ceil(W/8)); 84x84 gives 32x11x11.
    """

    def __init__(self, in_channels: int = 4, num_classes: int = 0, channels: tuple[int, ...] = (16, 32, 32)):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for ch in channels:
            layers += [nn.Conv2d(prev, ch, 3, padding=1), nn.MaxPool2d(3, 2, 1), _ResidualBlock(ch),
                       _ResidualBlock(ch)]
            prev = ch
        layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)
        self.in_channels, self.num_features, self.num_classes = in_channels, prev, num_classes
        self.total_stride, self.min_input_size = 2 ** len(channels), 8
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# NatureCNN keeps SB3's orthogonal init (made for it, and it learns best with it: BENCHMARKS.md "Learning v2");
# IMPALA trains from PyTorch's default init (its own, as in CleanRL's Procgen agent): orthogonal with gain sqrt(2)
# compounds over its residual sums (feature RMS x158)
register_backbone("nature_cnn", NatureCNN, family="baseline", min_input_size=36, default_pool="flatten",
                  channels_last=True,
                  default_init="sb3",
                  description="NatureCNN (Mnih et al. 2015), SB3's layer layout")
register_backbone("impala_cnn", ImpalaCNN, family="baseline", min_input_size=8, default_pool="flatten",
                  channels_last=True,
                  description="IMPALA ResNet 16/32/32 (Espeholt et al. 2018)")
