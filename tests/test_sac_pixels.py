"""Issue 21 item 4: SAC from pixels. SAC's starting entropy coefficient, a short SAC run that must learn, and the
extractor head option (Linear -> LayerNorm -> Tanh, SAC-AE's and DrQ-v2's trunk)."""

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

import rlvision
from rlvision.agents import DEFAULTS, algo_class, evaluate_agent, make_agent
from rlvision.envs import make_env
from rlvision.inference_copy import InferenceCopy

from conftest import tolerance

FRAMES = spaces.Box(0, 255, (3, 48, 48), np.uint8)


def test_layernorm_head_is_linear_layernorm_tanh_and_relu_stays_the_default():
    plain = rlvision.VisionExtractor(FRAMES, "nature_cnn")
    assert plain.head == "relu" and [type(m) for m in plain.linear] == [nn.Linear, nn.ReLU]
    extractor = rlvision.VisionExtractor(FRAMES, "mobilenetv4_nano_rl", head="layernorm", features_dim=32)
    assert [type(m) for m in extractor.linear] == [nn.Linear, nn.LayerNorm, nn.Tanh]
    assert list(extractor.state_dict())[-4:] == ["encoder.linear.0.weight", "encoder.linear.0.bias",
                                                 "encoder.linear.1.weight", "encoder.linear.1.bias"]
    with torch.no_grad():
        features = extractor(torch.rand(16, 3, 48, 48))
        normalised = extractor.linear[1](extractor.linear[0](extractor.pool(extractor.backbone.forward_features(
            torch.rand(16, 3, 48, 48)))))
    assert features.shape == (16, 32) and features.abs().max() < 1
    # unit scale per sample whatever the backbone's output scale (the point of the head)
    torch.testing.assert_close(normalised.pow(2).mean(1), torch.ones(16), atol=0.05, rtol=0)
    with pytest.raises(ValueError, match="head must be one of"):
        rlvision.VisionExtractor(FRAMES, "nature_cnn", head="gelu")
    with pytest.raises(ValueError, match="head must be one of"):
        rlvision.policy_kwargs("nature_cnn", algo="sac", head="gelu")


@pytest.mark.parametrize("algo", ["sac", "ppo"])
def test_policy_kwargs_carry_the_head_into_the_saved_kwargs(algo):
    """ReLU unless asked (the SAC sweep found no gain from LayerNorm); an explicit head is kept in the kwargs."""
    assert "head" not in rlvision.policy_kwargs("mobilenetv4_nano_rl", algo=algo)["features_extractor_kwargs"]
    mine = rlvision.policy_kwargs("mobilenetv4_nano_rl", algo=algo, head="layernorm")
    assert mine["features_extractor_kwargs"]["head"] == "layernorm"


def test_layernorm_head_folds_into_the_inference_copy(device, exact_cuda):
    extractor = rlvision.VisionExtractor(FRAMES, "mobilenetv4_nano_rl", head="layernorm").to(device)
    x = torch.rand(8, 3, 48, 48, device=device)
    extractor.train()
    extractor(x)
    extractor.eval()
    with torch.no_grad():
        torch.testing.assert_close(InferenceCopy(extractor)(x), extractor.encode(x), **tolerance(device))


@pytest.mark.parametrize("sharing", [None, "critic"])
def test_sac_saves_and_loads_its_head(tmp_path, sharing):
    env = make_env("SyntheticPixelContinuous-v0", n_envs=1, seed=0, env_kwargs=dict(size=36, grid=3))
    extra = {} if sharing is None else {"encoder_sharing": sharing}
    model = make_agent("sac", env, backbone="nature_cnn", seed=0, buffer_size=100, learning_starts=20,
                       batch_size=8, backbone_kwargs=dict(head="layernorm"), **extra)
    assert model.policy.critic.features_extractor.head == "layernorm"
    assert sharing == "critic" or model.policy.actor.features_extractor.head == "layernorm"
    model.learn(40)
    obs = env.reset()
    model.save(tmp_path / "sac.zip")
    loaded = algo_class("sac").load(tmp_path / "sac.zip", device="cpu")
    assert loaded.policy.critic.features_extractor.head == "layernorm"
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0],
                                  model.predict(obs, deterministic=True)[0])


def test_sac_starts_with_a_small_entropy_coefficient():
    assert DEFAULTS["sac"]["ent_coef"] == DEFAULTS["tqc"]["ent_coef"] == "auto_0.01"
    env = make_env("SyntheticPixelContinuous-v0", n_envs=1, seed=0, env_kwargs=dict(size=36, grid=3))
    model = make_agent("sac", env, backbone="nature_cnn", seed=0, buffer_size=100)
    assert float(model.log_ent_coef.detach().exp()) == pytest.approx(0.01)


def test_sac_from_pixels_learns_the_synthetic_task():
    """With rlvision's defaults SAC must learn in a few hundred updates. Measured: seeds 0/1/2 end at 1.13 / 0.98 /
    1.13 from -0.09; the same runs with SB3's starting entropy coefficient (ent_coef="auto", 1.0) end at -0.08 to
    -0.09, no better than the untrained policy (BENCHMARKS.md "SAC from pixels")."""
    torch.manual_seed(0)
    kwargs = dict(size=36, grid=3)
    env = make_env("SyntheticPixelContinuous-v0", n_envs=1, seed=0, env_kwargs=kwargs)
    eval_env = make_env("SyntheticPixelContinuous-v0", n_envs=4, seed=100, env_kwargs=kwargs)
    model = make_agent("sac", env, backbone="nature_cnn", seed=0, buffer_size=2000, learning_starts=100,
                       batch_size=32)
    before = evaluate_agent(model, eval_env, 24, deterministic=True)["mean_return"]
    model.learn(500)
    after = evaluate_agent(model, eval_env, 24, deterministic=True)["mean_return"]
    assert after > 0.7 and after > before + 0.5, (before, after)
