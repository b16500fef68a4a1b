import numpy as np
import pytest
import torch

import rlvision.agents
from rlvision.agents import ReplayBufferTooLargeError, evaluate_agent, make_agent, replay_buffer_bytes
from rlvision.envs import make_env

SMALL = dict(size=32, grid=3)
FAST = {  # a few hundred steps, updates early
    "ppo": dict(n_steps=32, batch_size=32, n_epochs=1),
    "a2c": dict(n_steps=8),
    "dqn": dict(buffer_size=500, learning_starts=50, train_freq=4, batch_size=16, target_update_interval=100),
    "sac": dict(buffer_size=500, learning_starts=50, batch_size=16),
    "td3": dict(buffer_size=500, learning_starts=50, batch_size=16),
}


def synthetic(algo, n_envs=2, seed=0):
    env_id = "SyntheticPixelContinuous-v0" if algo in ("sac", "td3") else "SyntheticPixel-v0"
    return make_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=SMALL)


def encoder_params(model):
    return {k: v.clone() for k, v in model.policy.state_dict().items() if "features_extractor" in k}


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "sac", "td3"])
def test_every_algorithm_trains_a_mobilenet_encoder(algo, tmp_path):
    model = make_agent(algo, synthetic(algo), backbone="mobilenetv4_custom", seed=0, tensorboard_log=str(tmp_path),
                       **FAST[algo])
    before = encoder_params(model)
    model.learn(300)
    after = encoder_params(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert model.num_timesteps >= 300 and changed, "the encoder did not learn"
    assert list(tmp_path.iterdir()), "no TensorBoard log written"


@pytest.mark.parametrize("algo", ["ppo", "dqn", "sac"])
def test_save_load_gives_identical_actions(algo, tmp_path):
    env = synthetic(algo)
    model = make_agent(algo, env, backbone="mobilenetv4_nano", seed=0, **FAST[algo])
    model.learn(100)
    model.save(tmp_path / "m.zip")
    loaded = type(model).load(tmp_path / "m.zip", env=env)
    obs = np.stack([env.observation_space.sample() for _ in range(8)])
    # the trained model acts through its inference copy and so does the loaded one (switched on by loading), while
    # the target networks keep the plain path in both
    owner = {"sac": lambda m: m.policy.actor, "dqn": lambda m: m.policy.q_net}.get(algo, lambda m: m.policy)
    extractors = [owner(m).features_extractor for m in (model, loaded)]
    assert all(e.inference_copy_active for e in extractors)
    target = {"sac": lambda m: m.policy.critic_target, "dqn": lambda m: m.policy.q_net_target}.get(algo)
    if target is not None:
        assert not any(target(m).features_extractor.inference_copy_active for m in (model, loaded))
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    # the two paths agree to rounding, which can flip a near-tie of a barely trained policy: like with like
    for active in (True, False):
        for extractor in extractors:
            extractor.inference_copy_active = active
        a, _ = model.predict(obs, deterministic=True)
        b, _ = loaded.predict(obs, deterministic=True)
        np.testing.assert_array_equal(a, b)


def test_replay_buffer_too_large_is_refused_with_fix():
    env = make_env("SyntheticPixel-v0", n_envs=1, env_kwargs=dict(size=96))
    assert replay_buffer_bytes(env.observation_space, 1000) == 2 * 1000 * 3 * 96 * 96
    assert rlvision.agents.ReplayBufferTooLarge is ReplayBufferTooLargeError  # the old name still imports
    with pytest.raises(ReplayBufferTooLargeError, match=r"needs .* GiB.*buffer_size=.*optimize_memory_usage"):
        make_agent("dqn", env, backbone="nature_cnn", buffer_size=10_000_000)


def test_wrong_action_space_is_explained():
    with pytest.raises(ValueError, match="continuous"):
        make_agent("sac", synthetic("ppo"))
    with pytest.raises(ValueError, match="Discrete"):
        make_agent("dqn", synthetic("sac"))
    with pytest.raises(ValueError, match="Unknown algo"):
        make_agent("ars", synthetic("ppo"))


def test_ppo_improves_over_random_policy():
    """A short PPO run on the synthetic env beats the untrained policy's return by a clear margin."""
    env = make_env("SyntheticPixel-v0", n_envs=8, seed=0, env_kwargs=SMALL)
    eval_env = make_env("SyntheticPixel-v0", n_envs=1, seed=123, env_kwargs=SMALL)
    model = make_agent("ppo", env, backbone="mobilenetv4_nano", seed=0, n_steps=32, batch_size=64, n_epochs=4,
                       learning_rate=1e-3, clip_range=0.2)
    before = evaluate_agent(model, eval_env, 60, deterministic=False)
    model.learn(3000)
    after = evaluate_agent(model, eval_env, 60, deterministic=False)
    assert after["mean_return"] > before["mean_return"] + 0.25, (before, after)
    assert after["success_rate"] > before["success_rate"]


def test_periodic_evaluation_gives_a_learning_curve(tmp_path):
    from stable_baselines3.common.logger import configure

    from rlvision.agents import PeriodicEvaluation

    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=SMALL)
    model = make_agent("ppo", env, backbone="mobilenetv4_custom", seed=0, **FAST["ppo"])
    model.set_logger(configure(str(tmp_path), ["csv"]))
    points = []
    evaluation = PeriodicEvaluation(make_env("SyntheticPixel-v0", n_envs=2, seed=9, env_kwargs=SMALL), every=128,
                                    n_episodes=4, on_point=points.append)
    model.learn(320, callback=evaluation)
    steps = [p["steps"] for p in evaluation.curve]
    assert steps[0] == 0 and steps[-1] == model.num_timesteps  # before training, then at the end
    assert all(b - a >= 128 for a, b in zip(steps[1:-2], steps[2:-1], strict=False)) and 128 <= steps[1] < 128 + 64
    assert points == evaluation.curve
    assert all(b["seconds"] >= a["seconds"] for a, b in zip(evaluation.curve, evaluation.curve[1:], strict=False))
    assert "eval/mean_return" in (tmp_path / "progress.csv").read_text().splitlines()[0]
    with pytest.raises(ValueError, match="every"):
        PeriodicEvaluation(env, every=0)


