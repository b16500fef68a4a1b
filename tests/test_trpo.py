"""rlvision.trpo.TRPO: sb3-contrib's TRPO with the actor gradients gathered in one autograd call (issue 20)."""

import pytest
import torch

pytest.importorskip("sb3_contrib")

from sb3_contrib import TRPO as ContribTRPO  # noqa: E402, N811 (an acronym class, not a constant)

import rlvision  # noqa: E402
from rlvision.agents import algo_class, make_agent  # noqa: E402
from rlvision.envs import make_env  # noqa: E402
from rlvision.trpo import TRPO  # noqa: E402


def _one_update(cls, backbone):
    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=48, grid=4))
    model = cls("CnnPolicy", env, n_steps=32, batch_size=64, seed=0, device="cpu",
                policy_kwargs=rlvision.policy_kwargs(backbone, algo="trpo"))
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(64)  # one rollout, one update
    return before, model.policy.state_dict()


@pytest.mark.parametrize("backbone", ["nature_cnn", "mobilenetv4_nano_rl"])
def test_one_update_equals_sb3_contribs(backbone):
    start, theirs = _one_update(ContribTRPO, backbone)
    same_start, ours = _one_update(TRPO, backbone)
    assert all(torch.equal(start[k], same_start[k]) for k in start)
    assert any(not torch.equal(start[k], ours[k]) for k in start)  # the update moved the policy
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-6, rtol=1e-5, msg=key)


def test_make_agent_builds_it_and_zips_load_either_way(tmp_path):
    env = make_env("SyntheticPixel-v0", n_envs=1, seed=0, env_kwargs=dict(size=36, grid=3))
    model = make_agent("trpo", env, backbone="nature_cnn", n_steps=32, batch_size=32, seed=0, device="cpu")
    assert type(model) is TRPO and algo_class("trpo") is TRPO
    model.learn(32)
    model.save(tmp_path / "ours.zip")
    loaded = ContribTRPO.load(tmp_path / "ours.zip", device="cpu")
    obs = env.observation_space.sample()[None]
    assert (loaded.predict(obs, deterministic=True)[0] == model.predict(obs, deterministic=True)[0]).all()
    assert type(TRPO.load(tmp_path / "ours.zip", device="cpu")) is TRPO
