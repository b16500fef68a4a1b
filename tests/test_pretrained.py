"""Pretrained timm MobileNetV4 checkpoints: exact outputs against timm's (fixture), stem adaptation, bad files,
frozen / fine-tuned use in SB3, and the encode-once wrapper."""

import json
import os

import numpy as np
import pytest
import torch
from gymnasium import spaces
from safetensors.torch import save_file

import rlvision
from rlvision.agents import make_agent
from rlvision.envs import make_env
from rlvision.encode import FrozenEncoder, VecEncode
from rlvision.optim import ScaledLRAdam
from rlvision.pretrained import PretrainedWeightsError, adapt_stem, read_checkpoint

FIXTURES = os.path.join(os.path.dirname(__file__), "data", "timm-mobilenetv4")
VARIANTS = ["conv_small", "conv_medium", "conv_large", "hybrid_medium", "hybrid_large"]


def timm_checkpoint(variant: str) -> tuple[dict, np.lib.npyio.NpzFile]:
    """timm's state_dict rebuilt from the fixture's ``rule`` (float64), and the fixture."""
    data = np.load(os.path.join(FIXTURES, f"mobilenetv4_{variant}.npz"))
    state = {}
    for i, (key, shape) in enumerate(zip(json.loads(str(data["keys"])), json.loads(str(data["shapes"])), strict=False)):
        rng = np.random.default_rng(1000 + i)
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.from_numpy(rng.random(shape) + 0.5)
        else:
            state[key] = torch.from_numpy(rng.standard_normal(shape) * 0.1)
    return state, data


@pytest.fixture(scope="module")
def conv_small_file(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("timm") / "conv_small.safetensors")
    save_file(timm_checkpoint("conv_small")[0], path)
    return path