def test_evaluation_is_deterministic_by_default_and_says_so():
    env = make_env("SyntheticPixel-v0", n_envs=1, seed=0, env_kwargs=SMALL)
    model = make_agent("ppo", env, backbone="mobilenetv4_nano_rl", seed=0, n_steps=32, batch_size=32)
    runs = [evaluate_agent(model, make_env("SyntheticPixel-v0", n_envs=1, seed=5, env_kwargs=SMALL), 10)
            for _ in range(2)]
    assert runs[0] == runs[1] and runs[0]["deterministic"] is True
    assert evaluate_agent(model, env, 2, deterministic=False)["deterministic"] is False


def test_linear_schedule_string_anneals_the_learning_rate_and_survives_save(tmp_path):
    """RL Zoo's "lin_<start>": the optimizer's lr falls linearly over learn() and the schedule is saved with the
    model; anything else that is a string is refused with the key named."""
    from stable_baselines3 import PPO

    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=40, grid=3))
    model = make_agent("ppo", env, backbone="nature_cnn", seed=0, learning_rate="lin_1e-3", n_steps=16,
                       batch_size=32, n_epochs=1)
    assert model.lr_schedule(1.0) == pytest.approx(1e-3) and model.lr_schedule(0.25) == pytest.approx(2.5e-4)
    lrs = []
    model.train = lambda train=model.train: (lrs.append(model.lr_schedule(model._current_progress_remaining)),
                                             train())
    model.learn(96)  # three updates, after 32, 64 and 96 of 96 steps (SB3 updates the progress before train)
    assert lrs == pytest.approx([2e-3 / 3, 1e-3 / 3, 0.0])
    assert model.policy.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
    del model.train
    model.save(tmp_path / "m.zip")
    loaded = PPO.load(tmp_path / "m.zip", env=env)
    assert loaded.lr_schedule(0.5) == pytest.approx(5e-4)
    for bad in ("cos_1e-3", "lin_x", "lin_-1"):
        with pytest.raises(ValueError, match="learning_rate="):
            make_agent("ppo", env, backbone="nature_cnn", learning_rate=bad)
