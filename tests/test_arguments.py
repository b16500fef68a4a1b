"""Every public entry point refuses a bad argument with a message that names it and says what is allowed."""

import numpy as np
import pytest
from gymnasium import spaces

import rlvision
from rlvision.agents import make_agent
from rlvision.envs import make_env
from rlvision.commands import compare as compare_backbones, train

SPACE = spaces.Box(0, 255, (4, 84, 84), np.uint8)


@pytest.fixture(scope="module")
def env():
    venv = make_env("SyntheticPixel-v0", n_envs=1, env_kwargs=dict(size=36, grid=3))
    yield venv
    venv.close()


CASES = {
    "create_backbone unknown name": (lambda env: rlvision.create_backbone("mobilenetv4_nan"),
                                     r"Unknown backbone 'mobilenetv4_nan'.*Did you mean mobilenetv4_nano"),
    "create_backbone misspelt keyword": (lambda env: rlvision.create_backbone("mobilenetv4_custom", residul=True),
                                         r"'residul' \(did you mean 'residual'\?\); it accepts: .*stem_stride"),
    "create_backbone in_channels": (lambda env: rlvision.create_backbone("nature_cnn", in_channels=0),
                                    "in_channels must be a positive int"),
    "create_backbone num_classes": (lambda env: rlvision.create_backbone("nature_cnn", num_classes=-1),
                                    "num_classes must be an int >= 0"),
    "create_preprocess keyword": (lambda env: rlvision.create_preprocess("flexnet_rl", dimm=4),
                                  r"'dimm' \(did you mean 'dim'\?\)"),
    "create_preprocess name": (lambda env: rlvision.create_preprocess("flexnett"), "Unknown preprocessing stage"),
    "VisionExtractor features_dim": (lambda env: rlvision.VisionExtractor(SPACE, "nature_cnn", features_dim=0),
                                     r"features_dim must be an int >= 1, got 0"),
    "VisionExtractor keyword": (lambda env: rlvision.VisionExtractor(SPACE, "nature_cnn", chanels_last=False),
                                r"'chanels_last' \(did you mean 'channels_last'\?\)"),
    "VisionExtractor pool": (lambda env: rlvision.VisionExtractor(SPACE, "nature_cnn", pool="max"), "pool must be"),
    "VisionExtractor backbone_lr_scale": (lambda env: rlvision.VisionExtractor(SPACE, "nature_cnn",
                                                                               backbone_lr_scale=0),
                                          "backbone_lr_scale must be > 0"),
    "policy_kwargs algo": (lambda env: rlvision.policy_kwargs("nature_cnn", algo="ppg"), "Unknown algo 'ppg'"),
    "policy_kwargs features_dim": (lambda env: rlvision.policy_kwargs("nature_cnn", features_dim=-3),
                                   "features_dim must be an int >= 1"),
    "policy_kwargs keyword": (lambda env: rlvision.policy_kwargs("nature_cnn", inference_cpy=False),
                              r"'inference_cpy' \(did you mean 'inference_copy'\?\)"),
    "make_env n_envs": (lambda env: make_env("SyntheticPixel-v0", n_envs=0), "n_envs must be an int >= 1"),
    "make_env frame_stack": (lambda env: make_env("SyntheticPixel-v0", frame_stack=-1), "frame_stack must be"),
    "make_env low_res": (lambda env: make_env("SyntheticPixel-v0", low_res=0), "low_res must be an int >= 1"),
    "make_env env_kwargs": (lambda env: make_env("SyntheticPixel-v0", env_kwargs=[1]), "env_kwargs must be a dict"),
    "make_env backend": (lambda env: make_env("ALE/Pong-v5", backend="cpp"), "backend must be one of"),
    "make_env vec_env_cls": (lambda env: make_env("SyntheticPixel-v0", vec_env_cls="threads"),
                             "vec_env_cls must be"),
    "make_agent algo": (lambda env: make_agent("ppg", env), "Unknown algo 'ppg'"),
    "make_agent hyperparameter": (lambda env: make_agent("ppo", env, n_step=64),
                                  r"'n_step' \(did you mean 'n_steps'\?\).*batch_size"),
    "make_agent memory_fraction": (lambda env: make_agent("ppo", env, memory_fraction=1.5),
                                   r"memory_fraction must be in \(0.0, 1.0\]"),
    "make_agent features_dim": (lambda env: make_agent("ppo", env, features_dim=0), "features_dim must be"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_argument_is_named(case, env):
    call, message = CASES[case]
    with pytest.raises(ValueError, match=message):
        call(env)


@pytest.mark.parametrize("argv,message", [
    (["--steps", "0"], "--steps must be an int >= 1, got 0"),
    (["--n-envs", "-2"], "--n-envs must be an int >= 1, got -2"),
    (["--eval-episodes", "-1"], "--eval-episodes must be an int >= 0, got -1"),
    (["--backend", "cpp"], "--backend must be one of native, python, got 'cpp'"),
    (["--backbones", "mobilenetv4_nano_rl[nrom=gn]"], r"'nrom' \(did you mean 'norm'\?\)"),
    (["--backbones", "nature_cnn[algo=grapheppo]"], "Unknown algo 'grapheppo'. Did you mean graphedppo"),
    (["--algo", "ppo2"], "Unknown algo 'ppo2'"),
])
def test_compare_backbones_options_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit):
        compare_backbones.main(["--env", "SyntheticPixel-v0", *argv])
    assert message.replace("\\", "") in capsys.readouterr().err or pytest.fail(capsys.readouterr().err)


@pytest.mark.parametrize("override,message", [
    ("steps=0", "'steps' must be an int >= 1"), ("n_envs=two", "'n_envs' must be an int >= 1"),
    ("backbone_kwargs=[1]", "'backbone_kwargs' .now 'options'. must be a mapping"),
    ("options=[1]", "'options' must be a mapping"), ("learning_rat=1", "--set wants key=value"),
])
def test_train_config_values_are_checked(override, message):
    with pytest.raises(ValueError, match=message):
        train.load_config(None, [override])
