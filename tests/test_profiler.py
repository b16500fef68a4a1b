import csv
import mmap
import time

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import NatureCNN
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure

from rlvision.agents import make_agent
from rlvision.envs import make_env
from rlvision.benchmark import benchmark_backbones
from rlvision.profiler import PHASES, ThroughputProfiler, peak_memory_mb, profile, reset_peak_memory

SMALL = dict(size=36, grid=3)


def run(algo, profiler=None, steps=256, seed=0, logdir=None, **hp):
    env_id = "SyntheticPixelContinuous-v0" if algo == "sac" else "SyntheticPixel-v0"
    env = make_env(env_id, n_envs=2, seed=seed, env_kwargs=SMALL)
    model = make_agent(algo, env, backbone="mobilenetv4_custom", seed=seed, **hp)
    if logdir:
        model.set_logger(configure(str(logdir), ["tensorboard"]))
    start = time.perf_counter()
    model.learn(steps, callback=profiler)
    return model, time.perf_counter() - start


def check_phases(summary, wall):
    measured = sum(summary[f"{p}_s"] for p in PHASES if p != "other")
    # the profiler's clock runs from training start to end, inside learn(): never longer than learn, and learn's set-up
    # (env reset, logger) is a small part of it (a ratio: a busy machine slows both alike)
    assert 0.5 * wall < summary["wall_s"] <= wall, (summary["wall_s"], wall)
    assert measured <= summary["wall_s"] + 1e-6  # no phase counted twice
    assert abs(sum(summary[f"{p}_share"] for p in PHASES) - 1) < 1e-6
    for phase in ("env", "rollout_forward", "train_forward", "backward", "optimizer"):
        assert summary[f"{phase}_s"] > 0, phase


def test_ppo_phases_add_up_to_wall_time():
    prof = ThroughputProfiler(min_record_s=0)
    model, wall = run("ppo", prof, steps=256, n_steps=32, batch_size=32, n_epochs=2)
    s = prof.summary()
    check_phases(s, wall)
    assert prof.totals["env_steps"] == 256
    assert prof.totals["train_samples"] == 2 * 256  # every rollout sample, once per epoch
    assert s["rollout_sps"] > 0 and s["train_samples_per_s"] > 0 and s["peak_memory_mb"] > 0


def test_sac_phases_add_up_to_wall_time():
    prof = ThroughputProfiler()
    model, wall = run("sac", prof, steps=200, buffer_size=500, learning_starts=50, batch_size=16)
    check_phases(prof.summary(), wall)
    assert prof.totals["env_steps"] == 200
    assert model._n_updates == 75  # 2 envs: one gradient step per 2 env steps once past learning_starts
    assert prof.totals["train_samples"] == 16 * 75


def test_profiler_does_not_change_training():
    plain, _ = run("ppo", None, steps=128, seed=3, n_steps=32, batch_size=32, n_epochs=2)
    profiled, _ = run("ppo", ThroughputProfiler(), steps=128, seed=3, n_steps=32, batch_size=32, n_epochs=2)
    a, b = plain.policy.state_dict(), profiled.policy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_timers_are_removed_after_training():
    backward = torch.Tensor.backward
    model, _ = run("ppo", ThroughputProfiler(), steps=64, n_steps=32, batch_size=32, n_epochs=1)
    assert torch.Tensor.backward is backward
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.policy.modules())
    assert "step_wait" not in vars(model.get_env()) and "step" not in vars(model.policy.optimizer)


def test_tensorboard_tags(tmp_path):
    run("ppo", ThroughputProfiler(min_record_s=0), steps=128, logdir=tmp_path, n_steps=32, batch_size=32,
        n_epochs=1)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {f"rlvision/share/{p}" for p in PHASES} | {f"rlvision/time/{p}_s" for p in PHASES}
    expected |= {"rlvision/env_steps_per_s", "rlvision/rollout_sps", "rlvision/train_samples_per_s",
                 "rlvision/peak_memory_mb", "time/fps"}
    assert expected <= tags, expected - tags


