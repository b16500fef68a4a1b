"""Issue 20: user errors are refused before anything is created, with one message that names the fix."""

import os
import subprocess
import sys

import pytest

import rlvision
from rlvision.agents import make_agent
from rlvision.commands import compare, sweep, train
from rlvision.envs import check_env_id, make_env

SCRIPT = os.path.join(os.path.dirname(sys.executable), "rlvision")


@pytest.mark.parametrize("env_id, message", [
    ("ALE/Pongg-v5", "Did you mean ALE/Pong-v5"),
    ("MiniGrid-DoorKey-5x5-v9", "Did you mean MiniGrid-DoorKey-5x5-v0"),
    ("SyntheticPixl-v0", "Did you mean SyntheticPixel-v0"),
    ("", "must be a registered gymnasium id"),
])
def test_env_ids_are_checked_without_building_the_env(env_id, message):
    with pytest.raises(ValueError, match=message):
        check_env_id(env_id)
    for good in ("ALE/Pong-v5", "MiniGrid-DoorKey-5x5-v0", "SyntheticPixel-v0"):
        check_env_id(good)


def _train_args(tmp_path, **changes):
    values = dict(env="SyntheticPixel-v0", backbone="nature_cnn", steps=64, log_dir=str(tmp_path / "runs"),
                  run_name="r", hyperparams="{n_steps: 32, batch_size: 32}", eval_episodes=0)
    values.update(changes)
    return [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")] + ["--no-progress"]


@pytest.mark.parametrize("changes, message", [
    (dict(env="SyntheticPixl-v0"), "Did you mean SyntheticPixel-v0"),
    (dict(backbone="natur_cnn"), "Did you mean nature_cnn"),
    (dict(hyperparams="{n_stepz: 32}"), "'n_stepz' (did you mean 'n_steps'?)"),
])
def test_train_refuses_typos_before_making_its_folder(tmp_path, changes, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(_train_args(tmp_path, **changes))
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "runs")


def test_train_set_key_typo_names_the_closest_key():
    with pytest.raises(ValueError, match=r"'stepz' \(did you mean 'steps'\?\)"):
        train.load_config(None, ["stepz=10"])


def test_compare_refuses_an_unknown_env_before_making_a_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        compare.main(["--env", "ALE/Pongg-v5", "--backbones", "nature_cnn", "--no-progress"])
    assert exit_.value.code == 2 and "Did you mean ALE/Pong-v5" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "runs")


def test_sweep_refuses_an_unknown_env_before_ray_starts(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["--envs", "SyntheticPixl-v0", "--backbones", "nature_cnn", "--out", str(tmp_path / "s")])
    assert exit_.value.code == 2 and "Did you mean SyntheticPixel-v0" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s")


def test_a_sweep_with_failed_trials_exits_non_zero_and_names_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "run_sweep", lambda *args, **kwargs: ["nature_cnn seed 0 on SyntheticPixel-v0: boom"])
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["--envs", "SyntheticPixel-v0", "--backbones", "nature_cnn", "--steps", "64",
                    "--out", str(tmp_path / "s")])
    out, err = capsys.readouterr()
    assert exit_.value.code == 1 and "FAILED after retries: nature_cnn seed 0" in out
    assert "no trial finished: no summary" in out and "SyntheticPixel-v0__ppo__nature_cnn__seed0.json" in err
    assert not os.path.exists(tmp_path / "s" / "summary.md")


def test_the_default_evaluation_interval_is_at_least_one_rollout():
    assert sweep.default_eval_every("ppo", dict(steps=2048, n_envs=8, hyperparams={})) == 128 * 8
    assert sweep.default_eval_every("ppo", dict(steps=100_000, n_envs=8, hyperparams={"n_steps": 64})) == 10_000
    assert sweep.default_eval_every("sac", dict(steps=2000, n_envs=1, hyperparams={})) == 200


def test_messages_name_the_functions_own_parameters():
    with pytest.raises(ValueError, match=r"'featuers_dim' \(did you mean 'features_dim'\?\)"):
        rlvision.policy_kwargs("nature_cnn", featuers_dim=128)
    env = make_env("SyntheticPixel-v0", n_envs=1, env_kwargs=dict(size=36, grid=3))
    with pytest.raises(ValueError, match=r"policy_kwargs .*'net_arc' \(did you mean 'net_arch'\?\)"):
        make_agent("ppo", env, backbone="nature_cnn", policy_kwargs=dict(net_arc=[64]))


