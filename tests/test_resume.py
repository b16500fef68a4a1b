"""Runs survive interruption: atomic checkpoints, --resume after SIGKILL, PPO and SAC continue from their saved
weights (SAC with its replay buffer), a corrupted latest checkpoint falls back to the one before."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlvision.agents.checkpoints import (check_checkpoint, latest_checkpoint, load_checkpoint,
                                         load_vecnormalize)
from rlvision.envs import make_env
from rlvision.commands import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def settings(tmp_path, algo="ppo", steps=256, **extra):
    env = "SyntheticPixelContinuous-v0" if algo == "sac" else "SyntheticPixel-v0"
    hp = ({"buffer_size": 1000, "learning_starts": 32, "batch_size": 16} if algo == "sac"
          else {"n_steps": 32, "batch_size": 32, "n_epochs": 1})
    values = dict(env=env, env_kwargs="{size: 36, grid: 3}", n_envs=2, algo=algo, backbone="nature_cnn",
                  steps=steps, checkpoint_every=64, eval_episodes=0, log_dir=str(tmp_path / "runs"), run_name="r",
                  hyperparams="{" + ", ".join(f"{k}: {v}" for k, v in hp.items()) + "}")
    values.update(extra)
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")] + ["--no-progress"]


def logged_steps(run_dir, tag="time/fps"):
    steps = set()
    for name in os.listdir(run_dir):
        if name.startswith("events.out.tfevents"):
            acc = EventAccumulator(os.path.join(run_dir, name))
            acc.Reload()
            if tag in acc.Tags()["scalars"]:
                steps |= {e.step for e in acc.Scalars(tag)}
    return sorted(steps)


def step_counts(run_dir, tag="time/fps"):
    """{step: how many TensorBoard points of ``tag`` it has} over the run's event files."""
    counts = {}
    for name in os.listdir(run_dir):
        if name.startswith("events.out.tfevents"):
            acc = EventAccumulator(os.path.join(run_dir, name))
            acc.Reload()
            for event in acc.Scalars(tag) if tag in acc.Tags()["scalars"] else []:
                counts[event.step] = counts.get(event.step, 0) + 1
    return counts


