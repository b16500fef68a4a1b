"""What an encoder costs in the RL loop's two regimes, inside the policy SB3 trains (issue 31's instrument).

PPO spends its compute in two places: the rollout forward (a batch of ``n_envs`` observations, eval mode, no
autograd: one call per vector-env step) and the update step (a minibatch, train mode: forward, backward, gradient
clipping and the optimizer step). :func:`measure` times both for a policy built from :func:`rlvision.policy_kwargs`
(so the speed path, the preset's norm and pooling are what SB3 runs) and counts:

- ``calls``: aten operators that reach a kernel during the call (a ``TorchDispatchMode`` counts them, backward and
  the optimizer included; composite operators count once, by the kernels they run);
- ``gflop``: FLOPs of the call (``torch.utils.flop_counter``: convolutions, matmuls, attention; 2 per multiply-add;
  elementwise work is not counted);
- ``ms``: median wall time (a rollout's after the re-sync of the inference copy that follows an update: PPO pays
  that once per rollout of ``n_steps`` forwards); ``gflops``: achieved GFLOP/s.

``per_1024_ms`` is the compute of 1,024 env steps of PPO with 8 envs: 128 rollout forwards and 16 update steps
(4 epochs of 4 minibatches of 256). :func:`fit_overhead` fits ``ms = a * calls + gflop / b`` over all rows of one
device and splits each time into per-call overhead and arithmetic: a small network at a small batch is bound by
the first term, whatever its FLOPs.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass
from collections.abc import Callable

import numpy as np
import torch
from gymnasium import spaces
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

ROLLOUT_BATCH, UPDATE_BATCH = 8, 256
ROLLOUTS_PER_1024, UPDATES_PER_1024 = 1024 // ROLLOUT_BATCH, 16


class CallCounter(TorchDispatchMode):
    """Counts the aten operators dispatched to kernels while active (``with CallCounter() as c: ...; c.calls``)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def distribution_checks(enabled: bool = __debug__):
    """torch.distributions' argument checks set to ``enabled`` (torch's default: on unless Python runs with -O) while
    active, restored after. The first ``torch.compile`` in a process turns them off for good, and with them 13 aten
    calls of each categorical policy step (the action's support check): the counts and times here must not depend on
    whether something in the process compiled before."""
    from torch.distributions import Distribution

    before = Distribution._validate_args
    Distribution.set_default_validate_args(enabled)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(before)


def count_calls(fn: Callable[[], object]) -> int:
    """Aten operators one call of ``fn`` runs (see :class:`CallCounter`)."""
    with distribution_checks(), CallCounter() as counter:
        fn()
    return counter.calls


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn``, backward included when ``fn`` runs it (``torch.utils.flop_counter``)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ppo_policy(backbone: str, side: int, channels: int = 3, device: str = "cpu", actions: int = 7,
               **backbone_kwargs):
    """SB3's PPO policy (``ActorCriticPolicy``, its default net_arch) on uint8 (channels, side, side) frames with
    ``actions`` discrete actions, the encoder and optimizer from :func:`rlvision.policy_kwargs`."""
    from stable_baselines3.common.policies import ActorCriticPolicy

    from .extractors import policy_kwargs

    space = spaces.Box(0, 255, (channels, side, side), np.uint8)
    kwargs = policy_kwargs(backbone, "ppo", **backbone_kwargs)
    policy = ActorCriticPolicy(space, spaces.Discrete(actions), lambda _: 2.5e-4, **kwargs)
    return policy.to(device)


def rollout_step(policy, batch: int = ROLLOUT_BATCH, seed: int = 0) -> Callable[[], object]:
    """One rollout forward as SB3's ``collect_rollouts`` makes it: eval mode, no autograd, ``policy(obs)``."""
    generator = torch.Generator().manual_seed(seed)
    space = policy.observation_space
    obs = torch.randint(0, 256, (batch, *space.shape), generator=generator).float().to(policy.device)

    def step():
        policy.set_training_mode(False)
        with torch.no_grad():
            return policy(obs)

    return step


def update_step(policy, batch: int = UPDATE_BATCH, seed: int = 0) -> Callable[[], object]:
    """One PPO minibatch update as SB3's ``PPO.train`` makes it: train mode, ``evaluate_actions``, a loss of all
    three terms, ``zero_grad``, backward, ``clip_grad_norm_(0.5)``, the optimizer step."""
    generator = torch.Generator().manual_seed(seed)
    space = policy.observation_space
    obs = torch.randint(0, 256, (batch, *space.shape), generator=generator).float().to(policy.device)
    actions = torch.randint(0, policy.action_space.n, (batch,), generator=generator).to(policy.device)

    def step():
        policy.set_training_mode(True)
        values, log_prob, entropy = policy.evaluate_actions(obs, actions)
        loss = -log_prob.mean() + 0.5 * values.pow(2).mean() - 0.01 * entropy.mean()
        policy.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
        policy.optimizer.step()

    return step


@dataclass
class LoopCost:
    """One encoder at one frame size on one device (see the module docstring for the columns)."""

    backbone: str
    side: int
    device: str
    rollout_calls: int
    rollout_ms: float
    rollout_gflop: float
    update_calls: int
    update_ms: float
    update_gflop: float
    update_gflops: float
    per_1024_ms: float
    per_1024_vs_first: float = float("nan")
    update_calls_vs_first: float = float("nan")
    rollout_overhead_ms: float = float("nan")
    update_overhead_ms: float = float("nan")
    update_arithmetic_ms: float = float("nan")

    def row(self) -> dict:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = round(value, 3 if abs(value) < 10 else 1)
        return out


