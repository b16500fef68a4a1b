"""Encoder diagnostics (rlvision.diagnostics) on constructed cases with known answers, and as an SB3 callback."""

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

import rlvision
from rlvision.diagnostics import (EncoderDiagnostics, dormant_fraction, effective_rank, encoder_report,
                                  gradient_share, relative_rms)
from rlvision.envs import make_env


@pytest.mark.parametrize("k", [1, 5, 17])
def test_effective_rank_of_a_rank_k_matrix(k):
    u, _ = torch.linalg.qr(torch.randn(64, k))
    v, _ = torch.linalg.qr(torch.randn(32, k))
    assert effective_rank(u @ v.T) == k  # k equal singular values: all k needed for 99% of the sum


def test_effective_rank_counts_singular_values_to_99_percent():
    u, _ = torch.linalg.qr(torch.randn(50, 3))
    v, _ = torch.linalg.qr(torch.randn(20, 3))
    # singular values 100, 0.5, 0.5: the first carries 99.0% of the sum -> srank 1; with 2 each -> 3
    assert effective_rank(u @ torch.diag(torch.tensor([100.0, 0.5, 0.5])) @ v.T) == 1
    assert effective_rank(u @ torch.diag(torch.tensor([100.0, 2.0, 2.0])) @ v.T) == 3
    assert effective_rank(torch.zeros(8, 4)) == 0
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        effective_rank(torch.zeros(2, 3, 4))


def test_dormant_fraction_finds_dead_and_nearly_dead_units():
    x = torch.rand(128, 10) + 0.5
    x[:, :3] = 0  # dead
    x[:, 3] *= 0.01  # 1% of the others' activity: below tau = 0.025 of the layer's mean
    assert dormant_fraction(x) == pytest.approx(0.4)
    assert dormant_fraction(x, tau=0.0) == pytest.approx(0.3)
    maps = torch.rand(16, 8, 5, 5)
    maps[:, 1] = 0  # a dead channel of a conv map
    assert dormant_fraction(maps) == pytest.approx(1 / 8)
    assert dormant_fraction(torch.zeros(4, 6)) == 1.0


class ModeScaled(BaseFeaturesExtractor):
    """Features that are exactly twice as large in train mode as in eval mode (a known acting/learning gap)."""

    def __init__(self, observation_space, features_dim=8):
        super().__init__(observation_space, features_dim)
        self.proj = nn.Linear(int(np.prod(observation_space.shape)), features_dim)

    def forward(self, obs):
        return self.proj(obs.flatten(1)) * (2.0 if self.training else 1.0)


def test_acting_learning_gap_of_a_known_mode_difference():
    env = make_env("SyntheticPixel-v0", n_envs=1, seed=0, env_kwargs=dict(size=16, grid=2))
    model = PPO("CnnPolicy", env, n_steps=16, batch_size=16, device="cpu",
                policy_kwargs=dict(features_extractor_class=ModeScaled, net_arch=[]))
    policy = model.policy
    with torch.no_grad():  # linear heads without bias: train-mode logits and values are exactly twice the eval ones
        policy.action_net.bias.zero_()
        policy.value_net.bias.zero_()
        policy.action_net.weight.normal_(0, 0.3)
    obs = torch.randint(0, 256, (32, *env.observation_space.shape)).float()  # SB3 divides images by 255
    report = encoder_report(policy, obs)
    assert report["value_rel_diff"] == pytest.approx(0.5, abs=1e-6)  # RMS(V - 2V) / RMS(2V)
    with torch.no_grad():
        features = policy.features_extractor.proj(obs.flatten(1) / 255)
        v = policy.value_net(features)
        p = torch.log_softmax(policy.action_net(features), -1)
        q = torch.log_softmax(policy.action_net(2 * features), -1)
    assert report["value_abs_diff"] == pytest.approx(float(v.abs().mean()), rel=1e-5)
    expected_kl = float((p.exp() * (p - q)).sum(-1).mean())
    assert expected_kl > 1e-3
    assert report["action_kl"] == pytest.approx(expected_kl, rel=1e-4)
    assert relative_rms(torch.ones(3), torch.ones(3)) == 0.0


@pytest.mark.parametrize("norm, gap", [("bn", True), ("running_bn", False), ("frozen_bn", False), ("gn", False)])
def test_batchnorm_gap_is_seen_and_statistics_are_restored(norm, gap):
    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=48, grid=4))
    model = PPO("CnnPolicy", env, n_steps=32, batch_size=64, n_epochs=1, device="cpu", seed=0,
                policy_kwargs=rlvision.policy_kwargs("mobilenetv4_nano_rl", norm=norm))
    model.learn(64)
    obs = model.policy.obs_to_tensor(model.rollout_buffer.observations.reshape(-1, 3, 48, 48)[:32])[0]
    model.policy.set_training_mode(False)  # as in a rollout
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    report = encoder_report(model.policy, obs)
    after = model.policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics untouched
    assert not model.policy.training  # the mode it was in
    if gap:
        assert report["value_rel_diff"] > 0.05
    else:
        assert report["value_rel_diff"] < 1e-4 and report["action_kl"] < 1e-8
    assert 1 <= report["features_srank"] <= 32
    assert {"stage0_rms", "stage1_srank", "stage2_dormant", "grad_share"} <= set(report)
    assert 0 < report["grad_share"] <= 1


