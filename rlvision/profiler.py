"""Where the time goes in the RL loop, per backbone.

- :func:`profile` / :class:`Profile`: a context over one SB3 model, ``with profile(model) as p: model.learn(n)``,
  that splits the run into env stepping, policy forward during rollouts, preprocessing-stage forward, training
  forward, backward, optimizer step, training steps replayed from CUDA graphs and the rest; ``p.summary()`` gives
  seconds, shares and rates, and each record also goes to the model's SB3 logger under ``rlvision/...`` next to
  ``time/fps``. Its timers are hooks of the model's own objects: forward hooks on the policy's modules, gradient
  hooks on their outputs and parameters (backward), the optimizers' step pre/post hooks, timers on the VecEnv's
  ``step_async``/``step_wait`` and on CUDA-graph replays. Nothing global is touched (``torch.Tensor.backward`` stays
  as it is), every session keeps its own counts (nested or sequential sessions do not add to each other), and all
  of it is removed when the block ends, also when ``learn`` raises. It changes nothing that is computed.
- :class:`ThroughputProfiler`: the same session as an SB3 callback (rollout and training phases from SB3's callback
  events), for ``model.learn(n, callback=ThroughputProfiler())``. SB3 does not tell a callback when ``learn``
  raises: after an exception call its :meth:`ThroughputProfiler.close` (or use the context, which needs no call).
Encoder micro-benchmarks (the encoder alone, outside the RL loop) live in :mod:`rlvision.benchmark`.
"""

from __future__ import annotations

import functools
import resource
import time
from typing import Any
from collections.abc import Callable

import torch
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from .cuda_graphs import CudaGraphCache

# train_graph: training steps replayed from a CUDA graph (rlvision.graphed_ppo.GraphedPPO), forward, backward and
# optimizer in one launch that no hook can split
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


