import json
import os

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlvision.commands import compare as compare_backbones, train
from rlvision.profiler import PHASES


def scalar_tags(run_dir):
    tags = set()
    for root, _, files in os.walk(run_dir):
        if any(f.startswith("events.out.tfevents") for f in files):
            acc = EventAccumulator(root)
            acc.Reload()
            tags |= set(acc.Tags()["scalars"])
    return tags


def test_train_script_from_yaml(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(dict(env="SyntheticPixel-v0", env_kwargs={"size": 32, "grid": 3}, n_envs=2,
                                          algo="ppo", backbone="mobilenetv4_custom", steps=128, eval_episodes=3,
                                          checkpoint_every=64, hyperparams={"n_steps": 32, "batch_size": 32},
                                          log_dir=str(tmp_path / "runs"), run_name="r")))
    result = train.main([str(config), "--set", "seed=1", "--no-progress"])
    run = tmp_path / "runs" / "r"
    assert result["steps"] == 128 and result["episodes"] == 3 and 0 <= result["success_rate"] <= 1
    assert (run / "model.zip").exists() and json.loads((run / "results.json").read_text())["steps"] == 128
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 1
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000000000064", "step_000000000128"]
    assert "train/loss" in scalar_tags(run)


def test_train_script_rejects_unknown_keys(tmp_path, capsys):
    """A usage error: exit status 2 and a message that names the key, its closest known one and the file."""
    config = tmp_path / "c.yaml"
    config.write_text("backbone: nature_cnn\nlearning_rat: 0.1\n")
    with pytest.raises(SystemExit) as exit_info:
        train.main([str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "learning_rat" in err and "learning_rate" in err and str(config) in err


def test_compare_backbones_writes_table_and_runs(tmp_path):
    rows = compare_backbones.main(["--env", "SyntheticPixel-v0", "--env-kwargs", "{size: 36, grid: 3}",
                                   "--backbones", "nature_cnn,mobilenetv4_custom[norm=frozen_bn]", "--steps", "128",
                                   "--n-envs", "2",
                                   "--hyperparams", "{n_steps: 32, batch_size: 32}", "--eval-episodes", "2",
                                   "--measure-overhead", "--logdir", str(tmp_path), "--no-progress",
                                   "--same-process"])
    assert [r["backbone"] for r in rows] == ["nature_cnn", "mobilenetv4_custom[norm=frozen_bn]"]
    for row in rows:
        assert row["fps"] > 0 and row["params"] > 0 and row["mflops"] > 0 and 0 <= row["success_rate"] <= 1
        assert abs(sum(row[p] for p in PHASES) - 1) < 0.01
        assert row["fps_profiled"] > 0 and row["fps_unprofiled"] > 0 and "profiler_overhead" in row
        tags = scalar_tags(tmp_path / row["backbone"])
        assert {"train/loss", "rlvision/share/env", "rlvision/share/backward", "summary/fps"} <= tags
        events = [p for p in (tmp_path / row["backbone"]).iterdir() if p.name.startswith("events.out.tfevents")]
        assert len(events) == 1, events  # one event file per run: no empty second one (issue 33 item 8)
        acc = EventAccumulator(str(events[0]))
        acc.Reload()
        assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")  # TensorBoard's HPARAMS tab
    table = (tmp_path / "summary.md").read_text()
    assert "mobilenetv4_custom" in table and "Env alone" in table
    assert (tmp_path / "summary.csv").read_text().startswith("backbone,")
    assert (tmp_path / "phases.png").read_bytes()[:4] == b"\x89PNG"


def test_backbone_specs_take_options():
    assert compare_backbones.parse_backbones("nature_cnn, mobilenetv4_nano_rl[norm=gn,channels_last=false],x") == [
        ("nature_cnn", {}), ("mobilenetv4_nano_rl", {"norm": "gn", "channels_last": False}), ("x", {})]
    with pytest.raises(ValueError, match="key=value"):
        compare_backbones.parse_backbones("nature_cnn[fast]")


def test_bench_speed_prints_both_tables(tmp_path):
    from rlvision.commands import bench_speed
    bench_speed.main(["--backbones", "mobilenetv4_nano_rl", "--train-backbones", "nature_cnn", "--input", "4x48x48",
                      "--rollout-batch", "2", "--train-batch", "4", "--rounds", "2", "--train-rounds", "1",
                      "--no-compile", "--loop-backbones", "nature_cnn,mobilenetv4_nano_rl", "--sides", "40",
                      "--loop-rounds", "1", "--out", str(tmp_path)])
    text = (tmp_path / "speed.md").read_text()
    loop = text.split("RL loop")[1].split("Rollout forward")[0]
    assert "| nature_cnn | 40 |" in loop and "| mobilenetv4_nano_rl | 40 |" in loop and "per_1024_vs_first" in loop
    assert "| mobilenetv4_nano_rl |" in text and "| nature_cnn | channels_last |" in text
    rollout = text.split("Rollout forward")[1]
    header = [c.strip() for c in rollout.split("| backbone |")[1].split("\n")[0].split("|")]
    row = [c.strip() for c in rollout.split("| mobilenetv4_nano_rl |")[1].split("\n")[0].split("|")]
    assert row[header.index("same_actions")] == "1.000"


def test_peak_memory_column_is_per_run(tmp_path):
    """A memory-hungry run first (the seed nano at 84x84 keeps full-resolution activations) must not raise the
    next, light run's figure: each run has its own process. (Whether a light run in the same process would inherit
    the heavy one's memory depends on what the allocator keeps cached, so that is not asserted.)"""
    common = ["--env", "SyntheticPixel-v0", "--env-kwargs", "{size: 84, grid: 3}", "--steps", "32", "--n-envs", "2",
              "--backbones", "mobilenetv4_nano,nature_cnn", "--hyperparams", "{n_steps: 16, batch_size: 32}",
              "--no-progress"]
    rows = compare_backbones.main(common + ["--logdir", str(tmp_path / "isolated")])
    heavy, light = (r["peak_memory_mb"] for r in rows)
    assert light < heavy - 150, (heavy, light)


def test_compare_backbones_drqv2_sharing_and_learning_curves(tmp_path):
    rows = compare_backbones.main(["--env", "SyntheticPixelContinuous-v0", "--env-kwargs", "{size: 36, grid: 3}",
                                   "--algo", "sac", "--backbones", "nature_cnn[encoder_sharing=critic,augment_shift=2]",
                                   "--steps", "96", "--n-envs", "1", "--eval-episodes", "2", "--eval-every", "48",
                                   "--hyperparams", "{buffer_size: 200, learning_starts: 32, batch_size: 16}",
                                   "--logdir", str(tmp_path), "--no-progress", "--same-process"])
    assert rows[0]["backbone"] == "nature_cnn[encoder_sharing=critic,augment_shift=2]"
    import json

    curves = json.loads((tmp_path / "curves.json").read_text())
    assert [p["steps"] for p in curves[rows[0]["backbone"]]] == [0, 48, 96]
    with pytest.raises(SystemExit):
        compare_backbones.main(["--backbones", "nature_cnn[encoder_sharin=critic]", "--logdir", str(tmp_path)])


def test_compare_backbones_runs_another_algo_per_entry(tmp_path):
    """'name[algo=graphedppo]' next to 'name' under --algo ppo: the same encoder, two algorithms, one table."""
    rows = compare_backbones.main(["--env", "SyntheticPixel-v0", "--env-kwargs", "{size: 36, grid: 3}",
                                   "--backbones", "nature_cnn,nature_cnn[algo=graphedppo]", "--steps", "64",
                                   "--n-envs", "2", "--hyperparams", "{n_steps: 32, batch_size: 32}",
                                   "--logdir", str(tmp_path), "--no-progress", "--same-process"])
    assert [r["backbone"] for r in rows] == ["nature_cnn", "nature_cnn[algo=graphedppo]"]
    assert rows[0]["params"] == rows[1]["params"] and all(r["steps"] == 64 for r in rows)


@pytest.mark.parametrize("algo", ["dqn", "qrdqn", "td3"])
def test_compare_backbones_reports_the_encoder_of_q_and_actor_critic_policies(algo, tmp_path):
    env = "SyntheticPixelContinuous-v0" if algo == "td3" else "SyntheticPixel-v0"
    rows = compare_backbones.main(["--env", env, "--env-kwargs", "{size: 36, grid: 3}", "--algo", algo,
                                   "--backbones", "nature_cnn", "--steps", "48", "--n-envs", "1",
                                   "--hyperparams", "{buffer_size: 100, learning_starts: 16, batch_size: 8}",
                                   "--logdir", str(tmp_path), "--no-progress", "--same-process"])
    import numpy as np
    from gymnasium import spaces

    from rlvision import VisionExtractor

    one_encoder = VisionExtractor(spaces.Box(0, 255, (3, 36, 36), dtype=np.uint8), "nature_cnn")
    assert rows[0]["params"] == sum(p.numel() for p in one_encoder.parameters())  # one encoder, not the critic's too
    assert rows[0]["mflops"] > 0
