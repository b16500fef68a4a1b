"""Pay for a frozen encoder once per observation: a VecEnv wrapper that turns images into features.

With a frozen backbone inside the policy, PPO recomputes the same features in the rollout and again in every
epoch of every minibatch (4 epochs with RL Zoo's Atari settings); replay-buffer algorithms recompute them for
every sampled batch. :class:`VecEncode` runs the frozen encoder once per env step, batched over the envs under
``torch.inference_mode``, so the algorithm sees flat feature vectors (use ``MlpPolicy``; replay buffers then hold
features, not images) and trains only its heads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from .extractors import Encoder, check_image_space


class FrozenEncoder(Encoder):
    """uint8 (B, C, H, W) -> float (B, D): /255, then :class:`rlvision.extractors.Encoder`'s parts without the
    Linear head (optional ImageNet normalisation, the backbone frozen in eval mode, the pooling the extractor would
    use), under ``torch.inference_mode``."""

    def __init__(self, observation_space: spaces.Box, backbone: str, pool: str | int | None = None,
                 pretrained: str | None = None, pretrained_frames: str = "auto", imagenet_norm: bool | None = None,
                 **backbone_kwargs: Any):
        check_image_space(observation_space)
        super().__init__(tuple(observation_space.shape), backbone, features_dim=None, pool=pool,
                         pretrained=pretrained, pretrained_frames=pretrained_frames, imagenet_norm=imagenet_norm,
                         freeze_backbone=True, **backbone_kwargs)
        self.features_dim = self.out_features
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> FrozenEncoder:
        return super().train(False)  # nothing here trains: no head, and the backbone is frozen (Encoder's rules)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images.float() / 255)


class VecEncode(VecEnvWrapper):
    """Observations (n, C, H, W) uint8 -> (n, D) float32 features of a frozen encoder, computed once per step for
    all envs in one batch (``terminal_observation`` too).

    :param venv: a VecEnv with channel-first uint8 images (e.g. :func:`rlvision.envs.make_env`).
    :param backbone: a registered backbone name; ``backbone_kwargs`` (``pretrained=...``, ``pool=...``, ...) as for
        :class:`FrozenEncoder`.
    :param device: where the encoder runs ("auto": CUDA if available).
    """

    def __init__(self, venv: VecEnv, backbone: str, device: str = "auto", **backbone_kwargs: Any):
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)
        self.encoder = FrozenEncoder(venv.observation_space, backbone, **backbone_kwargs).to(self.device)
        space = spaces.Box(-np.inf, np.inf, (self.encoder.features_dim,), np.float32)
        super().__init__(venv, observation_space=space)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(N, C, H, W) uint8 -> (N, D) float32."""
        return self.encoder(torch.as_tensor(images, device=self.device)).cpu().numpy()

    def reset(self) -> np.ndarray:
        return self.encode(self.venv.reset())

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        done = [i for i, info in enumerate(infos) if "terminal_observation" in info]
        if done:
            frames = np.stack([infos[i]["terminal_observation"] for i in done])
            batch = self.encode(np.concatenate([obs, frames]))
            obs = batch[: len(obs)]
            for i, features in zip(done, batch[len(obs):], strict=False):
                infos[i]["terminal_observation"] = features
        else:
            obs = self.encode(obs)
        return obs, rewards, dones, infos