@pytest.mark.skipif(not os.path.exists(SCRIPT), reason="the console script is installed by pip install")
def test_the_command_reports_a_user_error_in_one_line_with_exit_code_2(tmp_path):
    result = subprocess.run([SCRIPT, "zoo", "--algo", "ppo", "--env", "SyntheticPixel-v0", "--backbone", "natur_cnn"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Did you mean nature_cnn" in result.stderr


@pytest.mark.parametrize("content, message", [
    (b"", "are empty"),
    (b"just some text\n", "not a readable torch file"),
])
def test_damaged_preprocessing_weights_name_file_problem_and_fix(tmp_path, content, message):
    from rlvision.preprocess import create_preprocess, load_preprocess, save_preprocess

    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message + r".*rlvision train-sr") as error:
        load_preprocess(create_preprocess("flexnet_rl", channels=1), str(path))
    assert str(path) in str(error.value)
    good = tmp_path / "good.pt"
    save_preprocess(create_preprocess("flexnet_rl", channels=1), str(good))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable torch file"):
        load_preprocess(create_preprocess("flexnet_rl", channels=1), str(truncated))
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []  # saved under a temporary name, renamed


def test_compare_checks_preprocessing_files_before_training(tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_:
        compare.main(["--env", "SyntheticPixel-v0", "--backbones", "nature_cnn", "--preprocess",
                      f"none,flexnet_rl:{empty}", "--logdir", str(tmp_path / "log"), "--no-progress"])
    assert exit_.value.code == 2 and "are empty" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "log")


def test_train_runs_a_shipped_config_by_name_outside_the_checkout(tmp_path, monkeypatch, capsys):
    """Issue 33 item 8: the example configs ship with the package; an unknown name lists them."""
    monkeypatch.chdir(tmp_path)
    result = train.main(["ppo_synthetic", "--set", "steps=64", "--set", "n_envs=2", "--set", "eval_episodes=0",
                         "--set", "env_kwargs={size: 36, grid: 3}", "--set", "hyperparams={n_steps: 32, batch_size: "
                         "32}", "--set", "log_dir=runs", "--no-progress"])
    assert result["steps"] == 64 and (tmp_path / "runs").is_dir()
    with pytest.raises(SystemExit) as exit_:
        train.main(["ppo_synthtic", "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "rlvision train: error:" in err and "ppo_synthetic, sac_synthetic" in err


@pytest.mark.parametrize("argv, message", [
    (["--set", "steps=-5"], "'steps' must be an int >= 1"),
    (["--set", "stepz=5"], "'stepz' (did you mean 'steps'?)"),
])
def test_train_user_errors_exit_2_with_the_commands_prefix(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        train.main(argv + ["--set", f"log_dir={tmp_path}", "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "rlvision train: error: " in err and message in err


def test_compare_and_sweep_refuse_a_hyperparameter_typo_before_anything_starts(tmp_path, capsys, monkeypatch):
    """Issue 33 item 8: caught before the env is measured or Ray starts; nothing is left behind."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        compare.main(["--env", "SyntheticPixel-v0", "--backbones", "nature_cnn", "--hyperparams", "{n_step: 64}",
                      "--logdir", str(tmp_path / "c"), "--no-progress"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "rlvision compare: error:" in err and "'n_step' (did you mean 'n_steps'?)" in err
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["--envs", "SyntheticPixel-v0", "--backbones", "nature_cnn", "--hyperparams", "{n_step: 64}",
                    "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "rlvision sweep: error:" in err and "'n_step' (did you mean 'n_steps'?)" in err
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["--envs", "SyntheticPixel-v0", "--backbones", "nature_cnn", "--steps", "-5",
                    "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "'steps' (env 'SyntheticPixel-v0') must be an int >= 1, got -5" in err
    assert os.listdir(tmp_path) == []


def test_compare_refuses_a_folder_that_holds_a_comparison(tmp_path, capsys):
    """Issue 33 item 8: `make demo` twice overlaid two runs of each backbone in one TensorBoard folder."""
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "summary.md").write_text("an earlier comparison")
    argv = ["--env", "SyntheticPixel-v0", "--env-kwargs", "{size: 36, grid: 3}", "--backbones", "nature_cnn",
            "--steps", "32", "--n-envs", "2", "--hyperparams", "{n_steps: 16, batch_size: 32}", "--logdir",
            str(tmp_path / "c"), "--no-progress", "--same-process"]
    with pytest.raises(SystemExit) as exit_:
        compare.main(argv)
    assert exit_.value.code == 2 and "--overwrite to replace it" in capsys.readouterr().err
    assert (tmp_path / "c" / "summary.md").read_text() == "an earlier comparison"
    rows = compare.main(argv + ["--overwrite"])
    assert rows[0]["steps"] == 32 and "nature_cnn" in (tmp_path / "c" / "summary.md").read_text()
