"""Issue 34 item 3: faults that are not kills get a message naming the fix, keep the last good checkpoint and leave
no half-written file."""

import os
import subprocess
import sys

import pytest
import torch

from rlvision.commands import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def settings(tmp_path, steps=128, **extra):
    values = dict(env="SyntheticPixel-v0", env_kwargs="{size: 36, grid: 3}", n_envs=2, backbone="nature_cnn",
                  steps=steps, checkpoint_every=32, eval_episodes=0, log_dir=str(tmp_path / "runs"), run_name="r",
                  hyperparams="{n_steps: 16, batch_size: 32, n_epochs: 1}")
    values.update(extra)
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")] + ["--no-progress"]


def test_a_nan_stops_at_the_update_that_made_it_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch, capsys):
    from stable_baselines3 import PPO

    from rlvision.model_files import load

    original, calls = PPO.train, []

    def train_then_break(self):  # the second update leaves a NaN in the encoder's first conv
        original(self)
        calls.append(self.num_timesteps)
        if len(calls) == 2:
            with torch.no_grad():
                next(self.policy.parameters()).fill_(float("nan"))

    monkeypatch.setattr(PPO, "train", train_then_break)
    with pytest.raises(SystemExit) as exit_:
        train.main(settings(tmp_path))
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "NaN or inf" in err and "update 2" in err and "by step 64" in err
    assert "last good checkpoint is" in err and "--resume" in err
    checkpoints = sorted((tmp_path / "runs" / "r" / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step_000000000032"]  # none of the broken state
    kept = load(str(checkpoints[0] / "model.zip"), device="cpu")
    assert all(bool(torch.isfinite(p).all()) for p in kept.policy.parameters())
    assert not (tmp_path / "runs" / "r" / "model.zip").exists()


def test_a_log_dir_that_cannot_be_written_is_named_before_anything_starts(tmp_path, capsys):
    """A file where the folder would go (as root, a read-only mode bit would not stop the writes)."""
    (tmp_path / "blocked").write_text("a file, not a folder")
    with pytest.raises(SystemExit) as exit_:
        train.main(settings(tmp_path, log_dir=str(tmp_path / "blocked" / "runs")))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "cannot write the run folder" in err and "--set log_dir=" in err


def test_a_full_disk_during_a_checkpoint_keeps_the_last_good_one_and_leaves_no_partial_file(tmp_path):
    """Writes larger than a file-size limit fail (EFBIG), as they would on a full disk: the resumed run stops at its
    first checkpoint with the message, the earlier checkpoint stays whole, no temporary folder is left."""
    train.main(settings(tmp_path, steps=32))  # a good checkpoint at step 32
    run = tmp_path / "runs" / "r"
    size = (run / "checkpoints" / "step_000000000032" / "model.zip").stat().st_size
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size // 2}, {size // 2})); "
              "from rlvision.commands import train; train.main(sys.argv[1:])")
    result = subprocess.run([sys.executable, "-c", script, *settings(tmp_path, steps=128), "--resume"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "could not write the checkpoint at step 64" in result.stderr and "File too large" in result.stderr
    assert "last good checkpoint is" in result.stderr and "step_000000000032" in result.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000000000032"]  # no .tmp-* left
    from rlvision.agents.checkpoints import check_checkpoint, checkpoint_meta

    assert check_checkpoint(str(run / "checkpoints" / "step_000000000032"),
                            checkpoint_meta(str(run / "checkpoints" / "step_000000000032"))["config_hash"]) is None


def test_check_nan_wraps_the_env_in_vec_check_nan(tmp_path, monkeypatch):
    from stable_baselines3.common.vec_env import VecCheckNan

    seen = []
    original = VecCheckNan.__init__

    def record(self, venv, *args, **kwargs):
        seen.append(kwargs.get("raise_exception"))
        original(self, venv, *args, **kwargs)

    monkeypatch.setattr(VecCheckNan, "__init__", record)
    result = train.main(settings(tmp_path, steps=32, check_nan="true"))
    assert seen == [True] and result["steps"] == 32


def test_a_short_soak_run_does_not_grow(tmp_path):
    """Issue 34 item 4, the suite's form of experiments/soak.py: a few thousand steps of the real command with
    checkpoints and TensorBoard, sampled every half second: after warm-up RSS grows <= 5%, descriptors stay flat, at
    most 3 checkpoints are kept and TensorBoard grows by a bounded size per logged row. (FPS over a run this short is
    not timed: the long runs in BENCHMARKS.md are.) Sized so that a fast CPU (a Xeon with AMX ran 6,000 steps in 5 s)
    still gives enough samples after the checkpoint rotation fills."""
    import json

    result = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "soak.py"), "--steps", "10000",
                             "--every", "0.5", "--checkpoint-every", "1000", "--skip", "fps,tensorboard",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "soak.json").read_text())
    verdicts, samples = report["verdicts"], report["samples"]
    assert verdicts["rss"]["ok"] and verdicts["descriptors"]["ok"] and verdicts["checkpoints"]["ok"]
    rows = [s for s in samples if s["logged_rows"]]
    assert max(s["tensorboard_kb"] / s["logged_rows"] for s in rows) < 4.0  # KiB per logged row: no growing entry