class Profile:
    """A profiling session over one SB3 model: a context manager (``with profile(model) as p: model.learn(n)``) or
    :meth:`start` / :meth:`stop`. See the module docstring for what it measures and how.

    Phases: a rollout runs while the policy is in eval mode (SB3's ``set_training_mode(False)`` in
    ``collect_rollouts``), training while it is in train mode; the session reads the mode at each env step and each
    forward. :class:`ThroughputProfiler` marks phases from SB3's callback events instead (``explicit_phases``).
    Records are made at most every ``min_record_s`` seconds (off-policy cycles can be one step long).
    """

    def __init__(self, model, min_record_s: float = 1.0, logger: Any = None):
        self.model = model
        self.min_record_s = min_record_s
        self._logger = logger
        self.totals: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []
        self._active = False
        self._explicit = False

    # --- the session ------------------------------------------------------------------------------------------
    def __enter__(self) -> Profile:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, explicit_phases: bool = False) -> Profile:
        """Install the timers and start counting (the peak-memory count restarts here)."""
        if self._active:
            raise RuntimeError("this profiling session is already running; make a new one for another run.")
        model = self.model
        self._explicit = explicit_phases
        self._clock = _Clock(model.device)
        self._in_rollout = False
        self._depth = 0
        self._fwd_start = 0.0
        self._bwd_start: float | None = None
        self._bwd_end: float | None = None
        self._opt_start = 0.0
        self._window = dict.fromkeys(PHASES + ("preprocess_forward", "wall", "rollout", "train"), 0.0)
        self._counts = {"env_steps": 0, "train_samples": 0}
        self.totals = {**self._window, **self._counts}
        self._window_counts = dict(self._counts)
        self._train_batch = getattr(model, "batch_size", None) or model.n_steps * model.n_envs
        reset_peak_memory()  # restart the count at the current RSS (which still holds what earlier runs cached)
        self._cuda_device = model.device if model.device.type == "cuda" else None
        if self._cuda_device is not None:
            torch.cuda.reset_peak_memory_stats(self._cuda_device)
        self._active = True
        try:
            self._install_env_timer(model.get_env())
            self._install_forward_hooks(model.policy)
            self._install_gradient_hooks(model.policy)
            self._install_optimizer_hooks(model.policy)
            self._install_graph_step_timers(model)
        except BaseException:
            self.stop(record=False)
            raise
        now = self._clock()
        self._cycle_start = self._phase_start = self._last_record = now
        return self

    def stop(self, record: bool = True) -> None:
        """Close the last phase, make the last record and remove every timer (idempotent)."""
        if not self._active:
            return
        try:
            if record:
                self._close_backward()
                self._close_phase(self._clock())
                self._flush(force=True)
        finally:
            for undo in reversed(self._undo):
                undo()
            self._undo.clear()
            self._active = False

    # --- installing the timers ----------------------------------------------------------------------------------
    def _install_env_timer(self, env) -> None:
        if env is None:
            return
        own = vars(env)
        for name in ("step_async", "step_wait"):
            before = own.get(name, _MISSING)  # an instance attribute already there (another session's timer)
            original = getattr(env, name)
            setattr(env, name, self._env_timed(name, original, env))
            self._undo.append(lambda name=name, before=before: _restore(env, name, before))

    def _env_timed(self, name: str, fn: Callable, env) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if not self._active:
                return fn(*args, **kwargs)
            start = self._clock()
            if name == "step_async":
                self._observe_phase(start)
            try:
                return fn(*args, **kwargs)
            finally:
                self._window["env"] += self._clock() - start
                if name == "step_wait":
                    self._counts["env_steps"] += env.num_envs

        return wrapper

    def _install_forward_hooks(self, policy: nn.Module) -> None:
        # The policy and its modules two levels down cover every entry point SB3 calls (policy(obs) in PPO rollouts,
        # actor.action_log_prob -> features_extractor/latent_pi/mu in SAC, q_net in DQN ...). A depth counter times
        # only the outermost call, so nested modules are not counted twice.
        modules = [m for name, m in policy.named_modules() if name.count(".") <= 1]
        for module in modules:
            self._undo += [module.register_forward_pre_hook(self._forward_enter).remove,
                           module.register_forward_hook(self._forward_exit).remove]
        for extractor in {m for m in policy.modules() if isinstance(getattr(m, "preprocess", None), nn.Module)}:
            stage = extractor.preprocess
            self._undo += [stage.register_forward_pre_hook(self._stage_enter).remove,
                           stage.register_forward_hook(self._stage_exit).remove]

    def _install_gradient_hooks(self, policy: nn.Module) -> None:
        """Backward, timed without touching ``torch.Tensor.backward``: it starts when the first gradient reaches an
        output of a timed module (a hook put on the outputs of each training forward) and ends when the last
        parameter's gradient is accumulated (``register_post_accumulate_grad_hook``)."""
        for param in policy.parameters():
            if param.requires_grad:
                self._undo.append(param.register_post_accumulate_grad_hook(self._gradient_accumulated).remove)

    def _install_optimizer_hooks(self, policy: nn.Module) -> None:
        optimizers = list(dict.fromkeys(m.optimizer for m in policy.modules()
                                        if isinstance(getattr(m, "optimizer", None), torch.optim.Optimizer)))
        # training samples = steps of the optimizer that steps once per batch (the critic's where there is one)
        critic = getattr(getattr(policy, "critic", None), "optimizer", None)
        counted = critic if critic in optimizers else optimizers[0] if optimizers else None
        for opt in optimizers:
            self._undo += [opt.register_step_pre_hook(self._optimizer_enter).remove,
                           opt.register_step_post_hook(functools.partial(self._optimizer_exit,
                                                                         counted=opt is counted)).remove]

    def _install_graph_step_timers(self, model) -> None:
        """Time the replays of the training-step CUDA graphs the algorithm lists in ``cuda_graph_caches()``
        (rlvision.graphed_ppo.GraphedPPO) and count their rows as training samples (their eager calls, warm-up and
        capture, go through the hooks above)."""
        caches = model.cuda_graph_caches() if hasattr(model, "cuda_graph_caches") else []
        for graph_step in [c for c in caches if isinstance(c, CudaGraphCache)]:
            before = vars(graph_step).get("replay", _MISSING)
            replay = graph_step.replay

            def timed_replay(entry, inputs, replay=replay):
                if not self._active:
                    return replay(entry, inputs)
                self._counts["train_samples"] += int(inputs[0].shape[0])
                start = self._clock()
                try:
                    return replay(entry, inputs)
                finally:
                    self._window["train_graph"] += self._clock() - start

            graph_step.replay = timed_replay
            self._undo.append(lambda graph_step=graph_step, before=before: _restore(graph_step, "replay", before))

    # --- the hooks ---------------------------------------------------------------------------------------------
    def _forward_enter(self, module, args) -> None:
        if self._depth == 0:
            now = self._clock()
            self._close_backward()
            self._observe_phase(now)
            self._fwd_start = now
        self._depth += 1

    def _forward_exit(self, module, args, output) -> None:
        self._depth -= 1
        if self._depth == 0:
            key = "rollout_forward" if self._in_rollout else "train_forward"
            self._window[key] += self._clock() - self._fwd_start
            if not self._in_rollout and torch.is_grad_enabled():
                for tensor in _tensors(output):
                    if tensor.requires_grad:
                        tensor.register_hook(self._gradient_reached)

    def _stage_enter(self, module, args) -> None:
        self._stage_start = self._clock()

    def _stage_exit(self, module, args, output) -> None:
        self._window["preprocess_forward"] += self._clock() - self._stage_start

    def _gradient_reached(self, grad: torch.Tensor) -> None:
        if self._active and self._bwd_start is None:
            self._bwd_start = self._clock()

    def _gradient_accumulated(self, param: torch.Tensor) -> None:
        if self._active and self._bwd_start is not None:
            self._bwd_end = self._clock()

    def _close_backward(self) -> None:
        if self._bwd_start is not None and self._bwd_end is not None:
            self._window["backward"] += max(0.0, self._bwd_end - self._bwd_start)
        self._bwd_start = self._bwd_end = None

    def _optimizer_enter(self, optimizer, args, kwargs) -> None:
        self._close_backward()
        self._opt_start = self._clock()

    def _optimizer_exit(self, optimizer, args, kwargs, counted: bool) -> None:
        self._window["optimizer"] += self._clock() - self._opt_start
        if counted:
            self._counts["train_samples"] += self._train_batch

    # --- phase bookkeeping --------------------------------------------------------------------------------------
    def _observe_phase(self, now: float) -> None:
        """Without callback events: the policy's mode says the phase (SB3 switches it at each phase's start)."""
        if self._explicit:
            return
        rollout = not self.model.policy.training
        if rollout != self._in_rollout:
            self._close_phase(now)
            self._in_rollout = rollout
            if rollout:
                self._flush(force=False)

    def _close_phase(self, now: float) -> None:
        self._window["rollout" if self._in_rollout else "train"] += now - self._phase_start
        self._phase_start = now
        self._depth = 0

    def rollout_start(self) -> None:
        """A rollout starts (SB3's ``on_rollout_start``)."""
        self._close_backward()
        self._close_phase(self._clock())
        self._in_rollout = True
        self._flush(force=False)

    def rollout_end(self) -> None:
        """A rollout ends (SB3's ``on_rollout_end``)."""
        self._close_phase(self._clock())
        self._in_rollout = False

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
        logger = self._logger if self._logger is not None else getattr(self.model, "_logger", None)
        if logger is not None:
            for key in PHASES + ("preprocess_forward",):
                logger.record(f"rlvision/time/{key}_s", w[key])
                logger.record(f"rlvision/share/{key}", w[key] / wall)
            logger.record("rlvision/env_steps_per_s", counts["env_steps"] / max(w["env"], 1e-9))
            logger.record("rlvision/rollout_sps", counts["env_steps"] / max(w["rollout"], 1e-9))
            logger.record("rlvision/train_samples_per_s", counts["train_samples"] / max(w["train"], 1e-9))
            logger.record("rlvision/peak_memory_mb", peak_memory_mb())
        for key, value in w.items():
            self.totals[key] += value
        for key, value in counts.items():
            self.totals[key] += value
        self._window = dict.fromkeys(w, 0.0)
        self._window_counts = dict(self._counts)
        self._last_record = now

    def summary(self) -> dict[str, float]:
        """Totals over the session: seconds and share per phase, env/rollout/train rates, peak memory."""
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


