import math

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import NatureCNN as SB3NatureCNN

import rlvision
from rlvision import count_parameters, create_backbone

# In 3 channels, 1000 classes: the seed README's counts and the reference (timm) counts of the paper's configs.
EXACT_COUNTS = {
    "mobilenetv4_nano": 590_344,
    "mobilenetv4_small": 1_303_904,
    "mobilenetv4_medium": 2_276_384,
    "mobilenetv4_large": 9_740_680,
    "mobilenetv4_hybrid_large": 35_886_888,
    "mnv4_conv_small": 3_774_024,
    "mnv4_conv_medium": 9_715_512,
    "mnv4_conv_large": 32_590_864,
    "mnv4_hybrid_medium": 11_074_648,
    "mnv4_hybrid_large": 37_764_624,
}


@pytest.mark.parametrize("name", sorted(EXACT_COUNTS))
def test_exact_parameter_counts(name):
    assert count_parameters(create_backbone(name, in_channels=3, num_classes=1000)) == EXACT_COUNTS[name]


def test_registry_lists_every_family():
    names = rlvision.list_backbones()
    assert set(EXACT_COUNTS) | {"mobilenetv4_custom", "nature_cnn", "impala_cnn", "rest_rl", "cyclemlp_rl",
                                "conformer_rl"} <= set(names)
    assert rlvision.list_backbones("baseline") == ["impala_cnn", "nature_cnn"]


def test_unknown_backbone_lists_known_names():
    with pytest.raises(ValueError, match="Unknown backbone 'mobilenet_nano'.*mobilenetv4_nano.*Known backbones"):
        create_backbone("mobilenet_nano")


def _expected_side(name: str, side: int, model) -> int:
    if name == "nature_cnn":
        return ((side - 8) // 4 + 1 - 4) // 2 + 1 - 2
    return math.ceil(side / model.total_stride) if model.total_stride <= side else 1


CONV_NETS = [n for f in ("baseline", "mobilenetv4", "mobilenetv4_seed") for n in rlvision.list_backbones(f)]


@pytest.mark.parametrize("name", CONV_NETS)
@pytest.mark.parametrize("channels", [1, 3, 4, 12])
def test_forward_shapes(name, channels):
    model = create_backbone(name, in_channels=channels).eval()
    with torch.no_grad():
        for side in (64, 84, 96):
            fmap = model.forward_features(torch.rand(2, channels, side, side))
            expect = _expected_side(name, side, model)
            assert fmap.shape == (2, model.num_features, expect, expect), (side, fmap.shape)
            assert model.feature_shape(side, side) == tuple(fmap.shape[1:])
            assert model(torch.rand(2, channels, side, side)).shape == (2, model.num_features)


@pytest.mark.parametrize("name", rlvision.list_backbones())
def test_too_small_input_names_the_minimum(name):
    model = create_backbone(name, in_channels=3)
    low = model.min_input_size
    assert low == rlvision.backbone_info(name).min_input_size
    with pytest.raises(ValueError, match=f"minimum side {low}"):
        model(torch.rand(1, 3, low - 1, low + 5))
    assert model.eval()(torch.rand(1, 3, low, low)).shape == (1, model.num_features)


def test_wrong_channels_and_channel_last_are_explained():
    model = create_backbone("mobilenetv4_nano", in_channels=3)
    with pytest.raises(ValueError, match="channel-last"):
        model(torch.rand(2, 84, 84, 3))
    with pytest.raises(ValueError, match="built for 3 input channels"):
        model(torch.rand(2, 4, 84, 84))


def test_classifier_heads():
    for name in ("mobilenetv4_nano", "mnv4_conv_small", "nature_cnn", "impala_cnn"):
        model = create_backbone(name, in_channels=4, num_classes=7).eval()
        assert model(torch.rand(3, 4, 84, 84)).shape == (3, 7)


def test_seed_head_batchnorm1d_defect_and_its_option():
    faithful = create_backbone("mobilenetv4_nano", num_classes=10).train()
    assert isinstance(faithful.head[1], torch.nn.BatchNorm1d)
    with pytest.raises(ValueError, match="Expected more than 1 value"):
        faithful(torch.rand(1, 3, 64, 64))
    fixed = create_backbone("mobilenetv4_nano", num_classes=10, head_norm="gn").train()
    assert fixed(torch.rand(1, 3, 64, 64)).shape == (1, 10)


def test_seed_residual_option_adds_skips_without_parameters():
    plain = create_backbone("mobilenetv4_small", num_classes=1000)
    res = create_backbone("mobilenetv4_small", num_classes=1000, residual=True)
    assert count_parameters(res) == count_parameters(plain)
    assert not any(getattr(m, "has_skip", False) for m in plain.modules())
    assert sum(getattr(m, "has_skip", False) for m in res.modules()) > 10
    with torch.no_grad():
        res.load_state_dict(plain.state_dict())
        x = torch.rand(2, 3, 64, 64)
        assert not torch.allclose(res.eval()(x), plain.eval()(x))


def test_paper_configs_have_residuals_and_layer_scale_on_hybrids():
    conv = create_backbone("mnv4_conv_small")
    hybrid = create_backbone("mnv4_hybrid_medium")
    assert any(getattr(m, "has_skip", False) for m in conv.modules())
    assert not any(isinstance(m, rlvision.layers.LayerScale2d) for m in conv.modules())
    assert any(isinstance(m, rlvision.layers.LayerScale2d) for m in hybrid.modules())
    assert conv.total_stride == 32 and create_backbone("mobilenetv4_nano").total_stride == 4


def test_custom_builder_takes_the_seed_readme_kwargs():
    model = create_backbone("mobilenetv4_custom", in_channels=3, num_classes=1000, base_channels=16,
                            expanded_channels=32, squeeze_ratio=0.25, num_heads=2, hidden_dim_classifier=64,
                            dropout=0.2, FusedIBs=1, UIB_and_ExtraDWs=1, SE_and_UIBs=1, SE_and_MobileMQAs=1)
    assert model.eval()(torch.rand(4, 3, 128, 128)).shape == (4, 1000)
    deeper = create_backbone("mobilenetv4_custom", FusedIBs=3, downsample=False)
    assert deeper.total_stride == 8 and deeper.min_input_size == 8
    with pytest.raises(ValueError, match="divisible by num_heads"):
        create_backbone("mobilenetv4_custom", base_channels=18, num_heads=4)


def test_norm_choice():
    for norm in ("bn", "gn", "ln"):
        model = create_backbone("mnv4_conv_small", norm=norm).train()
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 960)
    with pytest.raises(ValueError, match="Unknown norm"):
        create_backbone("mnv4_conv_small", norm="batch")


