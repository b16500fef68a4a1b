"""The RL speed path: inference copy, channels_last, frozen BatchNorm, RL presets, torch.compile option."""

import copy

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.utils import polyak_update

import rlvision
from rlvision.agents import make_agent
from rlvision.envs import make_env
from rlvision import VisionExtractor
from rlvision.inference_copy import InferenceCopy, foldable_pairs
from conftest import HAS_CUDA, tolerance

SPACE = spaces.Box(0, 255, (4, 84, 84), np.uint8)
PRESETS = ["mobilenetv4_nano_rl", "mobilenetv4_small_rl"]


def trained_bn_extractor(backbone: str, device: str = "cpu", **kwargs) -> VisionExtractor:
    """An extractor whose BatchNorm running statistics are no longer (0, 1), so folding them is really tested."""
    ext = VisionExtractor(SPACE, backbone, features_dim=32, **kwargs).to(device).train()
    with torch.no_grad():
        for _ in range(3):
            ext(torch.rand(16, 4, 84, 84, device=device) * 2)
    return ext.eval()


def plain_forward(ext: VisionExtractor, x: torch.Tensor) -> torch.Tensor:
    ext.inference_copy = False
    try:
        with torch.no_grad():
            return ext(x)
    finally:
        ext.inference_copy = True


@pytest.mark.parametrize("backbone", ["nature_cnn", "mobilenetv4_nano", "mnv4_conv_small", "mnv4_hybrid_medium",
                                      *PRESETS])
def test_inference_copy_matches_eval_mode(backbone, device, exact_cuda):
    ext = trained_bn_extractor(backbone, device)
    x = torch.rand(8, 4, 84, 84, device=device)
    with torch.no_grad():
        fast = ext(x)
    assert ext._inference.syncs == 1
    assert torch.allclose(fast, plain_forward(ext, x), **tolerance(device))
    pairs = foldable_pairs(ext)
    assert len(ext._inference.folds) == len(pairs) and foldable_pairs(ext._inference.model) == []
    assert (len(pairs) > 0) == (backbone not in ("nature_cnn", "mobilenetv4_nano"))  # no BatchNorm in those two


def test_inference_copy_is_not_part_of_the_module():
    fast = VisionExtractor(SPACE, "mobilenetv4_nano_rl")
    plain = VisionExtractor(SPACE, "mobilenetv4_nano_rl", inference_copy=False)
    with torch.no_grad():
        fast.train().eval()(torch.rand(2, 4, 84, 84))
    assert fast._inference.syncs == 1
    assert fast.state_dict().keys() == plain.state_dict().keys()
    assert sum(p.numel() for p in fast.parameters()) == sum(p.numel() for p in plain.parameters())


def test_inference_copy_only_without_autograd_in_eval_mode_after_training_mode():
    ext = VisionExtractor(SPACE, "mobilenetv4_nano_rl").eval()
    with torch.no_grad():
        ext(torch.rand(2, 4, 84, 84))  # never trained (e.g. an SB3 target network): the plain path
    assert ext._inference.syncs == 0
    ext.train().eval()
    out = ext(torch.rand(2, 4, 84, 84))  # grad enabled: the training path, so gradients flow
    assert out.requires_grad and ext._inference.syncs == 0
    with torch.no_grad():
        ext.train()(torch.rand(2, 4, 84, 84))
    assert ext._inference.syncs == 0


def test_resync_after_a_training_step_picks_up_new_weights(device, exact_cuda):
    ext = trained_bn_extractor("mobilenetv4_nano_rl", device)
    x = torch.rand(8, 4, 84, 84, device=device)
    with torch.no_grad():
        before = ext(x)
        ext(x)
    assert ext._inference.syncs == 1  # unchanged weights: no re-sync
    optimizer = torch.optim.Adam(ext.parameters(), lr=1e-2)
    ext.train()
    ext(torch.rand(16, 4, 84, 84, device=device)).sum().backward()
    optimizer.step()
    ext.eval()
    with torch.no_grad():
        after = ext(x)
    assert ext._inference.syncs == 2
    assert not torch.allclose(before, after, atol=1e-4)
    assert torch.allclose(after, plain_forward(ext, x), **tolerance(device))