def fixture_input() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(7).random((2, 3, 96, 96)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_equal_timm_for_both_file_formats(variant, tmp_path):
    state, data = timm_checkpoint(variant)
    files = {"safetensors": tmp_path / "model.safetensors", "pth": tmp_path / "pytorch_model.bin"}
    save_file(state, str(files["safetensors"]))
    torch.save(state, files["pth"])
    logits, pre_logits = torch.from_numpy(data["logits"]), torch.from_numpy(data["pre_logits"])
    for path in files.values():
        model = rlvision.create_backbone(f"mnv4_{variant}", num_classes=1000).double()
        rlvision.pretrained.load_timm_weights(model, f"mnv4_{variant}", str(path))
        model.eval()
        with torch.no_grad():
            pooled = model.forward_features(fixture_input()).mean((2, 3))
            assert torch.allclose(model.head(pooled), logits, rtol=0, atol=1e-10 * logits.abs().max())
            assert torch.allclose(model.head[:4](pooled), pre_logits, rtol=0, atol=1e-10 * pre_logits.abs().max())
    headless = rlvision.create_backbone(f"mnv4_{variant}").double()  # float64 before loading: no float32 rounding
    rlvision.pretrained.load_timm_weights(headless, f"mnv4_{variant}", str(files["pth"])).eval()
    with torch.no_grad():  # headless: the classifier and the 1x1 head conv are dropped, the body is the same
        assert torch.allclose(headless(fixture_input()), pooled, rtol=0, atol=1e-12 * pooled.abs().max())


def test_grey_and_rgb_frame_stacks_reproduce_the_rgb_model(conv_small_file):
    def load(channels):
        model = rlvision.create_backbone("mnv4_conv_small", in_channels=channels).double()
        return rlvision.pretrained.load_timm_weights(model, "mnv4_conv_small", conv_small_file).eval()

    rgb, grey4, rgb2 = load(3), load(4), load(6)
    image = fixture_input()
    grey = image.mean(1, keepdim=True)
    with torch.no_grad():
        assert torch.allclose(grey4(grey.repeat(1, 4, 1, 1)), rgb(grey.repeat(1, 3, 1, 1)), atol=1e-10)
        assert torch.allclose(rgb2(image.repeat(1, 2, 1, 1)), rgb(image), atol=1e-10)
    weight = torch.randn(8, 3, 3, 3)
    assert torch.allclose(adapt_stem(weight, 4).sum(1), weight.sum(1))  # grey: the colour sum, spread over frames
    assert adapt_stem(weight, 3, frames="grey").shape == (8, 3, 3, 3)
    with pytest.raises(ValueError, match="multiple of 3"):
        adapt_stem(weight, 4, frames="rgb")


def unchanged_after(model, fn) -> bool:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fn()
    return all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_files_are_refused_with_what_they_hold(tmp_path, conv_small_file):
    model = rlvision.create_backbone("mnv4_conv_small")
    medium = tmp_path / "medium.pth"
    torch.save(timm_checkpoint("conv_medium")[0], medium)
    with pytest.raises(PretrainedWeightsError, match=r"holds timm weights of mnv4_conv_medium.*Nothing was loaded"):
        assert unchanged_after(model, lambda: rlvision.backbone_info("mnv4_conv_small").load_pretrained(
            model, "mnv4_conv_small", str(medium)))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(open(conv_small_file, "rb").read()[:5000])
    with pytest.raises(PretrainedWeightsError, match="not a readable checkpoint"):
        rlvision.create_backbone("mnv4_conv_small", pretrained=str(truncated))
    foreign = tmp_path / "foreign.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, foreign)
    with pytest.raises(PretrainedWeightsError, match="Not a timm MobileNetV4.*encoder.weight"):
        rlvision.create_backbone("mnv4_conv_small", pretrained=str(foreign))
    state = read_checkpoint(conv_small_file)
    del state["blocks.3.2.pw_proj.conv.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(PretrainedWeightsError, match=r"1 missing \(e.g. \['features.13.project.conv.weight'\]"):
        rlvision.create_backbone("mnv4_conv_small", pretrained=str(tmp_path / "missing.pth"))
    state = read_checkpoint(conv_small_file)
    state["blocks.1.1.conv.weight"] = torch.zeros(64, 96, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(PretrainedWeightsError, match=r"shape mismatches: features.4.conv.weight \(64, 96, 3, 3\)"):
        rlvision.create_backbone("mnv4_conv_small", pretrained=str(tmp_path / "shape.pth"))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(PretrainedWeightsError, match="not a dict of tensors"):
        rlvision.create_backbone("mnv4_conv_small", pretrained=str(tmp_path / "list.pth"))
    with pytest.raises(FileNotFoundError, match="No weights file"):
        rlvision.create_backbone("mnv4_conv_small", pretrained=str(tmp_path / "absent.safetensors"))
    with pytest.raises(ValueError, match="load into mnv4_conv_large, .*mnv4_hybrid_medium, not 'nature_cnn'"):
        rlvision.create_backbone("nature_cnn", pretrained=conv_small_file)


def test_imagenet_normalisation_per_colour_and_for_grey(conv_small_file):
    rgb = rlvision.VisionExtractor(spaces.Box(0, 255, (6, 64, 64), np.uint8), "mnv4_conv_small",
                                   pretrained=conv_small_file)
    x = torch.full((1, 6, 64, 64), 0.485)
    assert torch.allclose(rgb.normalize(x)[0, [0, 3], 0, 0], torch.zeros(2), atol=1e-6)
    grey = rlvision.VisionExtractor(spaces.Box(0, 255, (4, 64, 64), np.uint8), "mnv4_conv_small",
                                    pretrained=conv_small_file)
    mean = rlvision.pretrained.GREY_MEAN
    assert torch.allclose(grey.normalize(torch.full((1, 4, 8, 8), mean)), torch.zeros(1, 4, 8, 8), atol=1e-6)
    off = rlvision.VisionExtractor(spaces.Box(0, 255, (4, 64, 64), np.uint8), "mnv4_conv_small",
                                   pretrained=conv_small_file, imagenet_norm=False)
    assert off.normalize is None and "normalize.mean" not in grey.state_dict()


def test_frozen_pretrained_encoder_in_ppo_survives_init_training_and_save_load(tmp_path, conv_small_file):
    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=64, grid=3))
    model = make_agent("ppo", env, backbone="mnv4_conv_small", seed=0, n_steps=16, batch_size=16, n_epochs=2,
                       backbone_kwargs=dict(pretrained=conv_small_file, freeze_backbone=True))
    ext = model.policy.features_extractor
    loaded = rlvision.create_backbone("mnv4_conv_small", in_channels=3, pretrained=conv_small_file)
    # SB3's orthogonal init ran on the extractor: the loaded weights are untouched
    assert all(torch.equal(a, b.float()) for a, b in zip(ext.backbone.state_dict().values(),
                                                         loaded.state_dict().values(), strict=False))
    head_before = ext.linear[0].weight.clone()
    assert unchanged_after(ext.backbone, lambda: model.learn(64))  # weights and BatchNorm statistics frozen
    assert not ext.backbone.training and not torch.equal(head_before, ext.linear[0].weight)
    model.save(tmp_path / "ppo.zip")
    again = type(model).load(tmp_path / "ppo.zip", env=env)
    obs = np.stack([env.observation_space.sample() for _ in range(8)])
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], again.predict(obs, deterministic=True)[0])
    env.close()


def test_fine_tuning_trains_the_backbone_at_a_smaller_learning_rate(conv_small_file):
    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=64, grid=3))
    model = make_agent("ppo", env, backbone="mnv4_conv_small", seed=0, n_steps=16, batch_size=16, n_epochs=1,
                       backbone_kwargs=dict(pretrained=conv_small_file, backbone_lr_scale=0.1))
    optimizer = model.policy.optimizer
    assert isinstance(optimizer, ScaledLRAdam) and sorted(g["lr_scale"] for g in optimizer.param_groups) == [0.1, 1.0]
    ext = model.policy.features_extractor
    assert not unchanged_after(ext.backbone, lambda: model.learn(32))
    env.close()


