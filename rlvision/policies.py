"""What an SB3 policy outputs, worked out in one place for the encoder diagnostics and the exporter.

Every algorithm of :data:`rlvision.algorithms.ALGORITHMS` has a ``head``: how its policy turns features into actions.

- ``"distribution"`` (PPO, A2C, TRPO, MaskablePPO, RecurrentPPO): SB3's action distribution over the action space
  (categorical, multi-categorical or diagonal Gaussian) from ``action_net``, and the state value from ``value_net``;
- ``"squashed_gaussian"`` (SAC, TQC, CrossQ): the actor's Gaussian, squashed by tanh;
- ``"deterministic"`` (TD3): the actor's action in [-1, 1];
- ``"q"`` (DQN) and ``"quantile"`` (QR-DQN): values per action (quantiles averaged), acting greedily.

:func:`policy_outputs` computes them with one pass of the encoder (as the update's ``evaluate_actions`` does: a
second pass would see BatchNorm statistics the first one moved). Nothing here imports SB3; it reads the policy's
parts by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

HEADS = ("distribution", "squashed_gaussian", "deterministic", "q", "quantile")


@dataclass
class PolicyOutputs:
    """The outputs of one policy call. ``params``: the action distribution's parameters (``action_net``'s output:
    logits or Gaussian mean) for ``"distribution"``, the Gaussian mean before tanh for ``"squashed_gaussian"``, the
    action in [-1, 1] for ``"deterministic"``; ``log_std`` for Gaussian heads; ``value``: V(s) for ``"distribution"``;
    ``q``: values per action for ``"q"``/``"quantile"``, or, when asked, the critic's first Q of the actor's action
    (its mean) for the actor heads; ``latent_pi``: the actor's latent (``"distribution"``)."""

    head: str
    params: torch.Tensor | None = None
    log_std: torch.Tensor | None = None
    value: torch.Tensor | None = None
    q: torch.Tensor | None = None
    latent_pi: torch.Tensor | None = None
    dist_kwargs: dict | None = None


def policy_head(policy: nn.Module) -> str:
    """The head of an SB3 policy, read from its parts (the algorithm table's ``head`` for the policy it builds)."""
    if hasattr(policy, "mlp_extractor") and hasattr(policy, "action_net"):
        return "distribution"
    actor = getattr(policy, "actor", None)
    if actor is not None:
        return "squashed_gaussian" if hasattr(actor, "get_action_dist_params") else "deterministic"
    if getattr(policy, "quantile_net", None) is not None:
        return "quantile"
    if getattr(policy, "q_net", None) is not None:
        return "q"
    raise ValueError(f"{type(policy).__name__} is not a policy of an algorithm rlvision knows (no action_net, actor, "
                     f"q_net or quantile_net).")


def policy_outputs(policy: nn.Module, obs: Any, head: str | None = None, critic_q: bool = False) -> PolicyOutputs:
    """:class:`PolicyOutputs` of ``policy`` on ``obs`` (preprocessed as SB3's ``obs_to_tensor`` gives them).
    ``head``: from the algorithm table, or read from the policy when None. ``critic_q``: also the critic's Q of the
    actor's action for the actor heads (the diagnostics' value-like output). Recurrent policies need their LSTM
    state: the exporter steps them itself."""
    head = head or policy_head(policy)
    if head == "distribution":
        features = policy.extract_features(obs)
        if policy.share_features_extractor:
            latent_pi, latent_vf = policy.mlp_extractor(features)
        else:
            latent_pi = policy.mlp_extractor.forward_actor(features[0])
            latent_vf = policy.mlp_extractor.forward_critic(features[1])
        log_std = getattr(policy, "log_std", None)
        return PolicyOutputs(head, params=policy.action_net(latent_pi), log_std=log_std,
                             value=policy.value_net(latent_vf), latent_pi=latent_pi)
    if head == "squashed_gaussian":
        actor, critic = policy.actor, getattr(policy, "critic", None)
        mean, log_std, kwargs = actor.get_action_dist_params(obs)
        q = _first_q(critic(obs, torch.tanh(mean))) if critic_q and critic is not None else None
        return PolicyOutputs(head, params=mean, log_std=log_std, q=q, dist_kwargs=kwargs)
    if head == "deterministic":
        actor, critic = policy.actor, getattr(policy, "critic", None)
        action = actor(obs)
        q = _first_q(critic(obs, action)) if critic_q and critic is not None else None
        return PolicyOutputs(head, params=action, q=q)
    if head == "q":
        return PolicyOutputs(head, q=policy.q_net(obs))
    if head == "quantile":
        return PolicyOutputs(head, q=policy.quantile_net(obs).mean(dim=1))
    raise ValueError(f"head must be one of {HEADS}, got {head!r}.")


def _first_q(values: Any) -> torch.Tensor:
    """The first critic's Q, (B, 1): SB3's critics return a tuple of (B, 1) tensors, TQC's one (B, critics,
    quantiles) tensor (its quantiles averaged)."""
    if isinstance(values, (tuple, list)):
        return values[0]
    return values[:, 0].mean(dim=-1, keepdim=True) if values.dim() == 3 else values