def test_resync_after_a_fused_adam_step_in_sac(device):
    """Fused Adam does not bump tensor version counters: the switch to train mode marks the copy stale instead.
    At the device's default precision (TF32 convolutions on CUDA), hence the device's tolerance."""
    env = make_env("SyntheticPixelContinuous-v0", n_envs=1, seed=0, env_kwargs=dict(size=48))
    model = make_agent("sac", env, backbone="mobilenetv4_nano_rl", seed=0, buffer_size=200, learning_starts=20,
                       batch_size=8, device=device)
    model.learn(60)
    ext = model.policy.actor.features_extractor
    assert model.policy.actor.optimizer.defaults["fused"] and ext._inference.syncs > 1
    obs = np.stack([env.observation_space.sample() for _ in range(8)])
    fast, _ = model.predict(obs, deterministic=True)
    ext.inference_copy = False
    plain, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(fast, plain, **tolerance(device))
    env.close()


def test_resync_after_load_state_dict_and_polyak_update(device, exact_cuda):
    ext = trained_bn_extractor("mnv4_conv_small", device)
    other = trained_bn_extractor("mnv4_conv_small", device)
    x = torch.rand(4, 4, 84, 84, device=device)
    with torch.no_grad():
        ext(x)
        ext.load_state_dict(other.state_dict())
        assert torch.allclose(ext(x), plain_forward(other, x), **tolerance(device))
        polyak_update(ext.parameters(), other.parameters(), tau=0.5)  # in place, as SB3 updates target networks
        assert torch.allclose(other(x), plain_forward(other, x), **tolerance(device))
    assert ext._inference.syncs == 2 and other._inference.syncs == 1


def test_deepcopy_gets_its_own_inference_copy():
    ext = trained_bn_extractor("mobilenetv4_nano_rl")
    x = torch.rand(4, 4, 84, 84)
    with torch.no_grad():
        ext(x)
        twin = copy.deepcopy(ext)
        assert twin._inference.source is twin.encoder and twin._inference.syncs == 0
        assert torch.allclose(twin(x), ext(x), atol=1e-6)


@pytest.mark.parametrize("backbone", ["nature_cnn", "mobilenetv4_nano_rl"])
def test_ppo_rollout_actions_equal_plain_eval_actions(backbone, device, exact_cuda):
    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=48))
    model = make_agent("ppo", env, backbone=backbone, seed=0, n_steps=32, batch_size=32, n_epochs=1, device=device)
    model.learn(64)
    ext = model.policy.features_extractor
    obs = np.stack([env.observation_space.sample() for _ in range(64)])
    fast_actions, _ = model.predict(obs, deterministic=True)
    ext.inference_copy = False
    plain_actions, _ = model.predict(obs, deterministic=True)
    assert ext._inference.syncs >= 1
    np.testing.assert_array_equal(fast_actions, plain_actions)
    env.close()


def test_dqn_online_network_uses_the_copy_and_target_network_does_not(device, exact_cuda):
    """SB3 updates target networks in place through ``.data`` (invisible to version counters): they keep the plain
    path, while the online network that collects the rollouts uses the copy."""
    env = make_env("SyntheticPixel-v0", n_envs=1, seed=0, env_kwargs=dict(size=48))
    model = make_agent("dqn", env, backbone="mobilenetv4_nano_rl", seed=0, buffer_size=500, learning_starts=50,
                       train_freq=4, target_update_interval=50, device=device)
    model.learn(200)
    target, online = model.policy.q_net_target.features_extractor, model.policy.q_net.features_extractor
    assert target._inference.syncs == 0 and not target.inference_copy_active
    assert online._inference.syncs >= 1
    obs = torch.rand(4, 3, 48, 48, device=device)
    online.eval()
    with torch.no_grad():
        assert torch.allclose(online(obs), plain_forward(online, obs), **tolerance(device))
        tensors = [*online.parameters(), *(b for b in online.buffers() if b.is_floating_point())]
        targets = [*target.parameters(), *(b for b in target.buffers() if b.is_floating_point())]
        polyak_update(tensors, targets, tau=1.0)
        assert torch.allclose(target(obs), plain_forward(online, obs), **tolerance(device))
    env.close()