def test_scaled_lr_adam_steps_each_group_at_its_scale():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    b.lr_scale = 0.1
    optimizer = ScaledLRAdam([a, b], lr=1.0)
    for group in optimizer.param_groups:  # what SB3's update_learning_rate does before each update
        group["lr"] = 0.01
    (a.sum() + b.sum()).backward()
    optimizer.step()  # Adam's first step moves each weight by lr * scale
    assert torch.allclose(a, torch.full((3,), -0.01), atol=1e-6) and torch.allclose(b, torch.full((3,), -0.001))
    assert all(g["lr"] == 0.01 for g in optimizer.param_groups)


def test_encode_once_wrapper_gives_the_encoder_features_and_trains_ppo(conv_small_file):
    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=64, grid=3, max_steps=3))
    encoded = VecEncode(make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=64, grid=3,
                                                                                     max_steps=3)),
                        "mnv4_conv_small", pretrained=conv_small_file, pool="avg", device="cpu")
    encoder = FrozenEncoder(env.observation_space, "mnv4_conv_small", pretrained=conv_small_file, pool="avg")
    assert encoded.observation_space.shape == (960,)
    np.testing.assert_allclose(encoded.reset(), encoder(torch.as_tensor(env.reset())).numpy(), atol=1e-5)
    actions = np.array([0, 1])
    for _ in range(3):
        features, _, dones, infos = encoded.step(actions)
        images, *_ = env.step(actions)
        np.testing.assert_allclose(features, encoder(torch.as_tensor(images)).numpy(), atol=1e-5)
    assert dones.all() and infos[0]["terminal_observation"].shape == (960,)
    model = make_agent("ppo", encoded, seed=0, n_steps=16, batch_size=16, n_epochs=1)
    assert type(model.policy).__name__ == "ActorCriticPolicy"
    model.learn(32)
    encoder.train()
    assert not encoder.training  # frozen stays frozen
    env.close(), encoded.close()


def test_grey_frames_with_three_channels_get_the_grey_stem(conv_small_file):
    """pretrained_frames="grey" with 3 channels: 3 grey frames, so each channel gets the colour-summed kernel / 3."""
    model = rlvision.create_backbone("mnv4_conv_small", in_channels=3, pretrained=conv_small_file,
                                     pretrained_frames="grey")
    rgb = rlvision.create_backbone("mnv4_conv_small", in_channels=3, pretrained=conv_small_file)
    stem, rgb_stem = model.features[0].conv.weight, rgb.features[0].conv.weight
    assert torch.allclose(stem, adapt_stem(rgb_stem, 3, "grey"))
    assert torch.allclose(stem[:, 0], stem[:, 1]) and not torch.allclose(rgb_stem[:, 0], rgb_stem[:, 1])


def test_checkpoint_without_batch_counters_loads(tmp_path, conv_small_file):
    state, _ = timm_checkpoint("conv_small")
    path = tmp_path / "no_counters.safetensors"
    save_file({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, str(path))
    with_counters = rlvision.create_backbone("mnv4_conv_small", pretrained=conv_small_file).state_dict()
    without = rlvision.create_backbone("mnv4_conv_small", pretrained=str(path)).state_dict()
    assert all(torch.equal(with_counters[k], without[k]) for k in with_counters)


def test_bad_files_get_the_fix_in_the_message(tmp_path):
    state, _ = timm_checkpoint("conv_small")
    extra = tmp_path / "extra.safetensors"
    save_file({**state, "blocks.0.0.conv.extra": torch.zeros(1)}, str(extra))
    with pytest.raises(PretrainedWeightsError, match=r"1 unexpected.*Remove the extra entries.*Nothing was loaded"):
        rlvision.create_backbone("mnv4_conv_small", pretrained=str(extra))
    foreign = tmp_path / "resnet.pth"
    torch.save({"layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3), "fc.weight": torch.zeros(10, 64)}, foreign)
    with pytest.raises(PretrainedWeightsError, match=r"resnet.pth.*Not a timm MobileNetV4.*Pass a timm MobileNetV4"):
        rlvision.create_backbone("mnv4_conv_small", pretrained=str(foreign))
    pickled = tmp_path / "whole.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)
    with pytest.raises(PretrainedWeightsError, match=r"pickled Python objects.*state_dict\(\)"):
        rlvision.create_backbone("mnv4_conv_small", pretrained=str(pickled))
    ten = tmp_path / "ten_classes.safetensors"
    save_file({**state, "conv_head.weight": torch.zeros(1280, 960, 1, 1), "norm_head.weight": torch.ones(1280),
               "norm_head.bias": torch.zeros(1280), "norm_head.running_mean": torch.zeros(1280),
               "norm_head.running_var": torch.ones(1280), "classifier.weight": torch.zeros(10, 1280),
               "classifier.bias": torch.zeros(10)}, str(ten))
    with pytest.raises(PretrainedWeightsError, match=r"classifier has 10 classes.*num_classes=10"):
        rlvision.create_backbone("mnv4_conv_small", num_classes=1000, pretrained=str(ten))
    rlvision.create_backbone("mnv4_conv_small", num_classes=10, pretrained=str(ten))  # the fix works
    rlvision.create_backbone("mnv4_conv_small", pretrained=str(ten))  # and headless ignores the head
