import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import preprocess_obs

import rlvision
from rlvision import VisionCombinedExtractor, VisionExtractor, policy_kwargs


def image_space(c=4, h=84, w=84, dtype=np.uint8):
    high = 255 if dtype == np.uint8 else 1.0
    return spaces.Box(0, high, (c, h, w), dtype=dtype)


@pytest.mark.parametrize("backbone", ["mobilenetv4_nano", "mnv4_conv_small", "nature_cnn", "impala_cnn"])
@pytest.mark.parametrize("channels", [1, 4, 12])
def test_extractor_shapes(backbone, channels):
    space = image_space(channels)
    ext = VisionExtractor(space, backbone=backbone, features_dim=64)
    obs = torch.as_tensor(np.stack([space.sample() for _ in range(3)]))
    out = ext(preprocess_obs(obs, space))
    assert out.shape == (3, 64) and ext.features_dim == 64 and (out >= 0).all()


def test_pool_modes():
    space = image_space(3, 64, 64)
    sizes = {pool: VisionExtractor(space, "mobilenetv4_nano", pool=pool).linear[0].in_features
             for pool in ("avg", "flatten", 4, 2)}
    assert sizes == {"avg": 24, "flatten": 24 * 16 * 16, 4: 24 * 16, 2: 24 * 4}
    with pytest.raises(ValueError, match="pool must be"):
        VisionExtractor(space, "mobilenetv4_nano", pool="max")


def test_float_images_need_normalized_flag():
    space = image_space(3, 64, 64, np.float32)
    with pytest.raises(ValueError, match="normalized_image=True"):
        VisionExtractor(space)
    ext = VisionExtractor(space, normalized_image=True)
    assert ext(torch.rand(2, 3, 64, 64)).shape == (2, 256)
    assert policy_kwargs(normalized_image=True)["normalize_images"] is False


def test_non_image_space_is_refused():
    with pytest.raises(ValueError, match="MlpPolicy"):
        VisionExtractor(spaces.Box(-1, 1, (8,), dtype=np.float32))
    with pytest.raises(ValueError, match="image observations"):
        VisionExtractor(spaces.Discrete(3))


def test_channel_last_space_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"channel-last.*\(3, 84, 84\).*VecTransposeImage"):
        VisionExtractor(spaces.Box(0, 255, (84, 84, 3), dtype=np.uint8))


def test_too_small_image_names_the_minimum():
    with pytest.raises(ValueError, match="minimum side 36"):
        VisionExtractor(image_space(4, 30, 30), backbone="nature_cnn")
    with pytest.raises(ValueError, match="minimum side 32"):
        VisionExtractor(image_space(4, 24, 24), backbone="mnv4_conv_small")


def test_unknown_backbone_lists_known():
    with pytest.raises(ValueError, match="Known backbones: .*nature_cnn"):
        VisionExtractor(image_space(), backbone="resnet50")
    with pytest.raises(ValueError, match="Known backbones"):
        policy_kwargs("resnet50")


def test_backbone_kwargs_reach_the_builder():
    ext = VisionExtractor(image_space(3, 64, 64), backbone="mobilenetv4_nano", residual=True)
    assert any(getattr(m, "has_skip", False) for m in ext.backbone.modules())


def test_dict_observations():
    space = spaces.Dict({"pixels": image_space(3, 64, 64), "speed": spaces.Box(-1, 1, (3,), dtype=np.float32)})
    ext = VisionCombinedExtractor(space, backbone="mobilenetv4_nano", features_dim=32)
    assert ext.features_dim == 35
    obs = {k: torch.as_tensor(np.stack([s.sample() for _ in range(2)])) for k, s in space.spaces.items()}
    assert ext(preprocess_obs(obs, space)).shape == (2, 35)
    assert policy_kwargs(observation_space=space)["features_extractor_class"] is VisionCombinedExtractor
    combined = VisionExtractor(space, backbone="mobilenetv4_nano", features_dim=32)  # SB3's MultiInputPolicy
    assert type(combined) is VisionCombinedExtractor and combined.features_dim == 35
    with pytest.raises(ValueError, match="No image key"):
        VisionExtractor(spaces.Dict({"v": spaces.Box(-1, 1, (3,), dtype=np.float32)}))
    with pytest.raises(ValueError, match="No image key"):
        VisionCombinedExtractor(spaces.Dict({"v": spaces.Box(-1, 1, (3,), dtype=np.float32)}))


