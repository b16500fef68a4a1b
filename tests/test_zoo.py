"""RL Zoo round trip: a YAML from rlvision.agents.zoo, then `python -m rl_zoo3.train` and `python -m rl_zoo3.enjoy`."""

import subprocess
import sys

import pytest
import yaml

pytest.importorskip("rl_zoo3")
from rlvision.agents.zoo import main as write_zoo_yaml, zoo_hyperparams  # noqa: E402


def run(args, cwd):
    result = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_zoo_train_and_enjoy_with_an_rlvision_backbone(tmp_path):
    write_zoo_yaml(["--algo", "ppo", "--env", "SyntheticPixel-v0", "--backbone", "mobilenetv4_nano_rl",
                    "--backbone-kwargs", "{norm: gn}", "--n-envs", "2", "--n-timesteps", "128",
                    "--out", str(tmp_path / "ppo.yml")])
    zoo = ["--algo", "ppo", "--env", "SyntheticPixel-v0", "--gym-packages", "rlvision.envs", "-f", "logs"]
    run(["rl_zoo3.train", *zoo, "-conf", "ppo.yml", "--env-kwargs", "size:36", "grid:3", "--eval-freq", "-1",
         "--seed", "0", "-params", "n_steps:32", "batch_size:32", "n_epochs:1"], tmp_path)
    out = run(["rl_zoo3.enjoy", *zoo, "-n", "40", "--no-render", "--deterministic"], tmp_path)
    assert "Mean reward" in out

    from stable_baselines3 import PPO

    import rlvision

    model = PPO.load(tmp_path / "logs" / "ppo" / "SyntheticPixel-v0_1" / "SyntheticPixel-v0.zip")
    extractor = model.policy.features_extractor
    assert isinstance(extractor, rlvision.VisionExtractor)
    assert extractor.backbone_name == "mobilenetv4_nano_rl"
    assert not any(type(m).__name__.startswith("BatchNorm") for m in extractor.backbone.modules())  # norm=gn
    assert model.num_timesteps >= 128


def test_zoo_yaml_per_algorithm_and_env():
    a2c = zoo_hyperparams("a2c", "ALE/Pong-v5", "nature_cnn")["ALE/Pong-v5"]
    assert "RMSpropTFLike" in a2c["policy_kwargs"] and a2c["frame_stack"] == 4
    assert a2c["env_wrapper"] == ["stable_baselines3.common.atari_wrappers.AtariWrapper"]
    assert a2c["env_kwargs"] == {"frameskip": 1}
    lstm = zoo_hyperparams("ppo_lstm", "MiniGrid-DoorKey-5x5-v0")["MiniGrid-DoorKey-5x5-v0"]
    assert lstm["policy"] == "CnnLstmPolicy" and "algo='recurrentppo'" in lstm["policy_kwargs"]
    assert "RGBImgPartialObsWrapper" in lstm["env_wrapper"][0]
    td3 = zoo_hyperparams("td3", "SyntheticPixelContinuous-v0")["SyntheticPixelContinuous-v0"]
    assert td3["noise_type"] == "normal"
    yaml.safe_load(yaml.safe_dump({"x": td3}))  # plain YAML
    with pytest.raises(ValueError, match="ppo_lstm"):
        zoo_hyperparams("recurrentppo", "SyntheticPixel-v0")
    with pytest.raises(ValueError, match="nature_cnn"):
        zoo_hyperparams("ppo", "SyntheticPixel-v0", "nature_cnm")


def test_zoo_plugin_trains_rlvision_trpo(tmp_path):
    """--gym-packages rlvision.agents.zoo_plugin: Zoo's --algo trpo is rlvision's TRPO (one-call actor gradients)."""
    import importlib

    import rl_zoo3.utils
    import sb3_contrib

    import rlvision.agents.zoo_plugin as plugin
    from rlvision.trpo import TRPO

    importlib.reload(plugin)
    assert rl_zoo3.utils.ALGOS["trpo"] is TRPO and TRPO is not sb3_contrib.TRPO
    assert rl_zoo3.utils.ALGOS["ppo_lstm"] is sb3_contrib.RecurrentPPO  # the rest unchanged
    write_zoo_yaml(["--algo", "trpo", "--env", "SyntheticPixel-v0", "--backbone", "nature_cnn", "--n-envs", "2",
                    "--n-timesteps", "64", "--out", str(tmp_path / "trpo.yml")])
    run(["rl_zoo3.train", "--algo", "trpo", "--env", "SyntheticPixel-v0", "--gym-packages",
         "rlvision.agents.zoo_plugin", "-f", "logs", "-conf", "trpo.yml", "--env-kwargs", "size:36", "grid:3",
         "--eval-freq", "-1", "--seed", "0", "-params", "n_steps:32", "batch_size:32"], tmp_path)
    model = sb3_contrib.TRPO.load(tmp_path / "logs" / "trpo" / "SyntheticPixel-v0_1" / "SyntheticPixel-v0.zip")
    assert model.num_timesteps >= 64
