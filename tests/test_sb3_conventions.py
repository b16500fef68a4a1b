"""SB3's own spellings work with rlvision encoders: policy names, Dict spaces, channel-last envs, unbatched predict,
set_parameters, evaluate_policy, VecNormalize, the normalize_images flag."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

import rlvision
from conftest import WithPosition
from rlvision.envs import SyntheticPixelEnv

SMALL = dict(size=36, grid=3)
FAST = dict(n_steps=16, batch_size=16, n_epochs=1)


class FloatFrames(gym.ObservationWrapper):
    """Channel-first float32 images already in [0, 1] (SB3 transposes only uint8 images, so float ones come
    channel-first)."""

    def __init__(self, env):
        super().__init__(env)
        h, w, c = env.observation_space.shape
        self.observation_space = spaces.Box(0.0, 1.0, (c, h, w), dtype=np.float32)

    def observation(self, obs):
        return obs.transpose(2, 0, 1).astype(np.float32) / 255


def channel_last_env(**kwargs):
    return SyntheticPixelEnv(**SMALL, **kwargs)  # (36, 36, 3) uint8: SB3 transposes it itself


def test_cnn_policy_on_a_channel_last_env_and_unbatched_predict():
    env = channel_last_env()
    model = PPO("CnnPolicy", env, policy_kwargs=rlvision.policy_kwargs("nature_cnn"), seed=0, **FAST)
    assert isinstance(model.policy.features_extractor, rlvision.VisionExtractor)
    model.learn(32)
    obs, _ = env.reset(seed=1)
    action, state = model.predict(obs, deterministic=True)  # one (H, W, C) observation, no batch axis
    assert np.shape(action) == () and state is None
    batched, _ = model.predict(obs[None], deterministic=True)
    assert batched.shape == (1,) and batched[0] == action
    chw, _ = model.predict(obs.transpose(2, 0, 1), deterministic=True)  # already channel-first: also accepted
    assert chw == action


def test_multi_input_policy_takes_the_same_policy_kwargs():
    env = make_vec_env(channel_last_env, n_envs=2, seed=0, wrapper_class=WithPosition)
    model = PPO("MultiInputPolicy", env, policy_kwargs=rlvision.policy_kwargs("nature_cnn", features_dim=64), seed=0,
                **FAST)
    extractor = model.policy.features_extractor
    assert isinstance(extractor, rlvision.VisionCombinedExtractor)
    assert extractor.features_dim == 64 + 2
    model.learn(32)
    obs = env.reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (2,)
    single, _ = model.predict({k: v[0] for k, v in obs.items()}, deterministic=True)
    assert single == actions[0]


def test_set_parameters_and_evaluate_policy(tmp_path):
    env = make_vec_env(channel_last_env, n_envs=2, seed=0)
    a = PPO("CnnPolicy", env, policy_kwargs=rlvision.policy_kwargs("mobilenetv4_nano_rl"), seed=0, **FAST)
    a.learn(32)
    b = PPO("CnnPolicy", env, policy_kwargs=rlvision.policy_kwargs("mobilenetv4_nano_rl"), seed=1, **FAST)
    obs = env.reset()
    assert not np.array_equal(a.policy.predict_values(a.policy.obs_to_tensor(obs)[0]).detach().numpy(),
                              b.policy.predict_values(b.policy.obs_to_tensor(obs)[0]).detach().numpy())
    b.set_parameters(a.get_parameters())
    for name, tensor in a.policy.state_dict().items():
        assert torch.equal(b.policy.state_dict()[name], tensor), name
    np.testing.assert_array_equal(a.predict(obs, deterministic=True)[0], b.predict(obs, deterministic=True)[0])
    a.save(tmp_path / "a.zip")
    c = PPO("CnnPolicy", env, policy_kwargs=rlvision.policy_kwargs("mobilenetv4_nano_rl"), seed=2, **FAST)
    c.set_parameters(str(tmp_path / "a.zip"))  # SB3's load-from-file spelling
    np.testing.assert_array_equal(a.predict(obs, deterministic=True)[0], c.predict(obs, deterministic=True)[0])
    mean, std = evaluate_policy(c, env, n_eval_episodes=4, deterministic=True)
    assert np.isfinite(mean) and std >= 0


def test_vecnormalize_on_rewards_trains_and_round_trips(tmp_path):
    env = VecNormalize(make_vec_env(channel_last_env, n_envs=2, seed=0), norm_obs=False, norm_reward=True)
    model = PPO("CnnPolicy", env, policy_kwargs=rlvision.policy_kwargs("nature_cnn"), seed=0, **FAST)
    model.learn(64)
    assert env.ret_rms.count > 1  # rewards were normalised with running statistics
    env.save(str(tmp_path / "vecnormalize.pkl"))
    loaded = VecNormalize.load(str(tmp_path / "vecnormalize.pkl"), make_vec_env(channel_last_env, n_envs=2, seed=0))
    np.testing.assert_allclose(loaded.ret_rms.var, env.ret_rms.var)


@pytest.mark.parametrize("spelling", ["sb3", "rlvision"])
def test_float_images_with_sb3_normalize_images_flag(spelling):
    env = make_vec_env(channel_last_env, n_envs=2, seed=0, wrapper_class=FloatFrames)
    flag = dict(normalize_images=False) if spelling == "sb3" else dict(normalized_image=True)
    model = PPO("CnnPolicy", env, policy_kwargs=rlvision.policy_kwargs("nature_cnn", **flag), seed=0, **FAST)
    assert model.policy.normalize_images is False
    model.learn(32)
    obs = env.reset()
    assert obs.max() <= 1.0
    features = model.policy.extract_features(model.policy.obs_to_tensor(obs)[0])
    assert torch.isfinite(features).all()


def test_float_images_without_the_flag_fail_with_the_fix():
    env = make_vec_env(channel_last_env, n_envs=1, seed=0, wrapper_class=FloatFrames)
    with pytest.raises(ValueError, match="normalized_image=True"):
        PPO("CnnPolicy", env, policy_kwargs=rlvision.policy_kwargs("nature_cnn"), **FAST)


def test_sac_multi_input_policy_on_a_continuous_dict_env():
    env = make_vec_env(lambda: channel_last_env(continuous=True), n_envs=1, seed=0, wrapper_class=WithPosition)
    model = SAC("MultiInputPolicy", env, policy_kwargs=rlvision.policy_kwargs("nature_cnn", algo="sac"), seed=0,
                buffer_size=200, learning_starts=20, batch_size=16)
    assert isinstance(model.actor.features_extractor, rlvision.VisionCombinedExtractor)
    model.learn(40)
