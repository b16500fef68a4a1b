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
    with pytest.raises(SystemExit, match=r"'stepz' \(did you mean 'steps'\?\)"):
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
