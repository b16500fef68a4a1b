"""DrQ-v2's encoder arrangement for SB3's actor-critic algorithms (SAC, TD3; sb3-contrib's TQC, CrossQ).

SB3 offers two ways to give the actor and the critic an image encoder (``share_features_extractor``):

- ``False`` (SB3's default, and rlvision's): two encoders, each trained by its own loss; twice the encoder compute.
- ``True``: one encoder trained by the **actor** loss; the critic sees it detached.

DrQ-v2 (Yarats et al., 2021) shares one encoder the other way round: the **critic**'s TD loss trains it and the
actor sees detached features, which is what works for pixel-based continuous control (with random-shift
augmentation: ``VisionExtractor(augment_shift=4)``). :func:`drqv2_policy` gives the algorithm's policy class with
that arrangement:

    from stable_baselines3 import SAC
    model = SAC(rlvision.drqv2_policy("sac"), env, policy_kwargs=rlvision.policy_kwargs(
        "nature_cnn", algo="sac", encoder_sharing="critic", augment_shift=4))

or ``make_agent("sac", env, encoder_sharing="critic")``. The target critic keeps its own Polyak-averaged encoder
copy, as in SB3's other modes. The actor loss still back-propagates through the critic's encoder (SB3 computes it
through the critic); those gradients are never applied: the encoder is in the critic's optimizer only, which zeroes
them before its next step.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from .algorithms import ALGORITHMS

# algo -> (module, policy base class) of the actor-critic algorithms whose policy has share_features_extractor
BASES = {a.name: a.drqv2_base for a in ALGORITHMS.values() if a.drqv2_base is not None}
_CLASSES: dict[str, type] = {}


class DetachedFeatures(nn.Module):
    """The shared encoder as the actor sees it: the same module, run without autograd. (B, ...) -> (B, features_dim)"""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.features_dim = encoder.features_dim

    def forward(self, observations: Any) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder(observations)


class CriticTrainsEncoder:
    """Mixin over an SB3 actor-critic policy: one encoder, trained by the critic loss; the actor's view detached."""

    def __init__(self, *args: Any, share_features_extractor: bool = True, **kwargs: Any):
        if not share_features_extractor:
            raise ValueError("The DrQ-v2 policy shares one encoder between actor and critic; drop "
                             "share_features_extractor=False (or use the algorithm's own policy for separate "
                             "encoders).")
        super().__init__(*args, share_features_extractor=True, **kwargs)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)  # SB3's shared mode: the critic holds the actor's encoder
        encoder = self.actor.features_extractor
        self.actor.features_extractor = DetachedFeatures(encoder)
        self.critic.share_features_extractor = False  # the critic's forward keeps gradients into the encoder
        actor_params = [p for name, p in self.actor.named_parameters() if not name.startswith("features_extractor.")]
        self.actor.optimizer = self.optimizer_class(actor_params, lr=lr_schedule(1), **self.optimizer_kwargs)
        self.critic.optimizer = self.optimizer_class(self.critic.parameters(), lr=lr_schedule(1),
                                                     **self.optimizer_kwargs)


def drqv2_policy(algo: str) -> type:
    """The policy class of ``algo`` ("sac", "td3", "tqc", "crossq") with DrQ-v2's shared, critic-trained encoder.

    Works for Box and Dict observations (pass it as the policy class instead of "CnnPolicy"/"MultiInputPolicy").
    """
    algo = algo.lower() if isinstance(algo, str) else algo
    if algo not in BASES:
        raise ValueError(f"DrQ-v2's encoder sharing applies to actor-critic algorithms with a Q critic: "
                         f"{sorted(BASES)}; got {algo!r}. (PPO-style algorithms already share one encoder.)")
    if algo not in _CLASSES:
        module, name = BASES[algo]
        try:
            base = getattr(importlib.import_module(module), name)
        except ImportError as error:
            raise ImportError(f"{algo} needs sb3-contrib: pip install 'rlvision[contrib]'") from error
        cls = type(f"DrQv2{name}", (CriticTrainsEncoder, base), {"__module__": __name__})
        cls.__doc__ = f"{name} with DrQ-v2's encoder sharing (rlvision.drq)."
        _CLASSES[algo] = cls
    return _CLASSES[algo]


def __getattr__(name: str) -> type:
    """``rlvision.drq.DrQv2SACPolicy`` etc. exist once asked for, so pickled references to them resolve."""
    for algo, (_, base) in BASES.items():
        if name == f"DrQv2{base}":
            return drqv2_policy(algo)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
