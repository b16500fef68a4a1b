"""Issue 21: each family's own initialisation next to SB3's, the acting = learning norms, and models saved before."""

import os

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from safetensors.torch import save_file
from torch import nn

import rlvision
from rlvision.backbones.mobilenetv4 import UIB, FusedIB
from rlvision.inference_copy import InferenceCopy, foldable_pairs
from rlvision.layers import BatchRenorm2d, ConvNormAct, PhaseBatchNorm2d, RunningBatchNorm2d
from rlvision.envs import make_env

from conftest import tolerance

DATA = os.path.join(os.path.dirname(__file__), "data", "saved")
FRAMES = spaces.Box(0, 255, (4, 84, 84), np.uint8)


def _ppo(backbone, **kwargs):
    env = make_env("SyntheticPixel-v0", n_envs=1, seed=0, env_kwargs=dict(size=48, grid=4))
    return PPO("CnnPolicy", env, n_steps=16, batch_size=16, device="cpu", seed=0,
               policy_kwargs=rlvision.policy_kwargs(backbone, **kwargs))


def test_default_init_follows_the_family():
    assert rlvision.backbone_info("nature_cnn").default_init == "sb3"
    for name in ("impala_cnn", "mobilenetv4_nano_rl", "mobilenetv4_small_rl", "mnv4_conv_small"):
        assert rlvision.backbone_info(name).default_init == "backbone"
    with pytest.raises(ValueError, match="init must be one of"):
        rlvision.VisionExtractor(FRAMES, "nature_cnn", init="xavier")


