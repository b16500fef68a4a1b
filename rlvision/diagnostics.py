"""Encoder diagnostics: why an encoder learns, or does not, logged to TensorBoard under ``encoder/``.

On one minibatch of the observations the agent is training on:

- **acting/learning gap**: the policy in eval mode (what acts in rollouts: SB3 collects them in eval mode, through
  rlvision's inference copy) against the policy in train mode (what the update trains) on the same observations:
  ``action_kl`` = mean KL(eval || train) of the action distributions, ``value_abs_diff`` = mean |V_eval - V_train|,
  ``value_rel_diff`` = RMS(V_eval - V_train) / RMS(V_train). BatchNorm in train mode normalises with batch
  statistics and in eval mode with running ones: that difference is this gap.
- **feature effective rank** ``srank`` (Kumar et al. 2021, delta 0.01: the number of singular values that carry
  99% of their sum) of the extractor's output and of each backbone stage (channels after a global average);
- **dormant units** (Sokar et al. 2023, tau 0.025): the fraction of units (features; channels of a stage) whose mean
  |activation| is at most tau times the layer's average;
- per-stage **activation RMS**, and the encoder's **share of the gradient norm** of the last update.

:class:`EncoderDiagnostics` is the SB3 callback (PPO and the other on-policy algorithms, SAC/TD3/TQC/CrossQ,
DQN/QR-DQN); its cost is kept within ``budget`` (default 2%) of training time. Nothing here changes training:
BatchNorm statistics moved by the train-mode pass are restored, and no optimizer is touched.
"""

from __future__ import annotations

import time
from typing import Any
from collections.abc import Callable

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from .policies import policy_head, policy_outputs


def effective_rank(features: torch.Tensor, delta: float = 0.01) -> int:
    """srank_delta of a (B, D) feature matrix: the smallest k with sum of the k largest singular values >=
    (1 - delta) * their total (Kumar et al. 2021). 0 for an all-zero matrix."""
    if features.dim() != 2:
        raise ValueError(f"effective_rank takes a (B, D) matrix, got shape {tuple(features.shape)}.")
    singular = torch.linalg.svdvals(features.detach().double())
    total = singular.sum()
    if total <= 0:
        return 0
    cumulative = torch.cumsum(singular, 0) / total
    return int(torch.searchsorted(cumulative, torch.tensor(1 - delta, dtype=cumulative.dtype)).item()) + 1


def unit_activity(activations: torch.Tensor) -> torch.Tensor:
    """Mean |activation| per unit: (B, D) -> (D,), (B, C, H, W) -> (C,) (a channel is a unit)."""
    a = activations.detach().abs()
    return a.mean(0) if a.dim() == 2 else a.transpose(0, 1).reshape(a.shape[1], -1).mean(1)


def dormant_fraction(activations: torch.Tensor, tau: float = 0.025) -> float:
    """Fraction of dormant units (Sokar et al. 2023): unit i is dormant when its mean |activation| divided by the
    layer's average over units is <= ``tau``. All units of an all-zero layer are dormant."""
    activity = unit_activity(activations)
    mean = activity.mean()
    if mean <= 0:
        return 1.0
    return float((activity / mean <= tau).float().mean())


def rms(x: torch.Tensor) -> float:
    return float(x.detach().float().pow(2).mean().sqrt())


def relative_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """RMS(a - b) / RMS(b) (0 when both are 0)."""
    denominator = rms(b)
    difference = rms(a - b)
    return difference / denominator if denominator > 0 else float(difference > 0)


def distribution_kl(pd: Any, qd: Any) -> torch.Tensor:
    """Per-sample KL(p || q) of two torch distributions as SB3 distributions hold them (``.distribution``):
    Categorical; Normal (DiagGaussian), summed over action dimensions (the squashed Gaussian's KL is its Gaussian's,
    tanh being invertible); a list of Categoricals (MultiCategorical), summed."""
    from torch.distributions import kl_divergence

    if isinstance(pd, list):  # MultiCategorical
        return sum(kl_divergence(a, b) for a, b in zip(pd, qd, strict=False))
    kl = kl_divergence(pd, qd)
    return kl.sum(-1) if kl.dim() > 1 else kl


def vision_extractors(policy: nn.Module) -> list[nn.Module]:
    """The rlvision extractors of a policy (VisionExtractor modules; those inside a VisionCombinedExtractor too)."""
    from .extractors import VisionExtractor

    return [m for m in policy.modules() if isinstance(m, VisionExtractor)]


