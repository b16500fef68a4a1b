"""Super-resolution stages: exact counts, reparameterization, shapes on odd sizes, loss, RL integration."""

import numpy as np
import pytest
import torch

import rlvision
from rlvision.agents import make_agent
from rlvision.envs import downscale, make_env
from rlvision.commands import train_sr
from rlvision import count_parameters, create_preprocess, load_preprocess, save_preprocess
from rlvision.sr.flexnet import OmniShift
from rlvision.sr.metrics import edge_weighted_l1, psnr, ssim

TINY = {  # fast configs of each network for shape tests
    "flexnet": dict(dim=8, num_blocks=(1,)),
    "flexnet_lmlt": dict(dim=8, num_blocks=(1,), attention="lmlt"),
    "flexnet_meta": dict(dim=4, num_blocks=(1, 1, 1, 1)),
    "transformer_sr": dict(dim=16, num_blocks=1, num_heads=2),
}


@pytest.mark.parametrize("name, scale, count", [("flexnet", 4, 3_045_136), ("flexnet", 2, 3_003_628),
                                                ("flexnet_meta", 4, 38_053_568), ("transformer_sr", 4, 12_753_968)])
def test_exact_parameter_counts(name, scale, count):
    assert count_parameters(create_preprocess(name, scale=scale)) == count


def test_registry():
    assert {"identity", "bicubic", "flexnet", "flexnet_meta", "flexnet_rl", "transformer_sr",
            "transformer_sr_rl"} <= set(rlvision.list_preprocess())
    with pytest.raises(ValueError, match="Unknown preprocessing stage 'flexnett'.*flexnet"):
        create_preprocess("flexnett")


def test_omnishift_reparameterization_is_exact():
    shift = OmniShift(6).eval()
    for conv in (shift.conv1x1, shift.conv3x3, shift.conv5x5):
        torch.nn.init.normal_(conv.weight)
    x = torch.randn(2, 6, 13, 11)
    plain = shift(x)
    shift.reparameterize()
    assert shift.deploy and not shift.fused.requires_grad
    torch.testing.assert_close(shift(x), plain, atol=1e-5, rtol=0)
    shift.train()
    assert not shift.deploy


@pytest.mark.parametrize("name", ["flexnet_rl", "flexnet"])
def test_whole_flexnet_reparameterized_equals_unfused(name):
    kwargs = {} if name == "flexnet_rl" else TINY["flexnet"]
    net = create_preprocess(name, scale=2, channels=1, **kwargs).eval()
    x = torch.rand(2, 1, 21, 21)
    with torch.no_grad():
        plain = net(x)
        fused = net.reparameterize()(x)
    assert all(m.deploy for m in net.modules() if isinstance(m, OmniShift))
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=0)


def test_loaded_weights_are_used_not_a_stale_fused_kernel(tmp_path):
    a = create_preprocess("flexnet_rl", channels=1).eval()
    b = create_preprocess("flexnet_rl", channels=1).eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        a.reparameterize()(x)  # a now runs its own fused kernels
        save_preprocess(b, str(tmp_path / "b.pt"))
        load_preprocess(a, str(tmp_path / "b.pt"))
        torch.testing.assert_close(a(x), b(x), atol=1e-6, rtol=0)