def test_policy_kwargs_per_algorithm():
    assert policy_kwargs(algo="ppo")["share_features_extractor"] is True
    assert policy_kwargs(algo="a2c")["share_features_extractor"] is True
    assert policy_kwargs(algo="sac")["share_features_extractor"] is False
    assert policy_kwargs(algo="td3")["share_features_extractor"] is False
    assert "share_features_extractor" not in policy_kwargs(algo="dqn")
    kw = policy_kwargs("mnv4_conv_small", algo="ppo", features_dim=128, residual=False)
    assert kw["features_extractor_class"] is rlvision.VisionExtractor
    assert kw["features_extractor_kwargs"]["backbone"] == "mnv4_conv_small"
    assert kw["features_extractor_kwargs"]["residual"] is False
    with pytest.raises(ValueError, match="Unknown algo"):
        policy_kwargs(algo="ars")
    # sb3-contrib, by lowercased class name
    assert policy_kwargs(algo="recurrentppo")["share_features_extractor"] is True
    assert policy_kwargs(algo="maskableppo")["share_features_extractor"] is True
    assert policy_kwargs(algo="trpo")["share_features_extractor"] is False
    assert policy_kwargs(algo="tqc")["share_features_extractor"] is False
    assert "share_features_extractor" not in policy_kwargs(algo="qrdqn")
    assert policy_kwargs(algo="crossq")["optimizer_kwargs"] == dict(betas=(0.5, 0.999), fused=True)  # its default kept
    assert policy_kwargs(algo="trpo")["optimizer_kwargs"] == dict(eps=1e-5, fused=True)
    assert policy_kwargs(algo="sac", encoder_sharing="critic")["share_features_extractor"] is True
    with pytest.raises(ValueError, match="encoder_sharing"):
        policy_kwargs(algo="ppo", encoder_sharing="critic")


def test_sb3_normalize_images_flag_is_accepted():
    """SB3's spelling (policy_kwargs normalize_images=False) means what our normalized_image=True means."""
    sb3 = policy_kwargs("nature_cnn", normalize_images=False)
    ours = policy_kwargs("nature_cnn", normalized_image=True)
    assert sb3 == ours and sb3["normalize_images"] is False
    assert sb3["features_extractor_kwargs"]["normalized_image"] is True
    assert "normalize_images" not in policy_kwargs("nature_cnn", normalize_images=True)
    with pytest.raises(ValueError, match="contradicts"):
        policy_kwargs("nature_cnn", normalized_image=True, normalize_images=True)