def _policy_outputs(policy: nn.Module, obs: Any) -> tuple[Any, torch.Tensor | None]:
    """(torch action distribution or None, value-like tensor or None) of an SB3 policy, from
    :func:`rlvision.policies.policy_outputs` (one encoder pass): actor-critic -> (pi, V); squashed Gaussian actors
    (SAC/TQC/CrossQ) -> (the actor's distribution, Q of its mean action); deterministic actors (TD3) -> (None, Q of
    its action); Q/quantile networks -> (None, values per action). Recurrent policies need their LSTM state: none.
    SB3's Distribution objects are reused by every call, so the torch distribution inside is returned."""
    if hasattr(policy, "lstm_actor"):
        return None, None
    try:
        head = policy_head(policy)
    except ValueError:
        return None, None
    out = policy_outputs(policy, obs, head, critic_q=True)
    if head == "distribution":
        return policy._get_action_dist_from_latent(out.latent_pi).distribution, out.value
    if head == "squashed_gaussian":
        dist = policy.actor.action_dist.proba_distribution(out.params, out.log_std, **out.dist_kwargs)
        return dist.distribution, out.q
    if head == "deterministic":
        return None, out.q if out.q is not None else out.params
    return None, out.q


def _stage_groups(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    return backbone.named_stages() if hasattr(backbone, "named_stages") else list(backbone.named_children())


@torch.no_grad()
def encoder_report(policy: nn.Module, obs: Any, extractor: nn.Module | None = None) -> dict[str, float]:
    """The diagnostics of one minibatch ``obs`` (already a tensor, or a dict of tensors, on the policy's device).

    Keys: ``action_kl``, ``value_abs_diff``, ``value_rel_diff`` (when the policy has them), ``features_srank``,
    ``features_dormant``, ``features_rms``, and per stage s (stages grouped by output resolution, the last block of
    each) ``stage{s}_srank``, ``stage{s}_dormant``, ``stage{s}_rms``; ``grad_share`` when gradients are present.
    ``extractor``: the one to report (default: the policy's first VisionExtractor).
    """
    extractor = extractor or (vision_extractors(policy) or [None])[0]
    was_training = policy.training
    report: dict[str, float] = {}
    # acting: eval mode without autograd, as SB3 collects rollouts (the inference copy where it is on)
    policy.set_training_mode(False)
    act_dist, act_value = _policy_outputs(policy, obs)
    # learning: train mode, with hooks on the extractor and its stages; BatchNorm statistics restored afterwards
    saved = {name: b.clone() for name, b in policy.named_buffers()}
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:  # returns None: the output is unchanged
            if torch.is_tensor(output) and name not in captured:
                captured[name] = output
        return hook

    handles = []
    if extractor is not None:
        handles.append(extractor.register_forward_hook(keep("features")))
        for name, module in _stage_groups(extractor.backbone):
            handles.append(module.register_forward_hook(keep(name)))
    try:
        policy.set_training_mode(True)
        learn_dist, learn_value = _policy_outputs(policy, obs)
    finally:
        for handle in handles:
            handle.remove()
        policy.set_training_mode(was_training)
        buffers = dict(policy.named_buffers())
        for name, value in saved.items():
            if buffers[name].data_ptr() != value.data_ptr():
                buffers[name].copy_(value)
    if act_dist is not None and learn_dist is not None:
        report["action_kl"] = float(distribution_kl(act_dist, learn_dist).mean())
    if act_value is not None and learn_value is not None:
        report["value_abs_diff"] = float((act_value - learn_value).abs().mean())
        report["value_rel_diff"] = relative_rms(act_value, learn_value)
    if "features" in captured:
        features = captured.pop("features")
        report.update(features_srank=effective_rank(features), features_dormant=dormant_fraction(features),
                      features_rms=rms(features))
    # stages: the last block at each output resolution
    last: dict[tuple, tuple[str, torch.Tensor]] = {}
    for name, out in captured.items():
        key = tuple(out.shape[2:]) if out.dim() == 4 else ("flat",)
        last[key] = (name, out)
    for s, (_, out) in enumerate(last.values()):
        pooled = out.mean((2, 3)) if out.dim() == 4 else out.reshape(out.shape[0], -1)
        report.update({f"stage{s}_srank": effective_rank(pooled), f"stage{s}_dormant": dormant_fraction(out),
                       f"stage{s}_rms": rms(out)})
    share = gradient_share(policy, extractor)
    if share is not None:
        report["grad_share"] = share
    return report


def gradient_share(policy: nn.Module, extractor: nn.Module | None) -> float | None:
    """||grad of the extractor's parameters|| / ||grad of all the policy's parameters|| from the ``.grad`` the last
    update left (None when there are none yet)."""
    if extractor is None:
        return None
    own = {id(p) for p in extractor.parameters()}
    total = encoder = 0.0
    for p in policy.parameters():
        if p.grad is not None:
            squared = float(p.grad.detach().float().pow(2).sum())
            total += squared
            if id(p) in own:
                encoder += squared
    return (encoder / total) ** 0.5 if total > 0 else None


class EncoderDiagnostics(BaseCallback):
    """Log :func:`encoder_report` under ``encoder/`` (TensorBoard, CSV: SB3's logger) at the end of rollouts.

    On-policy algorithms: a random minibatch of the rollout just collected (the next update trains on it) and the
    gradients of the previous update; off-policy: a replay-buffer sample. It runs at most every ``every`` rollouts
    and only while its total time stays within ``budget`` of the training time so far (the first rollout always),
    so its cost is bounded whatever the encoder; ``encoder/cost`` logs the share spent. ``self.history`` keeps every
    report (with ``steps``).

    :param batch: observations per report (64).
    :param every: at most one report per this many rollouts (1: as often as the budget allows).
    :param budget: the largest share of training time the diagnostics may take (0.02); None: no time limit, a
        report at every ``every``-th rollout (the same reports on any machine, e.g. for a study of one run).
    :param clock: seconds for the budget (``time.perf_counter``).
    """

    def __init__(self, batch: int = 64, every: int = 1, budget: float | None = 0.02, verbose: int = 0,
                 clock: Callable[[], float] = time.perf_counter):
        super().__init__(verbose)
        if batch < 2 or every < 1 or not (budget is None or 0 < budget <= 1):
            raise ValueError(f"need batch >= 2, every >= 1 and 0 < budget <= 1 (or None: no time limit); got "
                             f"batch={batch}, every={every}, budget={budget}.")
        self.batch, self.every, self.budget = batch, every, budget
        self._clock = clock
        self.history: list[dict[str, float]] = []
        self.spent = 0.0
        self._rollouts = 0
        self._start = 0.0
        self._last_cost = 0.0
        self._rng = np.random.default_rng(0)

    def _on_training_start(self) -> None:
        self._start = self._clock()

    def _on_step(self) -> bool:
        return True

    def _sample(self) -> Any:
        model = self.model
        buffer = getattr(model, "rollout_buffer", None)
        if buffer is not None and hasattr(buffer, "observations"):
            observations = buffer.observations
            first = next(iter(observations.values())) if isinstance(observations, dict) else observations
            n = buffer.buffer_size * buffer.n_envs if buffer.full else buffer.pos * buffer.n_envs
            if n < 2:
                return None
            index = self._rng.choice(n, min(self.batch, n), replace=False)

            def take(array: np.ndarray) -> np.ndarray:
                return array.reshape(-1, *array.shape[2:])[index]

            obs = {k: take(v) for k, v in observations.items()} if isinstance(observations, dict) else take(first)
            return model.policy.obs_to_tensor(obs)[0]
        replay = getattr(model, "replay_buffer", None)
        if replay is not None and replay.size() >= 2:
            return replay.sample(min(self.batch, replay.size())).observations
        return None

    def _on_rollout_end(self) -> None:
        self._rollouts += 1
        elapsed = self._clock() - self._start
        due = (self._rollouts - 1) % self.every == 0
        affordable = (self.budget is None or not self.history
                      or self.spent + self._last_cost <= self.budget * elapsed)
        if not (due and affordable):
            return
        start = self._clock()
        obs = self._sample()
        if obs is None:
            return
        report = encoder_report(self.model.policy, obs)
        self._last_cost = self._clock() - start
        self.spent += self._last_cost
        for key, value in report.items():
            self.logger.record(f"encoder/{key}", value)
        self.logger.record("encoder/cost", self.spent / max(self._clock() - self._start, 1e-9))
        self.history.append(dict(report, steps=int(self.num_timesteps)))