def test_killed_run_resumes_to_the_same_steps_without_a_gap(tmp_path, capsys):
    argv = settings(tmp_path, steps=100_000)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "experiments", "train.py"), *argv], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "runs" / "r" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(checkpoints.glob("step_*"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list(checkpoints.glob("step_*"))) >= 2, "no checkpoint within 120 s"
    assert not (tmp_path / "runs" / "r" / "model.zip").exists()  # killed: nothing saved at the end
    with pytest.raises(SystemExit) as exit_:
        train.main(settings(tmp_path, steps=512))  # no silent overwrite
    assert exit_.value.code == 2 and "already has checkpoints: pass --resume" in capsys.readouterr().err
    result = train.main(settings(tmp_path, steps=512) + ["--resume"])
    assert result["steps"] == 512 and result["resumed_from"] >= 128
    steps = logged_steps(tmp_path / "runs" / "r")
    assert steps[0] == 64 and steps[-1] == 512 and max(np.diff(steps)) <= 64  # every rollout logged, no gap


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_resume_continues_from_the_saved_weights(tmp_path, algo):
    train.main(settings(tmp_path, algo, steps=128))
    run = tmp_path / "runs" / "r"
    cfg = train.load_config(None, [a for a in settings(tmp_path, algo, steps=128)[1::2]])
    digest = train.run_digest(cfg)
    latest = latest_checkpoint(str(run / "checkpoints"), digest)
    assert latest.endswith("step_000000000128")
    env = make_env(cfg["env"], n_envs=2, env_kwargs=cfg["env_kwargs"])
    model = load_checkpoint(latest, algo, env)
    final = type(model).load(run / "model.zip", env=env)
    for a, b in zip(model.policy.state_dict().values(), final.policy.state_dict().values(), strict=False):
        assert torch.equal(a, b)  # the checkpoint at the last step holds the final weights
    assert model.num_timesteps == 128
    if algo == "sac":
        assert model.replay_buffer.size() == 64  # 128 steps over 2 envs
    optimizer = model.policy.optimizer if algo == "ppo" else model.actor.optimizer
    assert len(optimizer.state) > 0  # Adam's moments came back too
    result = train.main(settings(tmp_path, algo, steps=192) + ["--resume"])
    assert result["resumed_from"] == 128 and result["steps"] == 192
    env.close()


def test_corrupted_or_foreign_checkpoints_are_skipped(tmp_path, capsys):
    train.main(settings(tmp_path, steps=128))
    checkpoints = tmp_path / "runs" / "r" / "checkpoints"
    cfg = train.load_config(None, settings(tmp_path, steps=128)[1::2])
    digest = train.run_digest(cfg)
    newest = checkpoints / "step_000000000128"
    data = (newest / "model.zip").read_bytes()
    (newest / "model.zip").write_bytes(data[: len(data) // 2])  # a truncated write
    assert "model.zip is missing, truncated or changed" in check_checkpoint(str(newest), digest)
    assert latest_checkpoint(str(checkpoints), digest).endswith("step_000000000064")
    assert "Skipping checkpoint" in capsys.readouterr().out
    result = train.main(settings(tmp_path, steps=160) + ["--resume"])
    assert result["resumed_from"] == 64
    other = train.run_digest({**cfg, "backbone": "impala_cnn"})
    assert "another config" in check_checkpoint(str(checkpoints / "step_000000000064"), other)
    with pytest.raises(SystemExit) as exit_:
        train.main(settings(tmp_path, steps=256, backbone="impala_cnn") + ["--resume"])
    assert exit_.value.code == 2 and "rlvision train: error: --resume: no complete checkpoint of this config" in \
        capsys.readouterr().err


def test_vecnormalize_statistics_come_back(tmp_path):
    from stable_baselines3.common.vec_env import VecNormalize

    train.main(settings(tmp_path, steps=128, normalize_reward=True))
    latest = tmp_path / "runs" / "r" / "checkpoints" / "step_000000000128"
    assert (latest / "vecnormalize.npz").exists() and not (latest / "vecnormalize.pkl").exists()  # no pickle
    saved = load_vecnormalize(str(latest / "vecnormalize.npz"), make_env("SyntheticPixel-v0", n_envs=2,
                                                                         env_kwargs=dict(size=36, grid=3)))
    env = VecNormalize(make_env("SyntheticPixel-v0", n_envs=2, env_kwargs=dict(size=36, grid=3)), norm_obs=False)
    model = load_checkpoint(str(latest), "ppo", env)
    restored = model.get_vec_normalize_env()
    assert restored.ret_rms.count == saved.ret_rms.count > 100 and restored.ret_rms.var == pytest.approx(
        saved.ret_rms.var)
    result = train.main(settings(tmp_path, steps=192, normalize_reward=True) + ["--resume"])
    assert result["resumed_from"] == 128


def test_resume_twice_keeps_every_segment_and_a_finished_run_is_left_alone(tmp_path, capsys):
    """Two resumes from the same checkpoint keep both earlier CSV segments (nothing overwritten); --resume on a
    finished run says so and changes no file."""
    run_dir = tmp_path / "runs" / "r"
    train.main(settings(tmp_path, steps=128))
    (run_dir / "results.json").unlink()  # as if the run had been killed after its last checkpoint (step 128)
    train.main(settings(tmp_path, steps=192) + ["--resume"])
    (run_dir / "results.json").unlink()  # killed again, before the step-192 checkpoint was complete
    import shutil

    shutil.rmtree(next((run_dir / "checkpoints").glob("step_*192")))
    train.main(settings(tmp_path, steps=192) + ["--resume"])  # from step 128 again
    segments = sorted(p.name for p in run_dir.glob("progress-until-*.csv"))
    assert segments == ["progress-until-128-2.csv", "progress-until-128.csv"]
    assert all((run_dir / name).stat().st_size > 0 for name in segments)
    files = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    result = train.main(settings(tmp_path, steps=192) + ["--resume"])
    assert "already finished at 192 steps" in capsys.readouterr().out and result["steps"] == 192
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == files


def test_tensorboard_points_past_the_checkpoint_are_dropped(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from rlvision.agents.checkpoints import truncate_tensorboard

    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(1, 11):
            writer.add_scalar("train/loss", float(step), step)
    assert truncate_tensorboard(str(tmp_path), 5) == 5
    assert logged_steps(tmp_path, "train/loss") == [1, 2, 3, 4, 5]
    assert truncate_tensorboard(str(tmp_path), 5) == 0  # nothing left to drop
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_a_resume_logs_each_step_once(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    train.main(settings(tmp_path, steps=192))
    (run_dir / "results.json").unlink()  # as if killed after the step-192 update, before its checkpoint completed
    import shutil

    shutil.rmtree(next((run_dir / "checkpoints").glob("step_*192")))
    train.main(settings(tmp_path, steps=256) + ["--resume"])  # from step 128: 192 is logged again
    counts = step_counts(run_dir)
    assert sorted(counts) == [64, 128, 192, 256] and set(counts.values()) == {1}, counts


def csv_rows(*paths):
    """{total_timesteps: {key: value}} over the CSV files' rollout rows (SB3's, with time/iterations; the profiler's
    closing row holds the last update's losses and the phase shares at the final step), empty cells left out."""
    import csv

    rows = {}
    for path in paths:
        with open(path) as f:
            for row in csv.DictReader(f):
                if row["time/iterations"]:
                    rows[int(row["time/total_timesteps"])] = {k: v for k, v in row.items() if v != ""}
    return rows


def test_a_resumed_run_logs_what_an_uninterrupted_one_logs(tmp_path):
    """Counters go on (time/iterations, time/time_elapsed) and the losses of the update before the checkpoint are
    written with the next row, as in a run that was never stopped."""
    train.main(settings(tmp_path / "full", steps=192))
    full = csv_rows(tmp_path / "full" / "runs" / "r" / "progress.csv")
    run_dir = tmp_path / "cut" / "runs" / "r"
    train.main(settings(tmp_path / "cut", steps=128))
    (run_dir / "results.json").unlink()
    train.main(settings(tmp_path / "cut", steps=192) + ["--resume"])
    cut = csv_rows(run_dir / "progress-until-128.csv", run_dir / "progress.csv")
    assert sorted(cut) == sorted(full) == [64, 128, 192]
    for step in full:
        assert cut[step]["time/iterations"] == full[step]["time/iterations"] == str(step // 64)
        assert {k for k in cut[step] if k.startswith("train/")} == {k for k in full[step] if k.startswith("train/")}
    assert "train/value_loss" in cut[192]
    assert int(cut[192]["time/time_elapsed"]) >= int(cut[128]["time/time_elapsed"])


def test_fault_injection_kills_during_training_checkpoint_writes_and_evaluation(tmp_path):
    """experiments/fault_resume.py (its long form runs 20 random schedules): kills during a checkpoint write, during
    training and during the final evaluation, each followed by --resume; CSV and TensorBoard end as an uninterrupted
    run's, each step once, and no temporary checkpoint folder is left behind."""
    out = tmp_path / "faults.json"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "fault_resume.py"),
                             "--kills", "checkpoint,time;evaluation,checkpoint", "--out", str(out)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = __import__("json").loads(out.read_text())
    assert [r["problems"] for r in runs] == [[], []]
    assert "checkpoint write" in runs[0]["landed"] and runs[1]["landed"][0] == "evaluation", runs


def test_an_attempt_that_died_before_its_first_checkpoint_is_not_logged_twice(tmp_path):
    import shutil

    run_dir = tmp_path / "runs" / "r"
    train.main(settings(tmp_path, steps=128))
    for name in ("checkpoints", "results.json", "model.zip"):  # as if killed before any checkpoint was complete
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    train.main(settings(tmp_path, steps=128))  # starts afresh in the same folder
    counts = step_counts(run_dir)
    assert counts == {64: 1, 128: 1}
    assert (run_dir / "progress-until-0.csv").stat().st_size > 0  # the first attempt's rows are kept


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_preempted_run_checkpoints_exits_and_resumes_without_a_gap(tmp_path, signum, capsys):
    """Issue 34 item 2: SIGTERM (a scheduler's preemption) or Ctrl-C during training: a checkpoint at the next rollout
    start, exit status 128 + the signal, the command that resumes it; the resumed run logs each step once."""
    import threading

    checkpoints = tmp_path / "runs" / "r" / "checkpoints"
    done = threading.Event()  # the run ended: no signal after that (a stray SIGINT would stop pytest itself)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    def preempt():
        deadline = time.time() + 120
        while time.time() < deadline and not done.is_set() and not list(checkpoints.glob("step_*")):
            time.sleep(0.05)
        if not done.is_set():
            os.kill(os.getpid(), signum)

    thread = threading.Thread(target=preempt, daemon=True)
    thread.start()
    try:
        with pytest.raises(SystemExit) as exit_:
            train.main(settings(tmp_path, steps=100_000))
    finally:
        done.set()
        thread.join()
    err = capsys.readouterr().err
    assert exit_.value.code == 128 + signum and signal.Signals(signum).name in err
    assert "--resume" in err and "rlvision train" in err
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # handlers put back
    stopped = max(int(p.name.split("_")[1]) for p in checkpoints.glob("step_*"))
    assert stopped % 64 == 0 and not list(checkpoints.glob(".tmp-*"))  # at a rollout boundary, written whole
    assert not (tmp_path / "runs" / "r" / "results.json").exists()
    result = train.main(settings(tmp_path, steps=stopped + 64) + ["--resume"])
    assert result["resumed_from"] == stopped and result["steps"] == stopped + 64
    assert set(step_counts(tmp_path / "runs" / "r").values()) == {1}  # every step logged once