def test_building_does_not_touch_batchnorm_statistics():
    ext = VisionExtractor(image_space(3, 64, 64), backbone="mnv4_conv_small")
    bn = next(m for m in ext.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 0 and ext.training


def test_every_entry_point_defaults_to_the_one_default_encoder():
    import inspect

    import rlvision
    from rlvision.agents import make_agent
    from rlvision.agents.zoo import zoo_hyperparams
    from rlvision.commands import train
    from rlvision.runs import RunSpec

    # issue 31's rule, BENCHMARKS.md "MobileNet-v4 that wins per second" says why
    assert rlvision.DEFAULT_BACKBONE == "mobilenetv4_cpu_rl"
    space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    assert VisionExtractor(space).backbone_name == rlvision.DEFAULT_BACKBONE
    assert policy_kwargs()["features_extractor_kwargs"]["backbone"] == rlvision.DEFAULT_BACKBONE
    for entry in (make_agent, zoo_hyperparams):
        assert inspect.signature(entry).parameters["backbone"].default == rlvision.DEFAULT_BACKBONE
    assert train.DEFAULT_CONFIG["backbone"] == rlvision.DEFAULT_BACKBONE
    assert RunSpec().backbone == rlvision.DEFAULT_BACKBONE


def test_encoder_is_the_extractor_without_sb3():
    """rlvision.extractors.Encoder: the extractor's encoder (its keys under ``encoder.``), usable alone, same
    outputs; keys of the layout before the Encoder was a submodule (no ``encoder.``) still load into the extractor."""
    from rlvision.extractors import Encoder, EncoderConfig

    space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    extractor = rlvision.VisionExtractor(space, "mobilenetv4_nano_rl", features_dim=64, augment_shift=2)
    encoder = Encoder((4, 84, 84), "mobilenetv4_nano_rl", features_dim=64, augment_shift=2)
    assert isinstance(extractor.encoder, Encoder) and extractor.backbone is extractor.encoder.backbone
    assert ["encoder." + k for k in encoder.state_dict()] == list(extractor.state_dict())
    encoder.load_state_dict(extractor.encoder.state_dict())
    x = torch.rand(3, 4, 84, 84)
    encoder.eval(), extractor.eval()
    with torch.no_grad():
        assert torch.allclose(encoder(x), extractor(x), atol=1e-6)
    old_layout = {k.removeprefix("encoder."): v for k, v in extractor.state_dict().items()}
    other = rlvision.VisionExtractor(space, "mobilenetv4_nano_rl", features_dim=64, augment_shift=2)
    other.load_state_dict(old_layout)  # strict: every key mapped, none missing
    other.eval()
    with torch.no_grad():
        assert torch.equal(other(x), extractor(x))
    headless = Encoder((4, 84, 84), "nature_cnn", features_dim=None)
    assert headless.out_features == 64 * 7 * 7 and headless(x).shape == (3, 64 * 7 * 7)
    same = Encoder((4, 84, 84), EncoderConfig("nature_cnn", features_dim=None))
    assert same.config == headless.config and same.config.options()["features_dim"] is None
    with pytest.raises(TypeError, match="not both"):
        Encoder((4, 84, 84), EncoderConfig("nature_cnn"), features_dim=8)
    with pytest.raises(ValueError, match="'nrom' .did you mean 'norm'"):
        Encoder((4, 84, 84), "mobilenetv4_nano_rl", nrom="gn")


def test_encoder_alone_keeps_its_frozen_parts_in_eval_mode():
    """Encoder owns its freeze rules: train() leaves a frozen backbone (and its BatchNorm statistics) alone."""
    from rlvision.extractors import Encoder

    encoder = Encoder((4, 84, 84), "mobilenetv4_nano_rl", features_dim=16, freeze_backbone=True).train()
    assert encoder.training and encoder.linear.training and not encoder.backbone.training
    before = {k: v.clone() for k, v in encoder.backbone.state_dict().items()}
    encoder(torch.rand(8, 4, 84, 84))
    assert all(torch.equal(before[k], v) for k, v in encoder.backbone.state_dict().items())
    assert not any(p.requires_grad for p in encoder.backbone.parameters())
    trainable = Encoder((4, 84, 84), "mobilenetv4_nano_rl", features_dim=16).train()
    assert trainable.backbone.training


def test_rollout_path_wraps_any_module_from_outside():
    """RolloutPath knows nothing of SB3: around a plain Encoder it serves eval/no-grad calls from the folded twin
    once active, everything else from the module; VisionExtractor has at most 8 named parameters."""
    import inspect

    from rlvision.extractors import Encoder, RolloutPath

    encoder = Encoder((4, 84, 84), "mobilenetv4_nano_rl", features_dim=16)
    with torch.no_grad():
        encoder.train()(torch.rand(32, 4, 84, 84))  # running statistics that folding must carry
    path = RolloutPath(encoder)
    encoder.eval()
    x = torch.rand(4, 4, 84, 84)
    with torch.no_grad():
        plain = path(x)
        assert path.copy.syncs == 0  # not active yet: the module itself
        path.active = True
        fast = path(x)
    assert path.copy.syncs == 1 and torch.allclose(plain, fast, atol=1e-5)
    assert path(x).requires_grad and path.copy.syncs == 1  # autograd on: the module
    assert RolloutPath(encoder, inference_copy=False).copy is None
    with pytest.raises(ValueError, match="rollout_backend"):
        RolloutPath(encoder, backend="tensorrt")
    named = [p for p in inspect.signature(VisionExtractor.__init__).parameters.values()
             if p.kind is not p.VAR_KEYWORD and p.name != "self"]
    assert len(named) <= 8, [p.name for p in named]


def test_weights_of_another_backbone_fail_with_how_to_load_them():
    space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    nano = VisionExtractor(space, backbone="mobilenetv4_nano_rl").state_dict()
    nature = VisionExtractor(space, backbone="nature_cnn").state_dict()
    default = VisionExtractor(space)  # mobilenetv4_cpu_rl since issue 31
    # nano_rl shares the first keys of cpu_rl's layout (other shapes, more blocks); nature_cnn shares none
    for other, problem in ((nano, "are not in this one"), (nature, "are not in this one")):
        with pytest.raises(RuntimeError, match=f"not a 'mobilenetv4_cpu_rl'.*{problem}.*mobilenetv4_nano_rl before "
                                               f"issue 21, nature_cnn from issue 21 to issue 31.*custom_objects"):
            default.load_state_dict(other)
    reshaped = VisionExtractor(space, backbone="mobilenetv4_blocks", blocks="cn_c16_k4_s4-er_c32_e2_s2").state_dict()
    with pytest.raises(RuntimeError, match="backbone tensors have other shapes"):
        default.load_state_dict(reshaped)
    default.load_state_dict(VisionExtractor(space).state_dict())  # its own layout loads
    own = VisionExtractor(space).state_dict()
    partial = {k: v for i, (k, v) in enumerate(own.items()) if i % 2}
    result = default.load_state_dict(partial, strict=False)  # a partial state dict loads as torch loads it
    assert result.missing_keys and not result.unexpected_keys


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_encoder_matches_fp32_learns_and_acts_as_it_trains(device):
    """precision="bf16": the backbone runs under autocast, the output stays float32 and within bf16's tolerance of
    the fp32 encoder with the same weights; gradients reach every weight; the rollout path (folded twin) computes
    what the training forward computes, within the same tolerance; ONNX tracing sees fp32."""
    from rlvision.extractors import Encoder, RolloutPath

    torch.manual_seed(0)
    fp32 = Encoder((3, 64, 64), "impala_cnn", features_dim=32).to(device)
    bf16 = Encoder((3, 64, 64), "impala_cnn", features_dim=32, precision="bf16").to(device)
    bf16.load_state_dict(fp32.state_dict())
    x = torch.rand(16, 3, 64, 64, device=device)
    a, b = fp32(x), bf16(x)
    assert b.dtype == torch.float32 and b.shape == (16, 32)
    scale = a.abs().max().item()
    assert not torch.equal(a, b), "bf16 computed exactly fp32's result: autocast did not run"
    assert (a - b).abs().max().item() < 0.03 * scale
    b.square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0
               for p in bf16.parameters())
    nano = Encoder((4, 56, 56), "mobilenetv4_nano_rl", features_dim=16, precision="bf16").to(device)
    with torch.no_grad():
        nano.train()(torch.rand(32, 4, 56, 56, device=device))  # running statistics that folding must carry
    path = RolloutPath(nano)
    path.active = True
    nano.eval()
    obs = torch.rand(8, 4, 56, 56, device=device)
    with torch.no_grad():
        trained = nano(obs)
        acted = path(obs)
    assert acted.dtype == torch.float32
    assert (trained - acted).abs().max().item() < 0.05 * trained.abs().max().item() + 1e-3