def test_gradient_share_of_known_gradients():
    policy = nn.ModuleDict(dict(encoder=nn.Linear(2, 2, bias=False), head=nn.Linear(2, 1, bias=False)))
    assert gradient_share(policy, policy["encoder"]) is None  # no update yet
    policy["encoder"].weight.grad = torch.full((2, 2), 3.0)  # squared norm 36
    policy["head"].weight.grad = torch.full((1, 2), 8.0)  # squared norm 128 -> total 164
    assert gradient_share(policy, policy["encoder"]) == pytest.approx((36 / 164) ** 0.5)


class FakeClock:
    """Seconds that advance only when told: the budget rule on fixed times, whatever the machine's speed."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_callback_logs_under_encoder_at_every_due_rollout(tmp_path):
    import csv

    from stable_baselines3.common.logger import configure

    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=48, grid=4))
    model = PPO("CnnPolicy", env, n_steps=16, batch_size=32, n_epochs=1, device="cpu", seed=0,
                policy_kwargs=rlvision.policy_kwargs("mobilenetv4_nano_rl"))
    model.set_logger(configure(str(tmp_path), ["csv"]))
    every_time = EncoderDiagnostics(budget=None)
    model.learn(32 * 4, callback=every_time)
    assert [h["steps"] for h in every_time.history] == [32, 64, 96, 128]
    with open(tmp_path / "progress.csv", newline="") as f:
        header = csv.DictReader(f).fieldnames
    assert {"encoder/value_rel_diff", "encoder/features_srank", "encoder/grad_share", "encoder/cost"} <= set(header)
    sparse = EncoderDiagnostics(budget=None, every=3)
    model.learn(32 * 6, callback=sparse)
    assert [h["steps"] for h in sparse.history] == [32, 128]  # rollouts 1 and 4 of 6 (learn counts from 0 again)
    with pytest.raises(ValueError, match="budget"):
        EncoderDiagnostics(budget=0)
    with pytest.raises(ValueError, match="budget"):
        EncoderDiagnostics(budget=1.5)


def test_callback_keeps_within_its_budget_of_training_time(monkeypatch):
    """Times from a fake clock: each rollout 'takes' 1 s of training, each report 0.3 s. With a 10% budget the
    first report always runs; a later one runs once spent + last cost <= 10% of the elapsed time."""
    import rlvision.diagnostics as diagnostics

    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=48, grid=4))
    model = PPO("CnnPolicy", env, n_steps=16, batch_size=32, n_epochs=1, device="cpu", seed=0,
                policy_kwargs=rlvision.policy_kwargs("nature_cnn"))
    clock = FakeClock()
    real_report = diagnostics.encoder_report

    def report_taking_300_ms(*args, **kwargs):
        clock.now += 0.3
        return real_report(*args, **kwargs)

    monkeypatch.setattr(diagnostics, "encoder_report", report_taking_300_ms)

    class Timeline(BaseCallback):
        """1 s of training per rollout, on the clock before the diagnostics read it (callbacks run in order)."""

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            clock.now += 1.0

    callback = EncoderDiagnostics(budget=0.1, clock=clock)
    model.learn(32 * 12, callback=[Timeline(), callback])
    # elapsed when rollout r ends: r s + 0.3 s per report so far. Report 1 at rollout 1; report 2 needs
    # 0.3 + 0.3 <= 0.1 * (r + 0.3): r = 6; report 3 needs 0.9 <= 0.1 * (r + 0.6): r = 9; report 4: r = 12
    assert [h["steps"] for h in callback.history] == [32, 6 * 32, 9 * 32, 12 * 32]
    assert callback.spent == pytest.approx(1.2)


@pytest.mark.parametrize("algo", ["sac", "dqn"])
def test_callback_works_off_policy(algo):
    from rlvision.agents import make_agent

    env_id = "SyntheticPixelContinuous-v0" if algo == "sac" else "SyntheticPixel-v0"
    env = make_env(env_id, n_envs=1, seed=0, env_kwargs=dict(size=36, grid=3))
    model = make_agent(algo, env, backbone="nature_cnn", seed=0, device="cpu", buffer_size=500, learning_starts=20,
                       batch_size=16)
    callback = EncoderDiagnostics(budget=1.0, every=20)
    model.learn(60, callback=callback)
    assert callback.history and "features_srank" in callback.history[-1]
    if algo == "sac":
        assert callback.history[-1]["action_kl"] == pytest.approx(0.0, abs=1e-9)  # NatureCNN: no mode dependence