def test_benchmark_rows_have_every_field(tmp_path):
    names = ["nature_cnn", "mobilenetv4_custom"]
    rows = benchmark_backbones(names, input_shape=(4, 40, 40), batch_sizes=(2, 4), threads=1, repeats=2,
                               warmup=1, csv_path=str(tmp_path / "b.csv"), tensorboard_dir=str(tmp_path / "tb"),
                               progress=False)
    fields = {"backbone", "params", "mflops", "fwd_ms", "fwd_ms_iqr", "fwd_bwd_ms", "fwd_bwd_ms_iqr",
              "train_memory_mb", "rollout_batch", "train_batch", "input_shape", "threads"}
    assert [r["backbone"] for r in rows] == names
    for row in rows:
        assert set(row) == fields and row["params"] > 0 and row["mflops"] > 0 and row["fwd_ms"] > 0
        assert row["fwd_bwd_ms"] > 0 and row["train_memory_mb"] > 0 and row["threads"] == 1
    sb3 = NatureCNN(spaces.Box(0, 255, (4, 40, 40), dtype=np.uint8), features_dim=256)
    assert rows[0]["params"] == sum(p.numel() for p in sb3.parameters())  # extractor = SB3's NatureCNN exactly
    with open(tmp_path / "b.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_peak_memory_is_per_run():
    """The peak a run reports starts at the memory resident when it starts, not at the process's peak before it.
    The ballast is an anonymous mmap: closing it unmaps it, so its pages leave the process whatever the allocator
    keeps cached (memory freed by numpy or torch may stay resident)."""
    ballast = mmap.mmap(-1, 400 << 20)
    ballast.write(b"\1" * len(ballast))  # resident: ~400 MB above everything this process holds now
    with_ballast = peak_memory_mb()
    ballast.close()
    if not reset_peak_memory():
        pytest.skip("this kernel does not let a process reset its peak RSS (/proc/self/clear_refs)")
    prof = ThroughputProfiler()
    run("ppo", prof, steps=64, n_steps=32, batch_size=32, n_epochs=1)
    assert prof.summary()["peak_memory_mb"] < with_ballast - 200


def test_works_with_subproc_vec_env():
    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=SMALL, vec_env_cls="subproc")
    model = make_agent("ppo", env, backbone="mobilenetv4_custom", seed=0, n_steps=32, batch_size=32, n_epochs=1)
    prof = ThroughputProfiler(min_record_s=0)
    model.learn(128, callback=prof)
    assert prof.totals["env_steps"] == 128 and prof.summary()["env_s"] > 0
    env.close()


class BoomError(Exception):
    pass


class RaiseAt(BaseCallback):
    """Raises inside learn() at env step ``at`` (a KeyboardInterrupt or an error in a user's callback)."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.at:
            raise BoomError
        return True


def untouched(model):
    """Nothing of a profiler is left: no global patch, no timer on the env, modules, parameters or optimizer."""
    env, opt = model.get_env(), model.policy.optimizer
    return (torch.Tensor.backward is BACKWARD and "step_wait" not in vars(env) and "step_async" not in vars(env)
            and not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
            and not any(m._forward_hooks or m._forward_pre_hooks for m in model.policy.modules())
            and not any(p._post_accumulate_grad_hooks for p in model.policy.parameters()))


BACKWARD = torch.Tensor.backward


def small_ppo(seed=0):
    env = make_env("SyntheticPixel-v0", n_envs=2, seed=seed, env_kwargs=SMALL)
    return make_agent("ppo", env, backbone="mobilenetv4_custom", seed=seed, n_steps=32, batch_size=32, n_epochs=1)


def test_profile_context_measures_a_run_and_leaves_nothing_behind():
    model = small_ppo()
    start = time.perf_counter()
    with profile(model, min_record_s=0) as session:
        model.learn(128)
    wall = time.perf_counter() - start
    check_phases(session.summary(), wall)
    assert session.totals["env_steps"] == 128 and session.totals["train_samples"] == 128
    assert untouched(model)


def test_learn_raising_inside_a_profiled_run_leaves_backward_env_and_optimizer_as_they_were():
    model = small_ppo()
    with pytest.raises(BoomError):
        with profile(model):
            model.learn(256, callback=RaiseAt(100))
    assert untouched(model)
    callback = ThroughputProfiler()  # the callback form: SB3 skips _on_training_end, close() undoes it
    with pytest.raises(BoomError):
        model.learn(256, callback=[callback, RaiseAt(100)])
    assert torch.Tensor.backward is BACKWARD  # nothing global, even before close()
    callback.close()
    assert untouched(model)
    model.learn(64)  # and training goes on as before


def test_nested_and_sequential_sessions_count_only_their_own_steps():
    model = small_ppo()
    with profile(model) as outer:
        model.learn(64)
        with profile(model) as inner:
            model.learn(64, reset_num_timesteps=False)
        model.learn(64, reset_num_timesteps=False)
    assert outer.totals["env_steps"] == 192 and inner.totals["env_steps"] == 64
    with profile(model) as again:
        model.learn(64)
    assert again.totals["env_steps"] == 64 and untouched(model)
