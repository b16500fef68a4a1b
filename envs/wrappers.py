"""VecEnv wrappers for image observations."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

INTERPOLATIONS = ("area", "bilinear", "bicubic", "nearest")


def downscale(frames: np.ndarray, factor: int, interpolation: str = "area") -> np.ndarray:
    """(N, C, H, W) uint8 -> (N, C, H // factor, W // factor) uint8, in one batched torch call."""
    x = torch.from_numpy(frames).float()
    size = (frames.shape[-2] // factor, frames.shape[-1] // factor)
    antialias = interpolation in ("bilinear", "bicubic")
    align = False if interpolation in ("bilinear", "bicubic") else None
    y = F.interpolate(x, size=size, mode=interpolation, align_corners=align, antialias=antialias)
    return y.round_().clamp_(0, 255).to(torch.uint8).numpy()


class VecLowRes(VecEnvWrapper):
    """Shrink channel-first uint8 image observations by ``factor`` (2 or 4), all envs in one batched call:
    a cheap camera, or frames shrunk to save replay memory. (n, C, H, W) -> (n, C, H/f, W/f)."""

    def __init__(self, venv: VecEnv, factor: int = 2, interpolation: str = "area"):
        space = venv.observation_space
        if not (isinstance(space, spaces.Box) and len(space.shape) == 3 and space.dtype == np.uint8):
            raise ValueError(f"VecLowRes needs channel-first uint8 images, got {space}.")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}.")
        c, h, w = space.shape
        if factor < 1 or h // factor < 1 or w // factor < 1:
            raise ValueError(f"factor {factor} does not fit {h}x{w} frames.")
        self.factor, self.interpolation = factor, interpolation
        super().__init__(venv, observation_space=spaces.Box(0, 255, (c, h // factor, w // factor), dtype=np.uint8))

    def reset(self) -> np.ndarray:
        return downscale(self.venv.reset(), self.factor, self.interpolation)

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        for info in infos:  # SB3 keeps the last frame of an episode here; shrink it too
            if "terminal_observation" in info:
                info["terminal_observation"] = downscale(info["terminal_observation"][None], self.factor,
                                                         self.interpolation)[0]
        return downscale(obs, self.factor, self.interpolation), rewards, dones, infos