def test_nature_cnn_is_sb3_layout():
    ours = create_backbone("nature_cnn", in_channels=4)
    sb3 = SB3NatureCNN(spaces.Box(0, 255, (4, 84, 84), dtype=np.uint8), features_dim=512)
    assert count_parameters(ours) == count_parameters(sb3.cnn)
    assert [type(m) for m in ours.features] == [type(m) for m in sb3.cnn[:-1]]


def test_impala_layout():
    model = create_backbone("impala_cnn", in_channels=4)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 * 5 and [c.out_channels for c in convs[::5]] == [16, 32, 32]
    assert model.feature_shape(84, 84) == (32, 11, 11)


def test_mqa_attention_matches_manual_formula():
    from rlvision.backbones.mobilenetv4 import PAPER_STYLE, MultiQueryAttention2d

    attn = MultiQueryAttention2d(16, heads=2, key_dim=8, kv_stride=2, style=PAPER_STYLE).eval()
    x = torch.randn(1, 16, 6, 6)
    with torch.no_grad():
        y = attn.norm(x)
        q = attn.query(y).reshape(1, 2, 8, 36)
        k = attn.key(attn.key_down(y)).reshape(1, 8, 9)
        v = attn.value(attn.value_down(y)).reshape(1, 8, 9)
        w = torch.softmax(torch.einsum("bhdn,bdm->bhnm", q, k) / 8 ** 0.5, dim=-1)
        out = torch.einsum("bhnm,bdm->bhdn", w, v).reshape(1, 16, 6, 6)
        assert torch.allclose(attn(x), x + attn.out(out), atol=1e-5)


def test_channels_last_is_a_registered_fact_of_the_backbone():
    """The extractor's default memory format comes from BackboneInfo, so a new family changes no extractor code."""
    space = spaces.Box(0, 255, (3, 48, 48), np.uint8)
    for name in ("nature_cnn", "mobilenetv4_cpu_rl", "rest_rl", "conformer_rl"):
        info = rlvision.backbone_info(name)
        assert rlvision.VisionExtractor(space, name).channels_last is info.channels_last
    assert rlvision.backbone_info("nature_cnn").channels_last and not rlvision.backbone_info("rest_rl").channels_last
