import numpy as np
import pytest

from envs import SyntheticPixelEnv, env_family, make_env


def test_synthetic_env_discrete():
    env = SyntheticPixelEnv(size=40, grid=4)
    obs, _ = env.reset(seed=1)
    assert obs.shape == (40, 40, 3) and obs.dtype == np.uint8
    assert (obs[..., 0] == 255).sum() == 100 and (obs[..., 1] == 255).sum() == 100  # one 10x10 cell each
    # walk the agent onto the goal along the shortest path: +1 success, shaping, step cost
    total, done, steps = 0.0, False, 0
    while not done:
        dr, dc = env._goal - env._agent
        action = (0 if dr < 0 else 1) if dr else (2 if dc < 0 else 3)
        obs, reward, done, truncated, info = env.step(action)
        total, steps = total + reward, steps + 1
        assert not truncated
    assert info["is_success"] and steps <= 6
    assert total == pytest.approx(1.0 + 0.1 * steps - 0.01 * steps)


def test_synthetic_env_truncates_and_is_seeded():
    env = SyntheticPixelEnv(size=32, grid=4, max_steps=5)
    first = env.reset(seed=3)[0]
    assert np.array_equal(first, env.reset(seed=3)[0])
    env._agent, env._goal = np.array([0.0, 0.0]), np.array([3.0, 3.0])
    for step in range(1, 6):
        _, reward, terminated, truncated, info = env.step(0)  # up, into the wall: never reaches the goal
        assert not terminated and truncated == (step == 5) and not info["is_success"]
        assert reward == pytest.approx(-0.01)


def test_synthetic_env_continuous_and_grey():
    env = SyntheticPixelEnv(size=48, grid=4, continuous=True, channels=1)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (48, 48, 1) and env.action_space.shape == (2,)
    obs, *_ = env.step(np.array([0.4, -0.4], dtype=np.float32))
    assert set(np.unique(obs)) <= {0, 128, 255}
    with pytest.raises(ValueError, match="channels"):
        SyntheticPixelEnv(channels=2)


def test_make_env_synthetic_is_channel_first():
    env = make_env("SyntheticPixel-v0", n_envs=3, seed=0, env_kwargs=dict(size=36))
    assert env.observation_space.shape == (3, 36, 36) and env.num_envs == 3
    assert env.reset().shape == (3, 3, 36, 36)
    stacked = make_env("SyntheticPixel-v0", n_envs=2, frame_stack=4, env_kwargs=dict(size=36))
    assert stacked.observation_space.shape == (12, 36, 36)


def test_env_family():
    assert env_family("ALE/Pong-v5") == "atari" and env_family("PongNoFrameskip-v4") == "atari"
    assert env_family("MiniGrid-Empty-8x8-v0") == "minigrid" and env_family("CarRacing-v3") == "carracing"
    with pytest.raises(ValueError, match="n_envs"):
        make_env("SyntheticPixel-v0", n_envs=0)
    with pytest.raises(ValueError, match="image observations"):
        make_env("CartPole-v1")


def test_make_env_atari_single_frameskip():
    pytest.importorskip("ale_py")
    env = make_env("ALE/Pong-v5", n_envs=2, seed=0)
    assert env.observation_space.shape == (4, 84, 84)
    assert env.get_attr("_frameskip")[0] == 1  # AtariWrapper does the skipping: 4 frames a step, not 16
    obs = env.reset()
    assert obs.shape == (2, 4, 84, 84)
    env.close()


def test_make_env_minigrid_rgb():
    pytest.importorskip("minigrid")
    env = make_env("MiniGrid-Empty-8x8-v0", n_envs=2, seed=0)
    assert env.observation_space.shape == (3, 56, 56)
    env.close()


def test_make_env_carracing():
    pytest.importorskip("Box2D")
    env = make_env("CarRacing-v3", n_envs=1, seed=0)
    assert env.observation_space.shape == (3, 96, 96) and env.action_space.shape == (3,)
    env.close()
