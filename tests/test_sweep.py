"""rlvision.stats on known inputs; rlvision sweep: a two-trial Ray sweep, and resuming without re-running."""

import os

import numpy as np
import pytest

from rlvision import stats
from rlvision.commands import sweep


def test_bootstrap_ci_on_known_inputs():
    assert stats.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert all(np.isnan(stats.bootstrap_ci([1.0])))
    low, high = stats.bootstrap_ci(np.arange(100.0))  # normal approximation: 49.5 +- 1.96 * 28.87 / 10
    assert low == pytest.approx(49.5 - 5.66, abs=0.8) and high == pytest.approx(49.5 + 5.66, abs=0.8)
    low, high = stats.bootstrap_ci([0.0, 1.0])
    assert 0.0 <= low < 0.5 < high <= 1.0


def test_interquartile_mean_and_first_crossing():
    assert stats.interquartile_mean([1, 2, 3, 4]) == 2.5  # drops one run at each end
    assert stats.interquartile_mean([0, 0, 1, 1, 1, 1, 100, 100]) == 1.0
    assert np.isnan(stats.interquartile_mean([1, 2, 3]))
    curve = [dict(steps=0, seconds=0.0, eval_return=0.1), dict(steps=10, seconds=2.0, eval_return=0.6),
             dict(steps=20, seconds=4.0, eval_return=0.9)]
    assert stats.first_crossing(curve, 0.5) == 10 and stats.first_crossing(curve, 0.5, "seconds") == 2.0
    assert stats.first_crossing(curve, 1.0) is None


def test_summary_rows_per_backbone_and_env():
    def row(backbone, seed, final):
        return dict(env="E", algo="ppo", backbone=backbone, seed=seed, fps=100.0 + seed, params=10, mflops=1.0,
                    curve=[dict(steps=0, seconds=0.0, eval_return=0.0), dict(steps=8, seconds=1.0, eval_return=final)])

    rows = [row("a", s, f) for s, f in enumerate([1.0, 2.0, 3.0, 4.0])] + [row("b", 0, 0.2)]
    rows[0]["precision"], rows[1]["precision"] = "auto->bf16", "auto->fp32"  # seeds run on two machines
    table = {r["backbone"]: r for r in stats.summarize(rows, {"E": 2.5})}
    assert table["a"]["precision"] == "auto->bf16/auto->fp32" and "precision" not in table["b"]
    assert table["a"]["seeds"] == 4 and table["a"]["final_return"] == 2.5 and table["a"]["iqm"] == 2.5
    assert table["a"]["ci95_low"] < 2.5 < table["a"]["ci95_high"]
    assert table["a"]["reached"] == "2/4" and table["a"]["steps_to_threshold"] == 8
    assert table["b"]["reached"] == "0/1" and table["b"]["steps_to_threshold"] is None
    assert np.isnan(table["b"]["ci95_low"])  # one seed: no interval
    assert "| a |" in stats.markdown_table(list(table.values()))


