"""Where the time goes in the RL loop, per backbone.

- :class:`ThroughputProfiler`: an SB3 callback that splits every rollout/train cycle into env stepping, policy
  forward during rollouts, preprocessing-stage forward, training forward, backward, optimizer step and the rest,
  and logs seconds, shares and rates under ``rlvision/...`` next to SB3's ``time/fps``. It installs its timers
  (a wrapper on the VecEnv's step, forward hooks on the policy's modules, wrappers on ``Tensor.backward`` and the
  optimizers' ``step``) when training starts and removes them when it ends; it changes nothing that is computed.
- :func:`benchmark_backbones`: the encoder alone: parameters, FLOPs, forward latency at the rollout batch,
  forward+backward at the training batch, training memory.
"""

from __future__ import annotations

import csv
import functools
import gc
import os
import resource
import statistics
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

PHASES = ("env", "rollout_forward", "train_forward", "backward", "optimizer", "other")


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB (since :func:`reset_peak_memory` where Linux allows it);
    SubprocVecEnv workers are not included. The count starts at the resident memory when reset, which includes
    what earlier work in the process left cached: for a figure of one run alone, run it in its own process
    (``compare_backbones.py`` does)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory() -> None:
    """Restart the peak-memory count at the current RSS (Linux >= 4.0: ``5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class _Clock:
    """perf_counter, synchronising CUDA first when the model runs there (nothing extra on CPU)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