def test_mismatched_weights_are_refused(tmp_path):
    save_preprocess(create_preprocess("flexnet_rl", channels=1), str(tmp_path / "w.pt"))
    with pytest.raises(ValueError, match="holds weights for flexnet_rl"):
        load_preprocess(create_preprocess("flexnet_rl", channels=3), str(tmp_path / "w.pt"))
    torch.save({"nonsense": torch.zeros(1)}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="does not fit"):
        load_preprocess(create_preprocess("flexnet_rl", channels=1), str(tmp_path / "bare.pt"))
    with pytest.raises(FileNotFoundError, match="rlvision train-sr"):
        load_preprocess(create_preprocess("flexnet_rl", channels=1), str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("name, scale", [(n, s) for n in sorted(TINY) + ["bicubic"] for s in (1, 2, 4)]
                         + [("identity", 1)])
@pytest.mark.parametrize("side", [21, 42, 84])
def test_shapes_on_odd_sizes(name, scale, side):
    base = "flexnet" if name.startswith("flexnet") and name != "flexnet_meta" else name
    stage = create_preprocess(base, scale=scale, channels=3, **TINY.get(name, {})).eval()
    with torch.no_grad():
        assert stage(torch.rand(2, 3, side, side)).shape == (2, 3, side * scale, side * scale)


def test_rl_presets_start_as_bicubic():
    x = torch.rand(2, 1, 21, 21)
    expect = torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    for name in ("flexnet_rl", "transformer_sr_rl"):
        stage = create_preprocess(name, channels=1).eval()
        torch.testing.assert_close(stage(x), expect, atol=1e-6, rtol=0)


@pytest.mark.parametrize("window", [4, 16])
def test_any_window_size(window):
    stage = create_preprocess("flexnet", scale=2, channels=1, dim=8, num_blocks=(1,), window_size=window)
    assert stage(torch.rand(1, 1, 21, 30)).shape == (1, 1, 42, 60)


def test_transformer_sr_scaling_flag():
    torch.manual_seed(0)
    default = create_preprocess("transformer_sr", scale=2, **TINY["transformer_sr"]).eval()
    upstream = create_preprocess("transformer_sr", scale=2, upstream_scaling=True, **TINY["transformer_sr"]).eval()
    upstream.load_state_dict(default.state_dict())
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert not torch.allclose(default(x), upstream(x))


def test_edge_loss():
    img = torch.rand(2, 3, 16, 16)
    assert edge_weighted_l1(img, img).item() == 0
    assert edge_weighted_l1(img + 0.1, img).item() > 0
    flat = torch.full((1, 1, 16, 16), 0.5)
    off = flat.clone()
    off[..., 4:12, 4:12] += 0.1  # an error inside a flat region (zero padding makes the border an edge)
    assert edge_weighted_l1(off, flat, floor=0.0).item() == 0  # the seed's loss ignores flat regions
    assert edge_weighted_l1(off, flat, floor=0.1).item() > 0


def test_metrics():
    img = torch.rand(2, 1, 32, 32)
    assert ssim(img, img).item() == pytest.approx(1.0, abs=1e-4)
    assert psnr(img, (img + 0.01).clamp(0, 1)).item() > 35
    assert ssim(img, torch.rand_like(img)).item() < 0.2


@pytest.mark.parametrize("global_skip, factor", [(False, 0.7), (True, 0.97)])
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(global_skip, factor):
    """30 AdamW steps on one batch; with the bicubic skip the start is already bicubic's loss, so less to gain."""
    torch.manual_seed(0)
    stage = create_preprocess("flexnet_rl", channels=1, global_skip=global_skip)
    hr = torch.rand(4, 1, 24, 24)
    lr = train_sr.shrink(hr, 2, "area")
    opt = torch.optim.AdamW(stage.parameters(), lr=2e-3)
    first = None
    for _ in range(30):
        loss = edge_weighted_l1(stage(lr), hr)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < factor * first


def test_low_res_wrapper():
    frames = np.arange(2 * 1 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4)
    np.testing.assert_array_equal(downscale(frames, 2)[0, 0], [[2, 4], [10, 12]])  # 2x2 means, rounded
    env = make_env("SyntheticPixel-v0", n_envs=2, env_kwargs=dict(size=84), low_res=2)
    assert env.observation_space.shape == (3, 42, 42) and env.reset().shape == (2, 3, 42, 42)
    with pytest.raises(ValueError, match="interpolation"):
        make_env("SyntheticPixel-v0", low_res=2, low_res_interpolation="lanczos")


def test_ppo_with_a_frozen_sr_stage_on_low_res_frames(tmp_path, device):
    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=64, grid=3), low_res=2)
    weights = tmp_path / "sr.pt"
    save_preprocess(create_preprocess("flexnet_rl", scale=2, channels=3), str(weights))
    model = make_agent("ppo", env, backbone="mobilenetv4_custom", seed=0, n_steps=32, batch_size=32, n_epochs=1,
                       backbone_kwargs=dict(preprocess="flexnet_rl", preprocess_kwargs=dict(scale=2),
                                            preprocess_weights=str(weights)), device=device)
    extractor = model.policy.features_extractor
    stage = extractor.preprocess
    assert stage.scale == 2 and not stage.training
    saved = torch.load(weights, weights_only=True)["state_dict"]  # SB3's orthogonal init must not overwrite them
    assert all(torch.equal(saved[k], v.cpu()) for k, v in stage.state_dict().items() if not k.endswith(".fused"))
    before = {k: v.clone() for k, v in extractor.state_dict().items()}
    model.learn(128)
    after = extractor.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder.preprocess."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("encoder.backbone."))
    assert not stage.training and all(m.deploy for m in stage.modules() if isinstance(m, OmniShift))
    model.save(tmp_path / "ppo.zip")
    loaded = type(model).load(tmp_path / "ppo.zip", env=env, device=device)
    obs = env.reset()
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0],
                                  loaded.predict(obs, deterministic=True)[0])


def test_trainable_sr_stage_learns_end_to_end():
    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=64, grid=3), low_res=2)
    model = make_agent("ppo", env, backbone="mobilenetv4_custom", seed=0, n_steps=32, batch_size=32, n_epochs=1,
                       backbone_kwargs=dict(preprocess="flexnet_rl", freeze_preprocess=False))
    stage = model.policy.features_extractor.preprocess
    before = {k: v.clone() for k, v in stage.state_dict().items()}
    model.learn(64)
    assert any(not torch.equal(before[k], v) for k, v in stage.state_dict().items())


def test_train_sr_script_and_weights_in_the_extractor(tmp_path):
    result = train_sr.main(["--env", "SyntheticPixel-v0", "--env-kwargs", "{size: 48}", "--stage", "flexnet_rl",
                            "--frames", "80", "--steps", "5", "--batch", "4", "--crop", "24", "--out", str(tmp_path),
                            "--no-progress"])
    assert set(result["after"]) == {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim"}
    space = make_env("SyntheticPixel-v0", env_kwargs=dict(size=48), low_res=2).observation_space
    ext = rlvision.VisionExtractor(space, backbone="nature_cnn", preprocess="flexnet_rl",
                                   preprocess_kwargs=dict(scale=2), preprocess_weights=result["weights"])
    assert ext(torch.rand(2, 3, 24, 24)).shape == (2, 256)