def test_backbone_init_survives_sb3_and_starts_residual_blocks_as_identity():
    extractor = _ppo("mobilenetv4_nano_rl", init="backbone").policy.features_extractor
    blocks = [m for m in extractor.backbone.modules() if isinstance(m, (UIB, FusedIB))]
    skips = [b for b in blocks if b.has_skip]
    assert skips and all(torch.all(b.project.norm.weight == 0) for b in skips)
    assert all(torch.all(b.project.norm.weight == 1) for b in blocks if not b.has_skip)
    dw = next(m for m in extractor.backbone.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
    fan_out = dw.kernel_size[0] * dw.kernel_size[1] * dw.out_channels // dw.groups
    # kaiming fan-out, not orthogonal
    assert float(dw.weight.detach().std()) == pytest.approx((2 / fan_out) ** 0.5, rel=0.2)
    # SB3's orthogonal init (gain sqrt(2)) still reaches the extractor's own linear head
    w = extractor.linear[0].weight  # (256, n): orthonormal columns when n <= 256, rows otherwise
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    assert torch.allclose(gram, 2 * torch.eye(gram.shape[0]), atol=1e-4)


def test_sb3_init_is_todays_behaviour():
    extractor = _ppo("mobilenetv4_nano_rl", init="sb3").policy.features_extractor
    conv = next(m for m in extractor.backbone.modules() if isinstance(m, nn.Conv2d) and m.groups == 1
                and m.kernel_size == (1, 1) and m.out_channels <= m.in_channels)
    flat = conv.weight.flatten(1)  # orthogonal_ with gain sqrt(2): orthogonal rows
    assert torch.allclose(flat @ flat.T, 2 * torch.eye(flat.shape[0]), atol=1e-4)
    assert all(torch.all(m.weight == 1) for m in extractor.backbone.modules() if isinstance(m, nn.BatchNorm2d))


def test_nature_cnn_keeps_sb3_init():
    torch.manual_seed(0)
    default = _ppo("nature_cnn").policy.state_dict()
    torch.manual_seed(0)
    explicit = _ppo("nature_cnn", init="sb3").policy.state_dict()
    assert all(torch.equal(default[k], explicit[k]) for k in default)


def test_impala_feature_scale_at_init_is_within_10x_of_nature_cnn():
    from functools import partial

    from stable_baselines3.common.policies import BasePolicy

    x = torch.rand(64, 4, 84, 84)

    def feature_rms(backbone):  # the extractor as an SB3 policy initialises it
        extractor = rlvision.VisionExtractor(FRAMES, backbone)
        extractor.apply(partial(BasePolicy.init_weights, gain=np.sqrt(2)))
        with torch.no_grad():
            return float(extractor.backbone.forward_features(x).pow(2).mean().sqrt())

    nature, impala = feature_rms("nature_cnn"), feature_rms("impala_cnn")
    assert nature / 10 <= impala <= nature * 10, (nature, impala)


def test_pretrained_backbone_is_never_reinitialised(tmp_path):
    from test_pretrained import timm_checkpoint

    state, _ = timm_checkpoint("conv_small")
    path = str(tmp_path / "conv_small.safetensors")
    save_file({k: v.float().contiguous() for k, v in state.items()}, path)
    space = spaces.Box(0, 255, (3, 64, 64), np.uint8)
    reference = rlvision.create_backbone("mnv4_conv_small", in_channels=3, pretrained=path).state_dict()
    env = make_env("SyntheticPixel-v0", n_envs=1, seed=0, env_kwargs=dict(size=64, grid=4))
    policy = PPO("CnnPolicy", env, n_steps=16, batch_size=16, device="cpu", policy_kwargs=rlvision.policy_kwargs(
        "mnv4_conv_small", pretrained=path, init="backbone")).policy
    loaded = policy.features_extractor.backbone.state_dict()
    assert all(torch.equal(reference[k], loaded[k]) for k in reference)
    assert space.shape == policy.observation_space.shape


def test_running_bn_acts_as_it_learns_and_tracks_statistics():
    norm = RunningBatchNorm2d(3)
    x = torch.randn(16, 3, 5, 5) * 4 + 2
    with torch.no_grad():
        norm.running_mean.fill_(1.0)
    norm.eval()
    acting = norm(x)
    norm.train()
    y = x.clone().requires_grad_(True)
    learning = norm(y)
    assert torch.allclose(acting, learning)  # the statistics as they were before the forward
    assert torch.allclose(norm.running_mean, 0.9 * 1.0 + 0.1 * x.mean((0, 2, 3)))
    learning.sum().backward()  # no gradient through batch statistics: d out / d x = weight / sqrt(var + eps)
    assert torch.allclose(y.grad, torch.full_like(y, 1 / (1 + norm.eps) ** 0.5))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_running_bn_updates_its_statistics_as_batchnorm2d_does(memory_format):
    """The statistics follow each training batch exactly as BatchNorm2d's do (momentum, unbiased variance, count),
    in both memory formats, while the output stays the one the statistics before the batch give."""
    ours, reference = RunningBatchNorm2d(6), nn.BatchNorm2d(6)
    ours.train(), reference.train()
    for step in range(3):
        x = (torch.randn(16, 6, 7, 7) * (step + 2) + step).contiguous(memory_format=memory_format)
        before = ours.running_mean.clone(), ours.running_var.clone()
        out = ours(x)
        reference(x)
        expected = (x - before[0].view(1, -1, 1, 1)) / (before[1].view(1, -1, 1, 1) + ours.eps).sqrt()
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.running_mean, reference.running_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours.running_var, reference.running_var, rtol=1e-6, atol=1e-6)
    assert ours.num_batches_tracked.item() == reference.num_batches_tracked.item() == 3


def test_batch_renorm_equals_running_statistics_until_clipped():
    norm = BatchRenorm2d(3, r_max=100.0, d_max=100.0)
    x = torch.randn(32, 3, 6, 6) * 3 + 1
    with torch.no_grad():
        norm.running_mean.copy_(torch.tensor([0.5, 1.0, 2.0]))
        norm.running_var.copy_(torch.tensor([4.0, 9.0, 1.0]))
    norm.eval()
    acting = norm(x)
    norm.train()
    y = x.clone().requires_grad_(True)
    learning = norm(y)
    assert torch.allclose(acting, learning, atol=1e-5)
    learning.sum().backward()  # gradients do flow through the batch statistics (unlike running_bn): sum is constant
    assert y.grad.abs().max() < 1e-4
    clipped = BatchRenorm2d(3)  # r_max 3: a batch with 10x the running std is not the eval output
    clipped.train()
    assert not torch.allclose(clipped(x * 10), (x * 10 - 0) / 1, atol=1e-2)