@pytest.mark.parametrize("backbone", ["nature_cnn", "mobilenetv4_nano_rl", "mnv4_conv_small"])
def test_channels_last_training_matches_contiguous(backbone, device):
    # float64 (no TF32 on CUDA): in float32 the two layouts round differently and train-mode BatchNorm at batch 8
    # amplifies that to ~1% in the stem's gradient; in float64 they agree to ~1e-13, so any real difference would show
    cl = VisionExtractor(SPACE, backbone, features_dim=32, channels_last=True).double().to(device)
    plain = VisionExtractor(SPACE, backbone, features_dim=32, channels_last=False).double().to(device)
    plain.load_state_dict(cl.state_dict())
    conv = next(m for m in cl.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(8, 4, 84, 84, dtype=torch.float64, device=device)
    a, b = cl(x), plain(x)
    assert torch.allclose(a, b, atol=1e-10)
    a.sum().backward()
    b.sum().backward()
    for (name, p), q in zip(cl.named_parameters(), plain.parameters(), strict=False):
        assert torch.allclose(p.grad, q.grad, atol=1e-9 * (1 + q.grad.abs().max().item())), name


def test_channels_last_survives_sb3_init_and_save_load(tmp_path, device):
    env = make_env("SyntheticPixel-v0", n_envs=1, seed=0, env_kwargs=dict(size=48))
    model = make_agent("ppo", env, backbone="mobilenetv4_nano_rl", seed=0, n_steps=16, batch_size=16, n_epochs=1,
                       device=device)
    ext = model.policy.features_extractor
    assert ext.channels_last
    conv = ext.backbone.features[0].conv
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    model.learn(16)
    model.save(tmp_path / "m.zip")
    loaded = type(model).load(tmp_path / "m.zip", env=env, device=device)
    obs = np.stack([env.observation_space.sample() for _ in range(8)])
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0],
                                  loaded.predict(obs, deterministic=True)[0])
    env.close()


def test_frozen_bn_is_the_same_in_train_and_eval_and_never_updates():
    norm = rlvision.layers.make_norm("frozen_bn", 6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(4, 6, 5, 5) * 3 + 1
    train_out = norm.train()(x)
    assert torch.allclose(train_out, norm.eval()(x))
    assert torch.equal(norm.running_mean, torch.zeros(6)) and torch.equal(norm.running_var, torch.ones(6))
    expected = x / (1 + norm.eps) ** 0.5 * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)
    assert torch.allclose(train_out, expected, atol=1e-6)


def test_frozen_bn_backbone_folds_and_matches(device, exact_cuda):
    ext = trained_bn_extractor("mobilenetv4_nano_rl", device, norm="frozen_bn")
    x = torch.rand(8, 4, 84, 84, device=device)
    with torch.no_grad():
        ext.train()
        train_out = ext(x)
        ext.eval()
        fast = ext(x)
    assert len(ext._inference.folds) > 0
    assert torch.allclose(fast, train_out, **tolerance(device))


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("channels,side", [(1, 64), (4, 84), (3, 96)])
def test_presets_keep_the_extractor_contract(name, channels, side):
    space = spaces.Box(0, 255, (channels, side, side), np.uint8)
    ext = VisionExtractor(space, name, features_dim=48)
    x = torch.rand(3, channels, side, side)
    assert ext(x).shape == (3, 48)
    with torch.no_grad():
        assert ext.eval()(x).shape == (3, 48)
    assert rlvision.backbone_info(name).min_input_size == 16
    with pytest.raises(ValueError, match="minimum side 16"):
        VisionExtractor(spaces.Box(0, 255, (channels, 12, 12), np.uint8), name)


def test_preset_parameter_counts():
    # headless, 4 input channels (a frame stack); the seed variant with a 4x4 stride-4 stem, BN, residuals
    counts = {name: rlvision.count_parameters(rlvision.create_backbone(name, in_channels=4)) for name in PRESETS}
    assert counts == {"mobilenetv4_nano_rl": 64_408, "mobilenetv4_small_rl": 228_456}
    net = rlvision.create_backbone("mobilenetv4_nano_rl", in_channels=4)
    assert net.total_stride == 16 and net.feature_shape(84, 84) == (24, 6, 6)


def test_compile_option_matches_eager():
    ext = VisionExtractor(SPACE, "nature_cnn", features_dim=16, compile=True)
    eager = VisionExtractor(SPACE, "nature_cnn", features_dim=16)
    eager.load_state_dict(ext.state_dict())
    x = torch.rand(4, 4, 84, 84)
    assert torch.allclose(ext(x), eager(x), atol=1e-5)
    assert ext._compiled.fn is not None
    assert copy.deepcopy(ext)._compiled.fn is None


