"""ResT, CycleMLP and Conformer: exact counts, any input side, RL-sized variants, save/load."""

import pytest
import torch
import torch.nn.functional as F

import rlvision
from rlvision.agents import make_agent
from rlvision.envs import make_env
from rlvision import count_parameters, create_backbone
from rlvision.backbones.cyclemlp import CycleFC

EXACT_COUNTS = {  # 3 channels, 1000 classes, the official layer tables
    "rest_lite": 10_508_300, "rest_small": 13_679_708, "rest_base": 30_327_052, "rest_large": 51_676_156,
    "cyclemlp_b1": 15_155_400, "cyclemlp_b2": 26_802_504, "cyclemlp_b3": 38_385_720, "cyclemlp_b4": 51_796_552,
    "cyclemlp_b5": 75_747_280,
    "conformer_tiny": 23_524_704, "conformer_small": 37_673_424, "conformer_base": 83_289_136,
}
RL_VARIANTS = ["rest_rl", "cyclemlp_rl", "conformer_rl"]
FAMILIES = ["rest", "cyclemlp", "conformer"]


@pytest.mark.parametrize("name", sorted(EXACT_COUNTS))
def test_exact_parameter_counts(name):
    assert count_parameters(create_backbone(name, in_channels=3, num_classes=1000)) == EXACT_COUNTS[name]


@pytest.mark.parametrize("name", RL_VARIANTS)
def test_rl_variants_are_small(name):
    assert 500_000 <= count_parameters(create_backbone(name, in_channels=4)) <= 3_000_000


@pytest.mark.parametrize("name", [n for f in FAMILIES for n in rlvision.list_backbones(f)])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_any_side_from_the_minimum(name, channels):
    model = create_backbone(name, in_channels=channels).eval()
    with torch.no_grad():
        for side in (64, 84, 96):  # official ResT and Conformer crash at 84
            out = model(torch.rand(2, channels, side, side))
            assert out.shape == (2, model.num_features)
            if model.feature_shape(side, side) != (model.num_features,):
                fmap = model.forward_features(torch.rand(1, channels, side, side))
                expect = -(-side // model.total_stride)
                assert fmap.shape == (1, model.num_features, expect, expect)


@pytest.mark.parametrize("name, low", [("rest_lite", 33), ("rest_rl", 17), ("cyclemlp_b1", 32),
                                       ("conformer_tiny", 32)])
def test_too_small_input_is_refused(name, low):
    model = create_backbone(name, in_channels=3)
    assert model.min_input_size == rlvision.backbone_info(name).min_input_size == low
    with pytest.raises(ValueError, match=f"minimum side {low}"):
        model(torch.rand(1, 3, low - 1, 40))
    assert model.train()(torch.rand(2, 3, low, low)).shape[0] == 2


def _deform_reference(x: torch.Tensor, axis: int) -> torch.Tensor:
    """What a 1x1 deformable conv with CycleMLP's offsets samples: bilinear at p + offset, zeros outside."""
    b, h, w, c = x.shape
    out = torch.empty_like(x)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    for i in range(c):
        off = (i + 1) % 3 - 1
        sy, sx = (ys + off, xs) if axis == 1 else (ys, xs + off)
        grid = torch.stack([2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1], dim=-1)[None].expand(b, -1, -1, -1)
        out[..., i] = F.grid_sample(x[..., i][:, None], grid, align_corners=True, padding_mode="zeros")[:, 0]
    return out


@pytest.mark.parametrize("axis", [1, 2])
def test_cycle_fc_is_the_deformable_shift(axis):
    fc = CycleFC(7, axis)
    x = torch.randn(2, 5, 6, 7)
    torch.testing.assert_close(fc.shift(x), _deform_reference(x, axis), atol=1e-6, rtol=0)


def test_conformer_heads_and_features():
    model = create_backbone("conformer_tiny", num_classes=10)
    x = torch.rand(2, 3, 84, 84)
    conv, trans = model.train()(x)
    assert conv.shape == trans.shape == (2, 10)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 256 + 384)
        torch.testing.assert_close(model(x), model.conv_head(feats[:, :256]) + model.trans_head(feats[:, 256:]))


def test_rest_head_mixing_only_with_several_heads():
    model = create_backbone("rest_lite")
    first, last = model.stages[0][0].attn, model.stages[3][0].attn
    assert not first.mix_heads and last.mix_heads and isinstance(last.head_norm, torch.nn.InstanceNorm2d)


@pytest.mark.parametrize("name", RL_VARIANTS)
def test_rl_variants_train_ppo(name, tmp_path):
    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=48, grid=3))
    model = make_agent("ppo", env, backbone=name, seed=0, n_steps=32, batch_size=32, n_epochs=1)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(128)
    after = model.policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "backbone" in k)
    model.save(tmp_path / "m.zip")
    loaded = type(model).load(tmp_path / "m.zip", env=env)
    obs = env.reset()
    assert (model.predict(obs, deterministic=True)[0] == loaded.predict(obs, deterministic=True)[0]).all()


@pytest.mark.parametrize("name", RL_VARIANTS)
def test_state_dict_roundtrip(name, tmp_path):
    model = create_backbone(name, in_channels=4).eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    fresh = create_backbone(name, in_channels=4).eval()
    fresh.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    x = torch.rand(2, 4, 84, 84)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), atol=0, rtol=0)