def test_two_trial_sweep_writes_the_table_and_plots_and_resumes_without_rerunning(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "sweep"
    argv = ["--envs", "SyntheticPixel-v0", "--backbones", "nature_cnn", "--seeds", "0,1", "--steps", "256",
            "--n-envs", "2", "--eval-every", "128", "--eval-episodes", "2", "--env-kwargs", "{size: 36, grid: 3}",
            "--hyperparams", "{n_steps: 32, batch_size: 32, n_epochs: 1}", "--out", str(out)]
    table = sweep.main(argv)
    assert len(table) == 1 and table[0]["seeds"] == 2
    for name in ("summary.md", "summary.csv", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert "nature_cnn" in (out / "summary.md").read_text()
    trials = sorted((out / "trials").iterdir())
    assert len(trials) == 2
    assert len(trials[0].read_text()) and any((out / "tb").rglob("events.out.tfevents.*"))
    # an interrupted sweep: one trial finished, the other did not
    kept, lost = trials
    kept_mtime = kept.stat().st_mtime_ns
    lost.unlink()
    reported = sweep.main(argv + ["--report"])  # trains nothing: the summary of what is finished
    assert reported[0]["seeds"] == 1 and not lost.exists() and kept.stat().st_mtime_ns == kept_mtime
    assert "nature_cnn" in (out / "summary.md").read_text()
    with pytest.raises(SystemExit):  # nothing to report on
        sweep.main([a if a != str(out) else str(tmp_path / "none") for a in argv] + ["--report"])
    table = sweep.main(argv)
    assert table[0]["seeds"] == 2 and lost.exists()
    assert kept.stat().st_mtime_ns == kept_mtime, "a finished trial ran again"
    with pytest.raises(SystemExit):  # another grid in the same folder is refused
        sweep.main([a if a != "256" else "512" for a in argv])


def test_bad_grid_fails_before_ray_starts(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--envs", "SyntheticPixel-v0", "--backbones", "nature_cnm", "--out", str(tmp_path)])
    assert "nature_cnn" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.main(["--backbones", "nature_cnn", "--out", str(tmp_path)])
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("config", sorted(
    f for f in os.listdir(os.path.join(os.path.dirname(__file__), "..", "experiments", "configs"))
    if f.startswith("sweep_")))
def test_every_shipped_sweep_config_resolves_and_passes_the_checks(config):
    """`make bench-learning` runs these: a misspelt key, backbone option or schedule string fails here, not an hour
    into a sweep."""
    import argparse

    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs", config)
    args = argparse.Namespace(config=path)
    trials, _ = sweep.resolve(args)
    assert trials and all(t["steps"] >= 1 for t in trials)
    sweep.check(trials, argparse.ArgumentParser())  # parser.error would raise SystemExit


def test_envs_and_backbones_on_top_of_a_config_run_a_part_of_its_grid_unchanged():
    """--envs over a config with per-env settings keeps them: the part's trials are the full grid's records (same
    steps, threshold, levels), so their results count in the full sweep; an env the config does not name gets the
    sweep-wide settings."""
    import argparse

    path = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs", "sweep_procgen_cpu.yaml")
    full, _ = sweep.resolve(argparse.Namespace(config=path))
    part, _ = sweep.resolve(argparse.Namespace(config=path, envs="procgen/bigfish",
                                               backbones="nature_cnn,mobilenetv4_cpu_rl"))
    expected = [t for t in full if t["env"] == "procgen/bigfish" and t["backbone"][0] in ("nature_cnn",
                                                                                         "mobilenetv4_cpu_rl")]
    assert part == expected and len(part) == 6 and all(t["steps"] == 500000 and t["threshold"] == 4.9 for t in part)
    other, _ = sweep.resolve(argparse.Namespace(config=path, envs="procgen/coinrun,procgen/maze"))
    maze = [t for t in other if t["env"] == "procgen/maze"]
    assert maze and all(t["steps"] == sweep.SETTINGS["steps"] and t["threshold"] is None for t in maze)
    assert [t for t in other if t["env"] == "procgen/coinrun"] == [t for t in full if t["env"] == "procgen/coinrun"]


def test_a_malformed_schedule_string_fails_before_ray_starts(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--envs", "SyntheticPixel-v0", "--backbones", "nature_cnn", "--hyperparams",
                    "{learning_rate: lin_fast}", "--out", str(tmp_path)])
    assert "learning_rate='lin_fast'" in capsys.readouterr().err and not os.listdir(tmp_path)


def test_reach_ranking_is_the_default_encoder_rule():
    """Most runs reaching the threshold over every env wins; ties go to the fewer median seconds; a step-0 score
    (an untrained policy's luck) does not count."""
    def row(env, backbone, returns, seconds):
        curve = [dict(steps=i * 10, seconds=s, eval_return=r)
                 for i, (r, s) in enumerate(zip(returns, seconds, strict=True))]
        return dict(env=env, algo="ppo", backbone=backbone, curve=curve)

    rows = [row("A", "slow", [0, 0.6], [0, 20]), row("B", "slow", [0, 0.6], [0, 30]),
            row("A", "fast", [0, 0.6], [0, 5]), row("B", "fast", [0.9, 0.1], [0, 4]),  # B: only at step 0
            row("A", "tied", [0, 0.7], [0, 10]), row("B", "tied", [0, 0.8], [0, 12])]
    ranking = stats.reach_ranking(rows, {"A": 0.5, "B": 0.5})
    assert [(r["backbone"], r["reached"], r["median_seconds"]) for r in ranking] == [
        ("tied", 2, 11.0), ("slow", 2, 25.0), ("fast", 1, 5.0)]
    assert ranking[0]["A"] == "1/1, 10 s" and ranking[2]["B"] == "0/1"


def test_stratified_bootstrap_resamples_within_each_env():
    # every resample keeps one run of each env here, so the pooled mean cannot move; a plain bootstrap of the 4
    # runs together would give resamples of all zeros or all ones
    assert stats.stratified_bootstrap([[0.0, 0.0], [1.0, 1.0]], lambda s: s.mean(axis=1)) == (0.5, 0.5)
    low, high = stats.stratified_bootstrap([[0.0, 1.0], [5.0, 5.0]], lambda s: s.mean(axis=1))
    assert low == pytest.approx(2.5) and high == pytest.approx(3.0)  # (0+0+5+5)/4 .. (1+1+5+5)/4: a quarter each
    assert all(np.isnan(stats.stratified_bootstrap([[1.0], [2.0]], lambda s: s.mean(axis=1))))


def _normalised_row(env, backbone, seed, train, test):
    return dict(env=env, algo="ppo", backbone=backbone, seed=seed,
                curve=[dict(steps=0, eval_return_normalized=0.0, test_return_normalized=0.0),
                       dict(steps=8, eval_return_normalized=train, test_return_normalized=test)])


def test_pooled_over_envs_aggregates_normalised_returns_per_backbone():
    rows = ([_normalised_row("A", "x", s, 0.2, v) for s, v in enumerate([0.1, 0.2, 0.3])]
            + [_normalised_row("B", "x", s, 0.6, 0.5) for s in range(3)]
            + [_normalised_row("A", "y", 0, 0.9, 0.9)]  # no runs on B: not comparable, no aggregate
            + [_normalised_row("A", "z", s, 0.0, 0.0) for s in range(2)] + [_normalised_row("B", "z", 0, 0.0, 0.0)])
    table = stats.pooled_over_envs(rows)
    assert [r["backbone"] for r in table] == ["x", "z", "y"]  # by pooled test return; the incomplete one last
    x = table[0]
    assert x["envs"] == "2/2" and x["runs"] == 6
    assert x["test_normalized"] == 0.35 and x["train_normalized"] == 0.4
    assert x["test_normalized_iqm"] == 0.375  # [0.1, 0.2, 0.3, 0.5, 0.5, 0.5] without one run at each end
    low, high = map(float, x["test_normalized_ci95"].split("-"))
    assert 0.3 <= low < 0.35 < high <= 0.4  # B's runs are all 0.5: only A's resamples move the mean
    assert x["train_normalized_ci95"] == "0.4000-0.4000"
    assert table[1]["runs"] == 3 and "test_normalized_iqm" not in table[1]  # IQM needs >= 4 runs
    y = table[2]
    assert y["envs"] == "1/2" and y["missing"] == "B" and "test_normalized" not in y
    assert stats.pooled_over_envs([r for r in rows if r["env"] == "A"]) == []  # one env: nothing to pool
    assert stats.pooled_over_envs([dict(env=e, algo="ppo", backbone="x", curve=[dict(steps=0, eval_return=1.0)])
                                   for e in "AB"]) == []  # no normalisation (not Procgen): nothing to pool


def test_sweep_report_writes_the_pooled_table_over_envs(tmp_path, monkeypatch):
    """--report over finished trials of two envs with normalised returns writes pooled.md / pooled.csv."""
    import json

    out = tmp_path / "sweep"
    argv = ["--envs", "SyntheticPixel-v0,SyntheticPixelContinuous-v0", "--backbones", "nature_cnn",
            "--seeds", "0,1", "--steps", "256", "--out", str(out)]
    monkeypatch.setattr(sweep, "run_sweep", lambda *args: [])  # writes sweep.json, trains nothing
    with pytest.raises(SystemExit):  # no trial finished
        sweep.main(argv)
    assert not (out / "pooled.md").exists()
    for i, t in enumerate(json.loads((out / "sweep.json").read_text())):
        row = _normalised_row(t["env"], "nature_cnn", t["seed"], 0.1 * i, 0.1 * i)
        row.update(fps=1.0, params=1, mflops=1.0)
        for point in row["curve"]:
            point.update(seconds=0.0, eval_return=0.0)
        (out / "trials" / sweep.trial_file(t)).write_text(json.dumps(row))
    sweep.main(argv + ["--report"])
    text = (out / "pooled.md").read_text()
    assert "| ppo | nature_cnn | 2/2 | 4 | 0.15 |" in text and "stratified bootstrap" in text
    assert (out / "pooled.csv").read_text().startswith("algo,backbone,envs,runs,test_normalized,")


def test_grid_gives_trial_records_and_run_specs_and_checks_before_anything_starts():
    """rlvision.sweep.grid: the YAML's keys -> one JSON record per trial (the sweep.json of earlier sweeps keeps its
    form: the Procgen keys appear only when set) -> one RunSpec per trial; check_trials names the culprit."""
    from rlvision.runs import RunSpec
    from rlvision.sweep import check_trials, grid, specs

    spec = {"envs": {"SyntheticPixel-v0": {"steps": 512, "threshold": 0.5, "hyperparams": {"n_steps": 32}},
                     "procgen/coinrun": {"steps": 256, "test_env_kwargs": {"start_level": 10},
                                         "normalize_reward": True}},
            "backbones": ["nature_cnn", "mobilenetv4_cpu_rl[norm=phase_bn]"], "seeds": [0, 1], "n_envs": 4,
            "hyperparams": {"n_epochs": 1}}
    trials, settings = grid(spec)
    assert len(trials) == 2 * 2 * 2 and settings["n_envs"] == 4
    first = trials[0]
    assert first["backbone"] == ["nature_cnn", {}] and first["hyperparams"] == {"n_epochs": 1, "n_steps": 32}
    assert "test_env_kwargs" not in first and "normalize_reward" not in first
    assert trials[-1]["test_env_kwargs"] == {"start_level": 10} and trials[-1]["normalize_reward"] is True
    runs = specs(trials)
    assert all(isinstance(r, RunSpec) for r in runs)
    assert runs[-1].options == {"norm": "phase_bn"} and runs[-1].seed == 1 and runs[-1].normalize_reward
    assert runs[-1].test_env_kwargs == {"start_level": 10} and runs[0].eval_every == max(512 // 10, 32 * 4)
    check_trials(trials)
    with pytest.raises(ValueError, match="'steps' .env 'SyntheticPixel-v0'. must be an int >= 1, got -5"):
        check_trials([dict(trials[0], steps=-5)])
    assert set(first) == {"env", "algo", "backbone", "seed", "steps", "n_envs", "eval_every", "eval_episodes",
                          "hyperparams", "env_kwargs", "threshold", "cpus", "gpu", "backend"}  # as sweeps wrote it
    low, _ = grid({**spec, "low_res": 2, "stage": "bicubic"})  # RunSpec's other settings: in the record when set
    assert low[0]["low_res"] == 2 and specs(low)[0].low_res == 2 and runs[0].threads == 1
    assert specs(low)[0].stage == "bicubic" and runs[0].stage is None
    with pytest.raises(ValueError, match="unknown keys \\['stepz'\\]"):
        grid({**spec, "stepz": 5})


def test_a_run_with_a_checkpoint_folder_goes_on_from_its_newest_checkpoint(tmp_path):
    """rlvision.runs.run(checkpoint_dir=...): what a sweep trial killed with the sweep does when it runs again. The
    curve keeps its points (none twice, none missing), training seconds go on, the weights are the checkpoint's."""
    from stable_baselines3.common.callbacks import BaseCallback

    from rlvision.runs import RunSpec, run

    class Kill(BaseCallback):  # the sweep killed after the step-128 checkpoint, mid-way to 256
        def _on_step(self):
            if self.num_timesteps >= 192:
                raise KeyboardInterrupt
            return True

    spec = RunSpec(env="SyntheticPixel-v0", env_kwargs={"size": 36, "grid": 3}, backbone="nature_cnn", n_envs=2,
                   steps=256, eval_every=64, eval_episodes=2, checkpoint_every=64,
                   hyperparams={"n_steps": 32, "batch_size": 32, "n_epochs": 1})
    folder = str(tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        run(spec, checkpoint_dir=folder, callbacks=[Kill()])
    result = run(spec, checkpoint_dir=folder)
    assert result.row["resumed_from"] == 128 and result.steps == 256
    assert [p["steps"] for p in result.curve] == [0, 64, 128, 192, 256]
    seconds = [p["seconds"] for p in result.curve]
    assert seconds == sorted(seconds) and seconds[3] > seconds[2]
    fresh = run(spec, checkpoint_dir=str(tmp_path / "other"))
    assert fresh.row["resumed_from"] is None
    again = run(spec.replace(steps=320), checkpoint_dir=folder)  # more steps: on from the final checkpoint
    assert again.row["resumed_from"] == 256 and [p["steps"] for p in again.curve][-2:] == [256, 320]
    other = run(spec.replace(seed=1), checkpoint_dir=folder)  # another run's checkpoints are not its own
    assert other.row["resumed_from"] is None