class ThroughputProfiler(BaseCallback):
    """Time each phase of the SB3 loop; log per cycle (a rollout and the training that follows it).

    Works with on-policy (PPO, A2C) and off-policy (SAC, TD3, DQN) algorithms and any VecEnv. For off-policy
    algorithms a cycle can be a single step, so records are made at most every ``min_record_s`` seconds, over all
    cycles since the last record. ``preprocess_forward`` (a stage of the extractor named ``preprocess``, if any) is
    part of the forward times, reported on its own.

    After training, :meth:`summary` gives the totals over the whole run.
    """

    def __init__(self, min_record_s: float = 1.0, verbose: int = 0):
        super().__init__(verbose)
        self.min_record_s = min_record_s
        self.totals: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []

    # --- installing and removing the timers ---------------------------------------------------------------------
    def _on_training_start(self) -> None:
        self._clock = _Clock(self.model.device)
        self._in_rollout = False
        self._depth = 0
        self._fwd_start = 0.0
        self._window = dict.fromkeys(PHASES + ("preprocess_forward", "wall", "rollout", "train"), 0.0)
        self._counts = {"env_steps": 0, "train_samples": 0}
        self.totals = {**self._window, **self._counts}
        self._window_counts = dict(self._counts)
        self._train_batch = getattr(self.model, "batch_size", None) or self.model.n_steps * self.model.n_envs
        reset_peak_memory()  # restart the count at the current RSS (which still holds what earlier runs cached)
        self._cuda_device = self.model.device if self.model.device.type == "cuda" else None
        if self._cuda_device is not None:
            torch.cuda.reset_peak_memory_stats(self._cuda_device)
        self._install_env_timer(self.training_env)
        self._install_forward_hooks(self.model.policy)
        self._install_backward_timer()
        self._install_optimizer_timers(self.model.policy)
        now = self._clock()
        self._cycle_start = self._phase_start = self._last_record = now

    def _on_training_end(self) -> None:
        self._close_phase(self._clock())
        self._flush(force=True)
        self.logger.dump(self.num_timesteps)  # SB3 dumps before training, so the last window would be lost
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def _timed(self, key: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start = self._clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self._window[key] += self._clock() - start

        return wrapper

    def _install_env_timer(self, env) -> None:
        for name in ("step_async", "step_wait"):
            setattr(env, name, self._timed("env", getattr(env, name)))
            self._undo.append(lambda name=name: delattr(env, name))
        step_wait = env.step_wait

        def counting_step_wait():
            self._counts["env_steps"] += env.num_envs
            return step_wait()

        env.step_wait = counting_step_wait

    def _install_forward_hooks(self, policy: nn.Module) -> None:
        # The policy and its modules two levels down cover every entry point SB3 calls (policy(obs) in PPO rollouts,
        # actor.action_log_prob -> features_extractor/latent_pi/mu in SAC, q_net in DQN ...). A depth counter times
        # only the outermost call, so nested modules are not counted twice.
        modules = [m for name, m in policy.named_modules() if name.count(".") <= 1]
        for module in modules:
            pre = module.register_forward_pre_hook(self._forward_enter)
            post = module.register_forward_hook(self._forward_exit)
            self._undo += [pre.remove, post.remove]
        for extractor in {m for m in policy.modules() if hasattr(m, "preprocess")}:
            stage = extractor.preprocess
            if isinstance(stage, nn.Module):
                timed = self._timed("preprocess_forward", stage.forward)
                stage.forward = timed
                self._undo.append(lambda stage=stage: delattr(stage, "forward"))

    def _forward_enter(self, module, args) -> None:
        if self._depth == 0:
            self._fwd_start = self._clock()
        self._depth += 1

    def _forward_exit(self, module, args, output) -> None:
        self._depth -= 1
        if self._depth == 0:
            key = "rollout_forward" if self._in_rollout else "train_forward"
            self._window[key] += self._clock() - self._fwd_start

    def _install_backward_timer(self) -> None:
        original = torch.Tensor.backward
        torch.Tensor.backward = self._timed("backward", original)
        self._undo.append(lambda: setattr(torch.Tensor, "backward", original))

    def _install_optimizer_timers(self, policy: nn.Module) -> None:
        optimizers = list(dict.fromkeys(m.optimizer for m in policy.modules()
                                        if isinstance(getattr(m, "optimizer", None), torch.optim.Optimizer)))
        # training samples = steps of the optimizer that steps once per batch (the critic's where there is one)
        critic = getattr(getattr(policy, "critic", None), "optimizer", None)
        counted = critic if critic in optimizers else optimizers[0] if optimizers else None
        for opt in optimizers:
            step = self._timed("optimizer", opt.step)
            if opt is counted:
                step = self._counting(step)
            opt.step = step
            self._undo.append(lambda opt=opt: delattr(opt, "step"))

    def _counting(self, step: Callable) -> Callable:
        def counting_step(*args, **kwargs):
            self._counts["train_samples"] += self._train_batch
            return step(*args, **kwargs)

        return counting_step

    # --- phase bookkeeping --------------------------------------------------------------------------------------
    def _close_phase(self, now: float) -> None:
        self._window["rollout" if self._in_rollout else "train"] += now - self._phase_start
        self._phase_start = now
        self._depth = 0

    def _on_rollout_start(self) -> None:
        now = self._clock()
        self._close_phase(now)
        self._in_rollout = True
        self._flush(force=False)

    def _on_rollout_end(self) -> None:
        self._close_phase(self._clock())
        self._in_rollout = False

    def _on_step(self) -> bool:
        return True

    def _flush(self, force: bool) -> None:
        """Record the window since the last record (if long enough) and add it to the totals."""
        now = self._clock()
        wall = now - self._last_record
        if wall <= 0 or (not force and wall < self.min_record_s):
            return
        w = self._window
        w["wall"] = wall
        w["other"] = max(0.0, wall - sum(w[p] for p in PHASES if p != "other"))
        counts = {k: self._counts[k] - self._window_counts[k] for k in self._counts}
        for key in PHASES + ("preprocess_forward",):
            self.logger.record(f"rlvision/time/{key}_s", w[key])
            self.logger.record(f"rlvision/share/{key}", w[key] / wall)
        self.logger.record("rlvision/env_steps_per_s", counts["env_steps"] / max(w["env"], 1e-9))
        self.logger.record("rlvision/rollout_sps", counts["env_steps"] / max(w["rollout"], 1e-9))
        self.logger.record("rlvision/train_samples_per_s", counts["train_samples"] / max(w["train"], 1e-9))
        self.logger.record("rlvision/peak_memory_mb", peak_memory_mb())
        for key, value in w.items():
            self.totals[key] += value
        for key, value in counts.items():
            self.totals[key] += value
        self._window = dict.fromkeys(w, 0.0)
        self._window_counts = dict(self._counts)
        self._last_record = now

    def summary(self) -> dict[str, float]:
        """Totals over the run: seconds and share per phase, env/rollout/train rates, peak memory."""
        t = self.totals
        wall = max(t.get("wall", 0.0), 1e-9)
        out: dict[str, float] = {"wall_s": t.get("wall", 0.0)}
        for key in PHASES + ("preprocess_forward",):
            out[f"{key}_s"] = t.get(key, 0.0)
            out[f"{key}_share"] = t.get(key, 0.0) / wall
        out["env_steps_per_s"] = t.get("env_steps", 0) / max(t.get("env", 0.0), 1e-9)
        out["rollout_sps"] = t.get("env_steps", 0) / max(t.get("rollout", 0.0), 1e-9)
        out["train_samples_per_s"] = t.get("train_samples", 0) / max(t.get("train", 0.0), 1e-9)
        out["peak_memory_mb"] = peak_memory_mb()
        if getattr(self, "_cuda_device", None) is not None:  # tensors this run allocated on the GPU, at their peak
            out["cuda_peak_memory_mb"] = torch.cuda.max_memory_allocated(self._cuda_device) / 2**20
        return out


# --- encoder-only benchmark ------------------------------------------------------------------------------------

@torch.no_grad()
def count_flops(module: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one eval-mode forward of ``module(example)`` (torch.utils.flop_counter: 2 per multiply-add), counted
    on a CPU copy: the count does not depend on the device, and on CUDA the counter missed or repeated kernels
    of a module that had run there (seen on an H100: 0 or 3x)."""
    import copy

    twin = copy.deepcopy(module).cpu().eval()
    with FlopCounterMode(display=False) as counter:
        twin(example.cpu())
    return counter.get_total_flops()


def _median_iqr(samples: Sequence[float]) -> tuple[float, float]:
    q1, q3 = np.percentile(samples, [25, 75])
    return statistics.median(samples), float(q3 - q1)


def _time_call(fn: Callable[[], Any], repeats: int, warmup: int, clock: _Clock,
               first: Callable[[], Any] | None = None) -> list[float]:
    """Run ``first`` (or ``fn``) once, ``warmup - 1`` more untimed calls, then time ``repeats`` calls."""
    (first or fn)()
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return times


class _SavedBytes:
    """Counts the bytes of the tensors autograd saves for backward while active (a context manager)."""

    def __init__(self):
        self.total = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.total += t.numel() * t.element_size()
        return t

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def _bench_one(model: nn.Module, name: str, input_shape: tuple[int, int, int], batch_sizes: tuple[int, int],
               repeats: int, warmup: int, dev: torch.device) -> dict[str, Any]:
    """One row of :func:`benchmark_backbones` for ``model``."""
    clock = _Clock(dev)
    rollout_batch, train_batch = batch_sizes
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, torch.rand(1, *input_shape, device=dev))
    x_roll = torch.rand(rollout_batch, *input_shape, device=dev)

    def rollout():
        with torch.inference_mode():
            model(x_roll)

    fwd = _time_call(rollout, repeats, warmup, clock)
    model.train()
    x_train = torch.rand(train_batch, *input_shape, device=dev)

    def train_step():
        model.zero_grad(set_to_none=True)
        model(x_train).sum().backward()

    saved = _SavedBytes()

    def counted_step():  # the first (warm-up) step also counts what autograd saves
        with saved:
            train_step()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    fwd_bwd = _time_call(train_step, repeats, max(warmup, 1), clock, first=counted_step)
    memory = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else saved.total + 4 * params * 4
    fwd_med, fwd_iqr = _median_iqr(fwd)
    fb_med, fb_iqr = _median_iqr(fwd_bwd)
    return dict(backbone=name, params=params, mflops=round(flops / 1e6, 1),
                fwd_ms=round(fwd_med * 1e3, 2), fwd_ms_iqr=round(fwd_iqr * 1e3, 2),
                fwd_bwd_ms=round(fb_med * 1e3, 1), fwd_bwd_ms_iqr=round(fb_iqr * 1e3, 1),
                train_memory_mb=round(memory / 2**20, 1), rollout_batch=rollout_batch, train_batch=train_batch,
                input_shape="x".join(map(str, input_shape)), threads=torch.get_num_threads())


def benchmark_backbones(names: Iterable[str], input_shape: tuple[int, int, int] = (4, 84, 84),
                        batch_sizes: tuple[int, int] = (8, 256), threads: int | None = None, repeats: int = 5,
                        warmup: int = 2, features_dim: int = 256, device: str = "cpu",
                        csv_path: str | None = None, tensorboard_dir: str | None = None,
                        progress: bool = True) -> list[dict[str, Any]]:
    """Benchmark each backbone as the RL encoder (``VisionExtractor``: backbone + pool + linear).

    Per backbone: ``params``; ``mflops`` per sample (torch.utils.flop_counter, one forward); ``fwd_ms`` (median) and
    ``fwd_ms_iqr`` at the rollout batch ``batch_sizes[0]`` in eval mode under ``torch.inference_mode``;
    ``fwd_bwd_ms`` and ``fwd_bwd_ms_iqr`` at the training batch ``batch_sizes[1]`` in train mode; ``train_memory_mb``
    = saved activations of that forward + 4x the parameters (weights, grads, Adam's two moments), or CUDA's peak
    allocation on a GPU. Rows go to ``csv_path`` and ``tensorboard_dir`` when given.
    """
    from .extractors import VisionExtractor

    names = list(names)
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    space = spaces.Box(0, 255, input_shape, dtype=np.uint8)
    rows: list[dict[str, Any]] = []
    iterator: Iterable[str] = names
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(names, desc="benchmark", unit="backbone")
    try:
        for name in iterator:
            model = VisionExtractor(space, backbone=name, features_dim=features_dim).to(dev)
            rows.append(_bench_one(model, name, input_shape, batch_sizes, repeats, warmup, dev))
            del model
            gc.collect()
    finally:
        torch.set_num_threads(old_threads)
    if csv_path and rows:
        os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if tensorboard_dir and rows:
        from torch.utils.tensorboard import SummaryWriter

        for row in rows:
            with SummaryWriter(os.path.join(tensorboard_dir, row["backbone"])) as writer:
                for key, value in row.items():
                    if isinstance(value, (int, float)):
                        writer.add_scalar(f"bench/{key}", value, 0)
    return rows
