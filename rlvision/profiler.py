"""Where the time goes in the RL loop, per backbone.

- :class:`ThroughputProfiler`: an SB3 callback that splits every rollout/train cycle into env stepping, policy
  forward during rollouts, preprocessing-stage forward, training forward, backward, optimizer step, training steps
  replayed from CUDA graphs and the rest, and logs seconds, shares and rates under ``rlvision/...`` next to SB3's
  ``time/fps``. It installs its timers (a wrapper on the VecEnv's step, forward hooks on the policy's modules,
  wrappers on ``Tensor.backward``, the optimizers' ``step`` and CUDA-graph replays) when training starts and removes
  them when it ends; it changes nothing that is computed.
Encoder micro-benchmarks (the encoder alone, outside the RL loop) live in :mod:`rlvision.benchmark`.
"""

from __future__ import annotations

import functools
import resource
import time
from typing import Callable

import torch
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from .cuda_graphs import CudaGraphCache

# train_graph: training steps replayed from a CUDA graph (rlvision.ppo.GraphedPPO), forward, backward and optimizer
# in one launch that no hook can split
PHASES = ("env", "rollout_forward", "train_forward", "backward", "optimizer", "train_graph", "other")


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB (since :func:`reset_peak_memory` where Linux allows it);
    SubprocVecEnv workers are not included. The count starts at the resident memory when reset, which includes
    what earlier work in the process left cached: for a figure of one run alone, run it in its own process
    (``rlvision compare`` does: rlvision.runs.run_isolated)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory() -> bool:
    """Restart the peak-memory count at the current RSS (Linux >= 4.0: ``5 > /proc/self/clear_refs``). Returns
    whether the system allowed it (elsewhere the count keeps the process's peak since it started)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class _Clock:
    """perf_counter, synchronising CUDA first when the model runs there (nothing extra on CPU). Not while a CUDA
    graph is being captured (a sync would break the capture; the captured work is timed when it is replayed, as
    one call: GraphedPPO's minibatch updates count as "train_graph", not forward/backward/optimizer)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda and not torch.cuda.is_current_stream_capturing():
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
        self._install_graph_step_timers(self.model)
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

    def _install_graph_step_timers(self, model) -> None:
        """Time the replays of the training-step CUDA graphs the algorithm lists in ``cuda_graph_caches()``
        (rlvision.ppo.GraphedPPO) and count their rows as training samples (their eager calls, warm-up and capture,
        go through the hooks and the optimizer timer above)."""
        caches = model.cuda_graph_caches() if hasattr(model, "cuda_graph_caches") else []
        for graph_step in [c for c in caches if isinstance(c, CudaGraphCache)]:
            replay = self._timed("train_graph", graph_step.replay)

            def counting_replay(entry, inputs, replay=replay):
                self._counts["train_samples"] += int(inputs[0].shape[0])
                return replay(entry, inputs)

            graph_step.replay = counting_replay
            self._undo.append(lambda graph_step=graph_step: delattr(graph_step, "replay"))

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
