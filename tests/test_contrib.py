"""sb3-contrib's algorithms with rlvision encoders, through make_agent and through their own public classes."""

import numpy as np
import pytest
import torch

pytest.importorskip("sb3_contrib")
from sb3_contrib import TQC, MaskablePPO  # noqa: E402
from sb3_contrib.common.wrappers import ActionMasker  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import VecTransposeImage  # noqa: E402

import rlvision  # noqa: E402
from rlvision.agents import algo_class, make_agent  # noqa: E402
from rlvision.envs import SyntheticPixelEnv, make_env  # noqa: E402

SMALL = dict(size=36, grid=3)
FAST = {
    "recurrentppo": dict(n_steps=16, batch_size=32, n_epochs=1),
    "maskableppo": dict(n_steps=16, batch_size=32, n_epochs=1),
    "trpo": dict(n_steps=16, batch_size=32, n_critic_updates=2, cg_max_steps=3),
    "qrdqn": dict(buffer_size=300, learning_starts=40, train_freq=4, batch_size=16, target_update_interval=50),
    "tqc": dict(buffer_size=300, learning_starts=40, batch_size=16),
    "crossq": dict(buffer_size=300, learning_starts=40, batch_size=16),
}
CONTINUOUS = ("tqc", "crossq")
UP = 0  # the action MaskablePPO's test env forbids


def never_up(env) -> np.ndarray:
    return np.array([action != UP for action in range(4)])


def synthetic(algo, n_envs=2, seed=0):
    if algo == "maskableppo":  # MaskablePPO needs action masks from the env
        env = make_vec_env(SyntheticPixelEnv, n_envs=n_envs, seed=seed, env_kwargs=SMALL,
                           wrapper_class=ActionMasker, wrapper_kwargs=dict(action_mask_fn=never_up))
        return VecTransposeImage(env)
    env_id = "SyntheticPixelContinuous-v0" if algo in CONTINUOUS else "SyntheticPixel-v0"
    return make_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=SMALL)


def encoder_params(model):
    return {k: v.clone() for k, v in model.policy.state_dict().items() if "features_extractor" in k}


def predict_many(model, obs, algo):
    if algo == "recurrentppo":  # a few steps through the LSTM, its state carried along
        state, starts, actions = None, np.ones(len(obs), dtype=bool), []
        for _ in range(3):
            action, state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
            starts[:] = False
            actions.append(action)
        return np.stack(actions), state
    if algo == "maskableppo":
        masks = np.stack([never_up(None)] * len(obs))
        return model.predict(obs, deterministic=True, action_masks=masks)
    return model.predict(obs, deterministic=True)


@pytest.mark.parametrize("algo", sorted(FAST))
def test_contrib_algorithm_learns_saves_loads_and_acts_identically(algo, tmp_path):
    env = synthetic(algo)
    model = make_agent(algo, env, backbone="nature_cnn", seed=0, **FAST[algo])
    assert type(model) is algo_class(algo)
    extractors = [m for m in model.policy.modules() if isinstance(m, rlvision.VisionExtractor)]
    assert extractors, "the policy does not use rlvision's extractor"
    before = encoder_params(model)
    model.learn(200)
    after = encoder_params(model)
    assert model.num_timesteps >= 200
    assert any(not torch.equal(before[k], after[k]) for k in before), "the encoder did not learn"
    obs = env.reset()
    expected = predict_many(model, obs, algo)
    model.save(tmp_path / "model.zip")
    loaded = algo_class(algo).load(tmp_path / "model.zip", env=env)
    for name, tensor in model.policy.state_dict().items():
        torch.testing.assert_close(loaded.policy.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    def paths(m):  # which extractors act through the inference copy: the same in the loaded model (no flag set)
        return {name: e.inference_copy_active for name, e in m.policy.named_modules()
                if isinstance(e, rlvision.VisionExtractor)}
    assert paths(loaded) == paths(model) and any(paths(model).values())
    got = predict_many(loaded, obs, algo)
    np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(expected[0]))
    if algo == "recurrentppo":  # the LSTM states carried along agree too
        for a, b in zip(got[1], expected[1], strict=False):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_recurrent_ppo_rollouts_run_the_inference_copy_with_the_same_actions():
    env = synthetic("recurrentppo")
    model = make_agent("recurrentppo", env, backbone="mobilenetv4_nano_rl", seed=0, **FAST["recurrentppo"])
    model.learn(64)
    extractor = model.policy.features_extractor
    assert extractor.inference_copy_active  # switched on by training, serves the rollouts
    obs = env.reset()
    predict_many(model, obs, "recurrentppo")  # builds the copy
    calls = []
    extractor._inference.model.register_forward_hook(lambda *_: calls.append(1))
    with_copy, state_copy = predict_many(model, obs, "recurrentppo")
    assert calls, "predict did not go through the inference copy"
    extractor.inference_copy_active = False
    plain, state_plain = predict_many(model, obs, "recurrentppo")
    np.testing.assert_array_equal(with_copy, plain)
    for a, b in zip(state_copy, state_plain, strict=False):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_maskable_ppo_respects_the_mask_in_rollouts_and_predict():
    env = synthetic("maskableppo", n_envs=4)
    model = make_agent("maskableppo", env, backbone="nature_cnn", seed=0, **FAST["maskableppo"])
    assert isinstance(model, MaskablePPO)
    model.learn(128)
    assert UP not in model.rollout_buffer.actions.astype(int)
    obs = env.reset()
    masks = np.stack([never_up(None)] * len(obs))
    for _ in range(5):
        actions, _ = model.predict(obs, deterministic=False, action_masks=masks)
        assert UP not in actions


def test_crossq_needs_an_image_only_env_and_continuous_actions():
    with pytest.raises(ValueError, match="continuous"):
        make_agent("crossq", synthetic("ppo"))
    with pytest.raises(ValueError, match="Discrete"):
        make_agent("qrdqn", synthetic("tqc"))


def test_tqc_with_plain_sb3_contrib_and_rlvision_policy_kwargs():
    """The way an sb3-contrib user writes it: the algorithm's own class and policy name."""
    env = synthetic("tqc")
    model = TQC("CnnPolicy", env, policy_kwargs=rlvision.policy_kwargs("nature_cnn", algo="tqc"), seed=0,
                **FAST["tqc"])
    assert isinstance(model.actor.features_extractor, rlvision.VisionExtractor)
    assert model.critic.features_extractor is not model.actor.features_extractor  # separate encoders
    model.learn(64)


def test_maskable_ppo_on_the_synthetic_env_gets_its_masks_from_the_env():
    """SyntheticPixel-v0 provides action_masks() (moves off the board are masked): MaskablePPO runs on make_env's
    VecEnv as it is, and never takes a masked action."""
    from sb3_contrib.common.maskable.utils import get_action_masks

    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=36, grid=3))
    model = make_agent("maskableppo", env, backbone="nature_cnn", seed=0, n_steps=16, batch_size=32, n_epochs=1)
    model.learn(32)
    obs = env.reset()
    masked = 0
    for _ in range(20):
        masks = get_action_masks(env)
        assert masks.shape == (2, 4) and masks.any(axis=1).all()
        masked += int((~masks).sum())
        actions, _ = model.predict(obs, action_masks=masks)
        assert masks[np.arange(2), actions].all()
        obs, *_ = env.step(actions)
    assert masked > 0  # on a 3x3 board most cells have an edge