@pytest.mark.parametrize("norm", ["running_bn", "brn"])
def test_new_norms_fold_into_the_inference_copy(norm, device, exact_cuda):
    extractor = rlvision.VisionExtractor(FRAMES, "mobilenetv4_nano_rl", norm=norm).to(device)
    extractor.train()
    x = torch.rand(8, 4, 84, 84, device=device)
    for _ in range(3):
        extractor(x)  # statistics away from (0, 1)
    extractor.eval()
    copy = InferenceCopy(extractor)
    with torch.no_grad():
        folded = copy(x)
        assert len(foldable_pairs(extractor)) == len(copy.folds) > 10
        torch.testing.assert_close(folded, extractor.linear(extractor.pool(extractor.backbone.forward_features(
            x.contiguous(memory_format=torch.channels_last)))), **tolerance(device))


def _act(model, saved):
    model.policy.set_training_mode(False)
    obs = model.policy.obs_to_tensor(saved["obs"])[0]
    with torch.no_grad():
        probs = model.policy.get_distribution(obs).distribution.probs
        values = model.policy.predict_values(obs)
    np.testing.assert_allclose(probs.numpy(), saved["probs"], atol=1e-6)
    np.testing.assert_allclose(values.numpy(), saved["values"], atol=1e-5)


def _norm_types(model):
    return {type(m).__name__ for m in model.policy.features_extractor.backbone.modules()
            if isinstance(m, nn.BatchNorm2d)}


def test_model_saved_before_issue_21_loads_and_acts_identically():
    """The zip was saved at 90905d6, when the preset used BatchNorm and its kwargs pinned nothing: it rebuilds with
    today's preset (RunningBatchNorm2d: the same parameters and statistics, the same eval-mode function) and acts as
    it did; SB3's custom_objects rebuilds it with BatchNorm exactly as trained, acting the same too."""
    saved = np.load(os.path.join(DATA, "ppo_nano_rl_90905d6.npz"))
    path = os.path.join(DATA, "ppo_nano_rl_90905d6.zip")
    model = PPO.load(path, device="cpu")
    _act(model, saved)
    assert _norm_types(model) == {"RunningBatchNorm2d"}
    as_trained = rlvision.policy_kwargs("mobilenetv4_nano_rl", norm="bn", init="sb3")
    old = PPO.load(path, device="cpu", custom_objects=dict(policy_kwargs=as_trained))
    _act(old, saved)
    assert _norm_types(old) == {"BatchNorm2d"}


def test_model_saved_with_the_frozen_bn_preset_loads_and_acts_identically():
    """The zip was saved at 90694ce, when the preset used frozen_bn (pinned in its kwargs): it rebuilds with
    frozen_bn, not today's running_bn, and acts as it did."""
    saved = np.load(os.path.join(DATA, "ppo_nano_rl_90694ce.npz"))
    model = PPO.load(os.path.join(DATA, "ppo_nano_rl_90694ce.zip"), device="cpu")
    assert model.policy_kwargs["features_extractor_kwargs"]["norm"] == "frozen_bn"
    _act(model, saved)
    assert _norm_types(model) == {"FrozenBatchNorm2d"}


def test_model_saved_with_nature_cnn_as_the_default_loads_and_acts_as_nature_cnn():
    """The zip was saved at 61270d4 with no encoder named, when the default was nature_cnn: it names its encoder in
    its kwargs, so it rebuilds as nature_cnn whatever rlvision.DEFAULT_BACKBONE is now, and acts as it did."""
    saved = np.load(os.path.join(DATA, "ppo_default_61270d4.npz"))
    model = PPO.load(os.path.join(DATA, "ppo_default_61270d4.zip"), device="cpu")
    assert model.policy_kwargs["features_extractor_kwargs"]["backbone"] == "nature_cnn"
    assert model.policy.features_extractor.backbone_name == "nature_cnn"
    _act(model, saved)


