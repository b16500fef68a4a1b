"""DrQ-v2's encoder sharing (rlvision.drq): one encoder, trained by the critic loss; the actor sees it detached."""

import numpy as np
import pytest
import torch

import rlvision
from rlvision.agents import algo_class, make_agent
from rlvision.envs import make_env

SMALL = dict(size=36, grid=3)
FAST = dict(buffer_size=300, learning_starts=40, batch_size=16)
ALGOS = ["sac", "td3"] + (["tqc", "crossq"] if __import__("importlib").util.find_spec("sb3_contrib") else [])


def continuous_env(n_envs=1):
    return make_env("SyntheticPixelContinuous-v0", n_envs=n_envs, seed=0, env_kwargs=SMALL)


@pytest.mark.parametrize("algo", ALGOS)
def test_one_encoder_in_the_critic_optimizer_only(algo):
    model = make_agent(algo, continuous_env(), backbone="nature_cnn", encoder_sharing="critic", seed=0, **FAST)
    policy = model.policy
    encoder = policy.critic.features_extractor
    assert isinstance(encoder, rlvision.VisionExtractor)
    assert policy.actor.features_extractor.encoder is encoder  # shared, not copied
    encoder_ids = {id(p) for p in encoder.parameters()}
    actor_ids = {id(p) for group in policy.actor.optimizer.param_groups for p in group["params"]}
    critic_ids = {id(p) for group in policy.critic.optimizer.param_groups for p in group["params"]}
    assert encoder_ids <= critic_ids and not encoder_ids & actor_ids
    assert actor_ids, "the actor's own layers must still train"


@pytest.mark.parametrize("algo", ["sac", "td3"])
def test_gradients_reach_the_encoder_from_the_critic_not_the_actor(algo):
    model = make_agent(algo, continuous_env(), backbone="nature_cnn", encoder_sharing="critic", seed=0, **FAST)
    policy, encoder = model.policy, model.policy.critic.features_extractor
    policy.set_training_mode(True)
    obs = torch.as_tensor(np.stack([model.observation_space.sample() for _ in range(4)]))
    actions = policy.actor(obs)
    actions.sum().backward()
    assert all(p.grad is None for p in encoder.parameters()), "the actor's loss reached the encoder"
    assert any(p.grad is not None for p in policy.actor.parameters())
    q = policy.critic(obs, actions.detach())[0]
    q.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters()), "the critic's loss did not reach the encoder"


def test_sac_with_drqv2_sharing_learns_saves_and_loads(tmp_path):
    env = continuous_env(n_envs=2)
    model = make_agent("sac", env, backbone="nature_cnn", encoder_sharing="critic",
                       backbone_kwargs=dict(augment_shift=2), seed=0, **FAST)
    encoder = model.policy.critic.features_extractor
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    model.learn(120)
    assert any(not torch.equal(before[k], v) for k, v in encoder.state_dict().items()), "the encoder did not train"
    obs = env.reset()
    expected = model.predict(obs, deterministic=True)[0]
    model.save(tmp_path / "sac.zip")
    loaded = algo_class("sac").load(tmp_path / "sac.zip", env=env)
    assert type(loaded.policy).__name__ == "DrQv2SACPolicy"
    assert loaded.policy.actor.features_extractor.encoder is loaded.policy.critic.features_extractor
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], expected)


def test_plain_sb3_spelling_and_bad_requests():
    from stable_baselines3 import SAC

    env = continuous_env()
    model = SAC(rlvision.drqv2_policy("sac"), env, seed=0, **FAST,
                policy_kwargs=rlvision.policy_kwargs("nature_cnn", algo="sac", encoder_sharing="critic"))
    model.learn(50)
    with pytest.raises(ValueError, match="shares one encoder"):
        SAC(rlvision.drqv2_policy("sac"), env, policy_kwargs=rlvision.policy_kwargs("nature_cnn", algo="sac"))
    with pytest.raises(ValueError, match="actor-critic"):
        rlvision.drqv2_policy("ppo")
    with pytest.raises(ValueError, match="encoder_sharing"):
        make_agent("ppo", make_env("SyntheticPixel-v0", env_kwargs=SMALL), encoder_sharing="critic")