def profile(model, min_record_s: float = 1.0) -> Profile:
    """``with profile(model) as p: model.learn(n)``, then ``p.summary()``: see :class:`Profile`."""
    return Profile(model, min_record_s)


_MISSING = object()


def _restore(obj: Any, name: str, before: Any) -> None:
    """Put back the instance attribute ``name`` as it was (absent, or another session's timer)."""
    if before is _MISSING:
        vars(obj).pop(name, None)
    else:
        setattr(obj, name, before)


def _tensors(output: Any):
    """The tensors in a module's output (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from _tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from _tensors(item)


class ThroughputProfiler(BaseCallback):
    """A :class:`Profile` session as an SB3 callback: started when training starts, phases from SB3's rollout
    events, records logged with SB3's logger (per cycle: a rollout and the training that follows it; for off-policy
    algorithms at most every ``min_record_s`` seconds), stopped when training ends. Works with on-policy (PPO, A2C)
    and off-policy (SAC, TD3, DQN) algorithms and any VecEnv. After training, :meth:`summary` gives the totals.

    SB3 does not call a callback when ``learn`` raises: then call :meth:`close` (nothing global was touched; the
    timers on the model's own env, modules and optimizers stay until then), or profile with :func:`profile`.

    ``closing_row``: when training ends, write what is pending (the last window, the last update's losses, which
    SB3 itself never writes) as one more row at the final step; False leaves it pending (``rlvision train``: its
    checkpoints carry pending values into the next segment, as SB3 would have written them).
    """

    def __init__(self, min_record_s: float = 1.0, verbose: int = 0, closing_row: bool = True):
        super().__init__(verbose)
        self.min_record_s = min_record_s
        self.closing_row = closing_row
        self.session: Profile | None = None

    @property
    def totals(self) -> dict[str, float]:
        return self.session.totals if self.session is not None else {}

    def _on_training_start(self) -> None:
        self.close()  # a session left open by a learn() that raised
        self.session = Profile(self.model, self.min_record_s, logger=self.logger).start(explicit_phases=True)

    def _on_rollout_start(self) -> None:
        self.session.rollout_start()

    def _on_rollout_end(self) -> None:
        self.session.rollout_end()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self.close()
        if self.closing_row:  # SB3 dumps before training, so the last window would be lost
            self.logger.record("time/total_timesteps", self.num_timesteps)  # the closing row says its step (CSV)
            self.logger.dump(self.num_timesteps)

    def close(self) -> None:
        """Stop the session and remove its timers (idempotent)."""
        if self.session is not None:
            self.session.stop()

    def summary(self) -> dict[str, float]:
        """Totals over the run: seconds and share per phase, env/rollout/train rates, peak memory."""
        return self.session.summary() if self.session is not None else {}
