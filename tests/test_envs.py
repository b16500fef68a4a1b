import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.evaluation import evaluate_policy

from rlvision.envs import SyntheticPixelEnv, VectorEnvAdapter, env_family, make_env
from rlvision.envs.vector import atari_game


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
    env = make_env("ALE/Pong-v5", n_envs=2, seed=0, backend="python")
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


class _LivesEnv(gym.Env):
    """Reward 3 every step, a life lost every 2 steps, game over when the 3 lives are gone (6 steps);
    observation: the step count in every pixel of a (1, 8, 8) image."""

    observation_space = spaces.Box(0, 255, (1, 8, 8), np.uint8)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros((1, 8, 8), np.uint8), {"lives": 3}

    def step(self, action):
        self.t += 1
        lives = 3 - self.t // 2
        return np.full((1, 8, 8), self.t, np.uint8), 3.0, lives == 0, False, {"lives": lives}


def test_adapter_gives_sb3_monitor_semantics_with_life_loss_and_clipping():
    vec = gym.vector.SyncVectorEnv([_LivesEnv] * 2, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    env = VectorEnvAdapter(vec, clip_reward=True, terminal_on_life_loss=True)
    assert env.env_is_wrapped(__import__("stable_baselines3").common.monitor.Monitor) == [True, True]
    obs = env.reset()
    assert obs.shape == (2, 1, 8, 8)
    for t in range(1, 7):
        obs, rewards, dones, infos = env.step(np.zeros(2, dtype=np.int64))
        assert np.all(rewards == 1.0)  # sign(3)
        assert dones.tolist() == [t % 2 == 0] * 2  # a lost life ends the agent's episode
        if t % 2 == 0:
            assert infos[0]["terminal_observation"][0, 0, 0] == t and not infos[0]["TimeLimit.truncated"]
        if t in (2, 4):  # the game goes on from the same frame, no episode record yet
            assert "episode" not in infos[0] and obs[0, 0, 0, 0] == t
    assert infos[1]["episode"]["r"] == 18.0 and infos[1]["episode"]["l"] == 6  # raw rewards, whole game
    assert obs[0, 0, 0, 0] == 0  # the next game started in the same step


def test_adapter_refuses_next_step_autoreset():
    vec = gym.vector.SyncVectorEnv([_LivesEnv])
    with pytest.raises(ValueError, match="SAME_STEP"):
        VectorEnvAdapter(vec)


def test_gym_vector_env_matches_dummy_vec_env_step_for_step():
    """The same synthetic env through gymnasium's SyncVectorEnv + adapter and through SB3's DummyVecEnv + Monitor:
    identical observations, rewards, dones, terminal observations, episode records and is_success."""
    kwargs = dict(size=24, grid=3, max_steps=6)
    ours = make_env("SyntheticPixel-v0", n_envs=3, seed=5, env_kwargs=kwargs, vec_env_cls="gym_sync")
    sb3 = make_env("SyntheticPixel-v0", n_envs=3, seed=5, env_kwargs=kwargs)
    assert ours.observation_space == sb3.observation_space
    np.testing.assert_array_equal(ours.reset(), sb3.reset())
    rng = np.random.default_rng(0)
    episodes = 0
    for _ in range(60):
        actions = rng.integers(0, 4, 3)
        a, b = ours.step(actions), sb3.step(actions)
        for x, y in zip(a[:3], b[:3], strict=False):
            np.testing.assert_allclose(x, y, rtol=1e-6)
        for info_a, info_b in zip(a[3], b[3], strict=False):
            assert ("terminal_observation" in info_a) == ("terminal_observation" in info_b)
            if "episode" in info_b:
                episodes += 1
                np.testing.assert_array_equal(info_a["terminal_observation"], info_b["terminal_observation"])
                assert info_a["episode"]["r"] == pytest.approx(info_b["episode"]["r"], abs=1e-5)
                assert info_a["episode"]["l"] == info_b["episode"]["l"]
                assert info_a["is_success"] == info_b["is_success"]
                assert info_a["TimeLimit.truncated"] == info_b["TimeLimit.truncated"]
    assert episodes >= 10
    ours.close(), sb3.close()


def test_atari_game_names():
    assert atari_game("ALE/Pong-v5") == "pong" and atari_game("BreakoutNoFrameskip-v4") == "breakout"
    assert atari_game("ALE/MontezumaRevenge-v5") == "montezuma_revenge"


def test_native_atari_env_is_seeded_and_channel_first():
    pytest.importorskip("ale_py")
    a, b, c = (make_env("ALE/Pong-v5", n_envs=2, seed=s) for s in (0, 0, 1))
    assert isinstance(a, VectorEnvAdapter) and a.observation_space.shape == (4, 84, 84)
    assert a.observation_space.dtype == np.uint8 and a.action_space.n == 6
    np.testing.assert_array_equal(a.reset(), b.reset())
    c.reset()
    actions = np.array([2, 3])
    for _ in range(30):
        oa, ob, oc = a.step(actions)[0], b.step(actions)[0], c.step(actions)[0]
    np.testing.assert_array_equal(oa, ob)
    assert not np.array_equal(oa, oc)
    for env in (a, b, c):
        env.close()


def test_native_atari_time_limit_and_episode_record():
    pytest.importorskip("ale_py")
    env = make_env("ALE/Pong-v5", n_envs=2, seed=0, env_kwargs=dict(max_num_frames_per_episode=200))
    env.reset()
    step = 0
    while step < 79:
        step += 1
        obs, _, dones, infos = env.step(np.zeros(2, dtype=np.int64))
        if dones.any():
            break
    info = infos[int(np.flatnonzero(dones)[0])]
    assert info["TimeLimit.truncated"] and info["terminal_observation"].shape == (4, 84, 84)
    assert info["episode"]["l"] == 4 * step  # in frames, as SB3's Monitor counts below AtariWrapper
    env.close()


def test_native_atari_life_loss_is_done_but_episode_is_the_whole_game():
    pytest.importorskip("ale_py")
    env = make_env("ALE/Breakout-v5", n_envs=1, seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    life_losses = 0
    for _ in range(3000):
        _, _, dones, infos = env.step(rng.integers(0, 4, 1))
        if dones[0] and "episode" not in infos[0]:
            life_losses += 1
        if "episode" in infos[0]:
            break
    assert life_losses == 4 and "episode" in infos[0]  # 5 lives: 4 agent episodes end before the game does
    class RandomAgent:
        def predict(self, obs, **_):
            return rng.integers(0, 4, 1), None

    returns, lengths = evaluate_policy(RandomAgent(), env, n_eval_episodes=1, return_episode_rewards=True)
    assert lengths[0] > 100  # a whole game over 5 lives, not one life
    env.close()


def test_native_atari_with_low_res_and_bad_options():
    pytest.importorskip("ale_py")
    env = make_env("ALE/Pong-v5", n_envs=2, seed=0, low_res=2)
    assert env.reset().shape == (2, 4, 42, 42)
    env.close()
    with pytest.raises(ValueError, match="backend"):
        make_env("ALE/Pong-v5", backend="cpp")
    with pytest.raises(ValueError, match="backend='python'"):
        make_env("ALE/Pong-v5", vec_env_cls="subproc")
    with pytest.raises(ValueError, match="vec_env_cls"):
        make_env("SyntheticPixel-v0", vec_env_cls="threads")


def test_minigrid_in_gymnasium_async_vector_env():
    pytest.importorskip("minigrid")
    env = make_env("MiniGrid-Empty-5x5-v0", n_envs=2, seed=0, vec_env_cls="gym_async")
    assert env.observation_space.shape == (3, 56, 56) and env.reset().shape == (2, 3, 56, 56)
    obs, rewards, dones, infos = env.step(np.array([2, 2]))
    assert obs.shape == (2, 3, 56, 56) and len(infos) == 2
    env.close()