def test_saved_kwargs_pin_the_preset_and_the_init(tmp_path):
    model = _ppo("mobilenetv4_nano_rl")
    kwargs = model.policy_kwargs["features_extractor_kwargs"]
    assert kwargs["norm"] == "running_bn" and kwargs["init"] == "backbone" and kwargs["stem_stride"] == 4
    model.save(tmp_path / "m.zip")
    loaded = PPO.load(tmp_path / "m.zip", device="cpu")
    assert loaded.policy_kwargs["features_extractor_kwargs"] == kwargs
    obs = model.policy.obs_to_tensor(np.random.default_rng(0).integers(0, 256, (4, 3, 48, 48), dtype=np.uint8))[0]
    model.policy.set_training_mode(False)
    loaded.policy.set_training_mode(False)
    with torch.no_grad():
        assert torch.equal(model.policy.get_distribution(obs).distribution.probs,
                           loaded.policy.get_distribution(obs).distribution.probs)


def test_phase_bn_moves_its_statistics_once_per_phase_as_far_as_running_bn_would():
    """Issue 31 item 2: the statistics move at a phase's first train-mode forward only (SB3 switches to train mode
    once per update), by 1 - (1 - 0.1)^k for the k forwards of the phase before (the first: to the batch's)."""
    norm = PhaseBatchNorm2d(3).eval()
    x = torch.randn(16, 3, 5, 5) * 2 + 1
    norm.train()
    first = norm(x)
    torch.testing.assert_close(first, (x - 0.0) / (1.0 + 1e-5) ** 0.5)  # the statistics before: (0, 1)
    torch.testing.assert_close(norm.running_mean, x.mean((0, 2, 3)))  # the first update: the batch's as they are
    stats = norm.running_mean.clone(), norm.running_var.clone()
    for _ in range(3):  # the rest of the phase: fixed statistics, the same function as eval mode
        y = torch.randn(16, 3, 5, 5)
        out = norm(y)
        assert torch.equal(norm.running_mean, stats[0]) and torch.equal(norm.running_var, stats[1])
        acting = torch.nn.functional.batch_norm(y, stats[0], stats[1], norm.weight, norm.bias, False, 0.0, norm.eps)
        torch.testing.assert_close(out, acting)
    assert norm.num_batches_tracked == 1
    norm.train()  # already in train mode: no new phase
    assert norm.fixed_statistics()
    norm.eval()
    norm.train()  # a new phase, after k = 4 forwards
    z = torch.randn(16, 3, 5, 5) - 3
    norm(z)
    step = 1 - 0.9 ** 4
    torch.testing.assert_close(norm.running_mean, (1 - step) * stats[0] + step * z.mean((0, 2, 3)))


def test_phase_bn_folds_into_its_conv_except_at_a_phases_first_forward():
    torch.manual_seed(0)
    block = ConvNormAct(4, 6, 3, 1, norm="phase_bn", act="relu").double().eval()
    x = torch.randn(8, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    block.train()
    assert not block.norm.fixed_statistics()
    block(x.detach())  # the phase's first forward: the statistics move, unfolded
    assert block.norm.fixed_statistics()
    folded = block(x)
    grads = torch.autograd.grad(folded.square().sum(), [x, *block.parameters()])
    block.norm._pending = False
    plain = torch.nn.Sequential.forward(block, x)
    plain_grads = torch.autograd.grad(plain.square().sum(), [x, *block.parameters()])
    torch.testing.assert_close(folded, plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert block.norm._forwards == 3  # folded forwards count as the norm's own


def test_phase_bn_in_ppo_acts_as_it_learns_with_one_statistics_update_per_rollout():
    from rlvision.diagnostics import EncoderDiagnostics

    model = _ppo("mobilenetv4_cpu_rl", norm="phase_bn")
    model.n_epochs = 2
    diagnostics = EncoderDiagnostics(budget=None)
    model.learn(64, callback=diagnostics)  # 4 rollouts of 16 steps, 2 epochs of one minibatch each
    norms = [m for m in model.policy.modules() if isinstance(m, PhaseBatchNorm2d)]
    assert norms and all(int(n.num_batches_tracked) == 4 for n in norms)
    assert max(h["value_rel_diff"] for h in diagnostics.history) < 1e-5
    assert max(h["action_kl"] for h in diagnostics.history) < 1e-8