def test_precision_auto_is_decided_by_the_hardware_at_run_time(monkeypatch):
    """"auto" is bf16 exactly where the CPU has AMX (asked at run time, not a constant), fp32 elsewhere and on CUDA;
    a bad value names the choices; RunSpec.precision reaches the extractor unless the entry sets its own."""
    from rlvision import extractors
    from rlvision.extractors import Encoder, autocast_dtype
    from rlvision.runs import RunSpec, encoder_kwargs

    for has_amx, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(extractors, "cpu_has_amx", lambda has_amx=has_amx: has_amx)
        assert autocast_dtype("auto", "cpu") is expected
        assert autocast_dtype("auto", "cuda") is None
        assert autocast_dtype("fp32", "cpu") is None and autocast_dtype("bf16", "cuda") is torch.bfloat16
        encoder = Encoder((3, 64, 64), "nature_cnn", features_dim=8, precision="auto")
        reference = Encoder((3, 64, 64), "nature_cnn", features_dim=8)
        reference.load_state_dict(encoder.state_dict())
        x = torch.rand(4, 3, 64, 64)
        assert torch.equal(encoder(x), reference(x)) is (expected is None)
    with pytest.raises(ValueError, match="precision must be one of"):
        Encoder((3, 64, 64), "nature_cnn", precision="fp16")
    assert encoder_kwargs(RunSpec(precision="auto"), {})["precision"] == "auto"
    assert encoder_kwargs(RunSpec(precision="auto"), {"precision": "fp32"})["precision"] == "fp32"
    assert "precision" not in encoder_kwargs(RunSpec(), {})


def test_bf16_encoder_exports_in_fp32(tmp_path):
    """ONNX files compute in fp32 whatever the encoder's precision: the exporter traces no autocast casts."""
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    from rlvision.export.writers import quiet_exporter
    from rlvision.extractors import Encoder

    encoder = Encoder((3, 64, 64), "nature_cnn", features_dim=8, precision="bf16").eval()
    with quiet_exporter():
        torch.onnx.export(encoder, (torch.rand(2, 3, 64, 64),), str(tmp_path / "e.onnx"), dynamo=True)
    ops = {node.op_type for node in onnx.load(str(tmp_path / "e.onnx")).graph.node}
    assert "Conv" in ops and "Cast" not in ops, ops