def measure(backbones: list[str], sides: list[int], channels: int = 3, device: str = "cpu", rounds: int = 7,
            rollout_repeats: int = 20, progress: Callable[[str], None] | None = None) -> list[LoopCost]:
    """:class:`LoopCost` of every backbone at every side. Per side the backbones are timed in alternation, round by
    round (machine drift hits all alike); medians over ``rounds`` (the rollout time of a round is the mean of
    ``rollout_repeats`` calls). Ratios (``*_vs_first``) are against the first backbone at the same side. A backbone
    name may carry options: ``"mobilenetv4_nano_rl[norm=gn]"`` (rlvision.runs' bracket syntax). Measured with
    torch.distributions' checks as torch sets them by default (:func:`distribution_checks`)."""
    with distribution_checks():
        rows = _measure(backbones, sides, channels, device, rounds, rollout_repeats, progress)
    fit_overhead(rows)
    return rows


def _measure(backbones: list[str], sides: list[int], channels: int, device: str, rounds: int, rollout_repeats: int,
             progress: Callable[[str], None] | None) -> list[LoopCost]:
    from .runs import parse_backbones

    dev = torch.device(device)
    rows: list[LoopCost] = []
    for side in sides:
        entries = []
        for spec in backbones:
            [(name, options)] = parse_backbones(spec)
            policy = ppo_policy(name, side, channels, device, **options)
            rollout, update = rollout_step(policy), update_step(policy)
            for _ in range(2):  # first calls: the inference copy is built, Adam makes its state, caches warm up
                update()
                rollout()
            _sync(dev)
            entries.append(dict(spec=spec, rollout=rollout, update=update, rollout_times=[], update_times=[],
                                rollout_calls=count_calls(rollout), update_calls=count_calls(update),
                                rollout_flops=count_flops(rollout), update_flops=count_flops(update)))
            if progress:
                progress(f"{spec} at {side} px: built")
        for _ in range(rounds):
            for entry in entries:
                _sync(dev)
                start = time.perf_counter()
                entry["update"]()
                _sync(dev)
                entry["update_times"].append(time.perf_counter() - start)
                entry["rollout"]()  # the re-sync of the inference copy after an update: once per rollout in PPO
                _sync(dev)
                start = time.perf_counter()
                for _ in range(rollout_repeats):
                    entry["rollout"]()
                _sync(dev)
                entry["rollout_times"].append((time.perf_counter() - start) / rollout_repeats)
        first = None
        for entry in entries:
            rollout_ms = 1000 * statistics.median(entry["rollout_times"])
            update_ms = 1000 * statistics.median(entry["update_times"])
            cost = LoopCost(
                backbone=entry["spec"], side=side, device=device, rollout_calls=entry["rollout_calls"],
                rollout_ms=rollout_ms, rollout_gflop=entry["rollout_flops"] / 1e9, update_calls=entry["update_calls"],
                update_ms=update_ms, update_gflop=entry["update_flops"] / 1e9,
                update_gflops=entry["update_flops"] / 1e6 / update_ms,
                per_1024_ms=ROLLOUTS_PER_1024 * rollout_ms + UPDATES_PER_1024 * update_ms)
            first = first or cost
            cost.per_1024_vs_first = cost.per_1024_ms / first.per_1024_ms
            cost.update_calls_vs_first = cost.update_calls / first.update_calls
            rows.append(cost)
    return rows


def fit_overhead(rows: list[LoopCost]) -> tuple[float, float]:
    """Fit ``ms = a * calls + gflop / b`` to every row's rollout and update times (least squares on relative error:
    the times span two orders of magnitude), write each row's overhead and arithmetic split, and return
    (a in microseconds per call, b in GFLOP/s). Coefficients are kept >= 0 (a one-term fit when the other would be
    negative)."""
    calls = np.array([r.rollout_calls for r in rows] + [r.update_calls for r in rows], dtype=float)
    gflop = np.array([r.rollout_gflop for r in rows] + [r.update_gflop for r in rows], dtype=float)
    ms = np.array([r.rollout_ms for r in rows] + [r.update_ms for r in rows], dtype=float)
    if len(ms) == 0:
        return float("nan"), float("nan")
    design = np.stack([calls, gflop], 1) / ms[:, None]
    coef, *_ = np.linalg.lstsq(design, np.ones_like(ms), rcond=None)
    if coef[0] < 0 or coef[1] < 0:  # one term alone explains the times better: keep the other at 0
        fits = []
        for column in (0, 1):
            only = design[:, column]
            c = float(only @ np.ones_like(ms) / max(only @ only, 1e-30))
            c = max(c, 0.0)
            fits.append((float(np.sum((only * c - 1) ** 2)), column, c))
        _, column, c = min(fits)
        coef = np.array([c, 0.0]) if column == 0 else np.array([0.0, c])
    per_call_ms, ms_per_gflop = float(coef[0]), float(coef[1])
    for r in rows:
        r.rollout_overhead_ms = per_call_ms * r.rollout_calls
        r.update_overhead_ms = per_call_ms * r.update_calls
        r.update_arithmetic_ms = ms_per_gflop * r.update_gflop
    return 1000 * per_call_ms, (1000 / ms_per_gflop if ms_per_gflop > 0 else float("inf"))