def test_inference_copy_wraps_any_module():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
    net[1].running_mean.uniform_(-1, 1)
    twin = InferenceCopy(net)
    x = torch.rand(2, 3, 10, 10)
    with torch.no_grad():
        assert torch.allclose(twin(x), net(x), atol=1e-6)
    assert isinstance(twin.model[1], torch.nn.Identity)


@pytest.mark.parametrize("algo", ["ppo", "sac", "dqn", "a2c"])
def test_fused_adam_keeps_sb3_defaults(algo):
    env_id = "SyntheticPixelContinuous-v0" if algo == "sac" else "SyntheticPixel-v0"
    env = make_env(env_id, n_envs=1, seed=0, env_kwargs=dict(size=48))
    extra = dict(buffer_size=100) if algo in ("sac", "dqn") else {}
    model = make_agent(algo, env, backbone="nature_cnn", seed=0, **extra)
    optimizer = (model.policy.actor.optimizer if algo == "sac" else model.policy.optimizer)
    group = optimizer.param_groups[0]
    if algo == "a2c":
        assert not isinstance(optimizer, torch.optim.Adam)
    else:
        assert isinstance(optimizer, torch.optim.Adam) and group["fused"] is True
        assert group["eps"] == (1e-5 if algo == "ppo" else 1e-8)
    unfused = rlvision.policy_kwargs("nature_cnn", algo=algo, fused_optimizer=False)
    assert "optimizer_kwargs" not in unfused
    env.close()


needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device on this machine")


def test_no_cuda_graph_on_cpu():
    ext = trained_bn_extractor("mobilenetv4_nano_rl")
    with torch.no_grad():
        ext(torch.rand(8, 4, 84, 84))
    assert ext._inference.graphs.captures == 0 and ext._inference.graph_error is None


@needs_cuda
@pytest.mark.parametrize("backbone", ["nature_cnn", "mobilenetv4_nano_rl", "mnv4_conv_small"])
def test_cuda_graph_replay_equals_eager_per_shape(backbone, exact_cuda):
    ext = trained_bn_extractor(backbone, "cuda")
    copy_ = ext._inference
    with torch.no_grad():
        for batch in (8, 8, 3, 8):
            x = torch.rand(batch, 4, 84, 84, device="cuda")
            fast = ext(x)
            with torch.inference_mode():
                eager = copy_.model(x.contiguous(memory_format=torch.channels_last) if copy_.channels_last else x)
            assert torch.allclose(fast, eager, atol=1e-6, rtol=1e-5)
            assert torch.allclose(fast, plain_forward(ext, x), **tolerance("cuda"))
    assert copy_.graphs.captures == 2 and copy_.graph_error is None  # one graph per batch size, replayed after


@needs_cuda
def test_cuda_graph_stays_valid_across_resyncs(exact_cuda):
    ext = trained_bn_extractor("mobilenetv4_nano_rl", "cuda")
    x = torch.rand(8, 4, 84, 84, device="cuda")
    optimizer = torch.optim.Adam(ext.parameters(), lr=1e-2, fused=True)
    outputs = []
    for _ in range(3):
        with torch.no_grad():
            outputs.append(ext(x))
            assert torch.allclose(outputs[-1], plain_forward(ext, x), **tolerance("cuda"))
        ext.train()
        ext(torch.rand(16, 4, 84, 84, device="cuda")).sum().backward()
        optimizer.step()
        ext.eval()
    assert ext._inference.syncs == 3 and ext._inference.graphs.captures == 1  # weights copied into the graph's tensors
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)


class _HostSync(torch.nn.Module):
    """A forward that reads a value back to the host: not capturable in a CUDA graph."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(x) * float(x.abs().max().item() > 0)


@needs_cuda
def test_uncapturable_forward_falls_back_to_eager_with_a_warning():
    net = _HostSync().cuda().eval()
    twin = InferenceCopy(net, channels_last=False)
    x = torch.rand(2, 4, device="cuda")
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        out = twin(x)
    assert twin.graph_error is not None
    torch.multinomial(torch.ones(2, 3, device="cuda"), 1)  # the CUDA RNG still works (SB3 samples actions with it)
    with torch.no_grad():
        assert torch.allclose(out, net(x)) and torch.allclose(twin(x), net(x))
