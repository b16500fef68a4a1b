"""Issue 31: the loop-cost instrument, the block-string builder, training-time folding, the design search."""

import numpy as np
import pytest
import torch
from torch import nn

import rlvision
from rlvision.backbones.mobilenetv4 import mobilenetv4_blocks, parse_blocks
from rlvision.design import candidate, curve_area, design_space, pareto_front
from rlvision.layers import ConvNormAct
from rlvision.loop_cost import LoopCost, count_calls, fit_overhead, measure


def test_block_strings_build_the_specs_they_name():
    assert parse_blocks("cn_c16_k4_s4-er_c32_e2_s2-er_c32_e2_r2-uir_c32_e4_a3_k0-se_d8-mqa_h2_d16_v2") == [
        ("conv", 16, 4, 4), ("fused", 32, 2, 3, 2), ("fused", 32, 2, 3, 1), ("fused", 32, 2, 3, 1),
        ("uib", 32, 4, 3, 0, 1, 1), ("se", 8), ("mqa", 2, 16, 2)]
    net = mobilenetv4_blocks(in_channels=4, blocks="cn_c16_k4_s4-er_c32_e2_s2-er_c32_e1_s2")
    assert net.total_stride == 16 and net.num_features == 32
    assert net.forward_features(torch.rand(2, 4, 56, 56)).shape == (2, 32, 4, 4)


@pytest.mark.parametrize("text, message", [
    ("xx_c3", "unknown kind 'xx'"), ("cn_k3", "needs c"), ("er_c32_q3", "field 'q3'"), ("cn_c16_kx", "field 'kx'"),
    ("er_c8_r0", "r must be >= 1"), ("", "non-empty block string"), (None, "non-empty block string")])
def test_bad_block_strings_name_the_block_and_the_fix(text, message):
    with pytest.raises(ValueError, match=message):
        parse_blocks(text)


@pytest.mark.parametrize("groups", [1, 8])
def test_frozen_bn_folds_into_its_conv_in_training_with_the_same_outputs_and_gradients(groups):
    """One conv with reparameterised weights, in train mode: the function and every gradient of conv -> norm."""
    torch.manual_seed(0)
    block = ConvNormAct(8, 8, 3, 2, groups=groups, norm="frozen_bn", act="relu").double().train()
    with torch.no_grad():  # statistics as if loaded from a checkpoint, an affine map that is not the identity
        block.norm.running_mean.normal_()
        block.norm.running_var.uniform_(0.5, 2.0)
        block.norm.weight.normal_()
        block.norm.bias.normal_()
    x = torch.randn(4, 8, 9, 9, dtype=torch.float64, requires_grad=True)
    folded = block(x)
    grads = torch.autograd.grad(folded.square().sum(), [x, *block.parameters()])
    plain = nn.Sequential.forward(block, x)  # conv, then the norm's own pass over the activations
    plain_grads = torch.autograd.grad(plain.square().sum(), [x, *block.parameters()])
    torch.testing.assert_close(folded, plain, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, plain_grads, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert "aten.native_batch_norm" in _ops(lambda: nn.Sequential.forward(block, x.detach()))
    assert "aten.native_batch_norm" not in _ops(lambda: block(x.detach()))  # no pass over the activations


def _ops(fn):
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func.overloadpacket).replace("aten::", "aten."))
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return seen


def test_call_counter_counts_kernels_forward_backward_and_optimizer():
    a, b = torch.ones(3), torch.ones(3)
    assert count_calls(lambda: a + b) == 1
    assert count_calls(lambda: (a * b).sum()) == 2
    w = torch.ones(3, requires_grad=True)
    assert count_calls(lambda: (w * a).sum().backward()) > 2  # mul, sum, and their backward kernels


def test_overhead_fit_recovers_known_coefficients():
    """Times made from 20 us per call and 50 GFLOP/s are split back into those terms."""
    def row(calls, gflop):
        return LoopCost("x", 56, "cpu", calls, 0.02 * calls, 0.0, calls * 4, 0.02 * calls * 4 + gflop / 50 * 1000,
                        gflop, 0.0, 0.0)

    rows = [row(50, 0.5), row(200, 4.0), row(800, 1.0), row(100, 20.0)]
    per_call_us, gflops = fit_overhead(rows)
    assert per_call_us == pytest.approx(20.0, rel=1e-6) and gflops == pytest.approx(50.0, rel=1e-6)
    assert rows[1].update_overhead_ms == pytest.approx(0.02 * 800)
    assert rows[1].update_arithmetic_ms == pytest.approx(4.0 / 50 * 1000)


def test_measure_gives_both_regimes_inside_sb3s_policy():
    rows = measure(["nature_cnn", candidate("cn_c8_k4_s4-er_c16_e2_s2")], [40], rounds=1, rollout_repeats=2)
    assert [(r.backbone, r.side) for r in rows] == [("nature_cnn", 40), (candidate("cn_c8_k4_s4-er_c16_e2_s2"), 40)]
    for r in rows:
        assert r.rollout_calls > 0 and r.update_calls > r.rollout_calls and r.update_gflop > 3 * r.rollout_gflop
        assert r.per_1024_ms == pytest.approx(128 * r.rollout_ms + 16 * r.update_ms)
    assert rows[0].per_1024_vs_first == 1.0 and rows[0].update_calls_vs_first == 1.0
    # SB3's NatureCNN in PPO's update step, backward and fused Adam included (torch 2.13; 220 at 56 px, where its
    # last map is not 1x1)
    assert rows[0].update_calls == 219


def test_pareto_front_and_the_design_space():
    rows = [dict(name=n, cost=c, q=q) for n, c, q in
            [("a", 1.0, 0.5), ("b", 0.5, 0.4), ("c", 0.6, 0.3), ("d", 2.0, 0.9), ("e", 2.0, 0.8)]]
    assert [r["name"] for r in pareto_front(rows, "cost", "q")] == ["b", "a", "d"]
    space = design_space()
    assert len(space) == len(set(space)) == 16
    for text in space:
        parse_blocks(text)
    assert curve_area([dict(steps=0, eval_return=5.0), dict(steps=10, eval_return=1.0),
                       dict(steps=20, eval_return=0.0)]) == 0.5


def test_design_command_measures_candidates_without_the_proxy(tmp_path):
    from rlvision.commands import design

    rows = design.main(["--blocks", "cn_c8_k4_s4-er_c16_e2_s2", "--references", "nature_cnn", "--sides", "40",
                        "--rounds", "1", "--skip-proxy", "--out", str(tmp_path)])
    assert [r["reference"] for r in rows] == [True, False] and rows[0]["cost_40"] == 1.0
    assert (tmp_path / "design.md").read_text().count("|") > 10
    with pytest.raises(ValueError, match="unknown kind"):
        design.main(["--blocks", "zz_c8", "--skip-proxy", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()  # checked before anything is measured or written


def test_block_backbone_in_a_policy_saves_and_loads_its_blocks(tmp_path):
    from rlvision.agents import make_agent
    from rlvision.envs import make_env

    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=36, grid=3))
    model = make_agent("ppo", env, backbone="mobilenetv4_blocks", seed=0, n_steps=16, batch_size=32, n_epochs=1,
                       backbone_kwargs=dict(blocks="cn_c8_k4_s4-er_c16_e2_s2", norm="frozen_bn"))
    model.learn(32)
    model.save(tmp_path / "m.zip")
    loaded = type(model).load(tmp_path / "m.zip", env=env)
    assert loaded.policy_kwargs["features_extractor_kwargs"]["blocks"] == "cn_c8_k4_s4-er_c16_e2_s2"
    obs = env.reset()
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
    assert rlvision.backbone_info("mobilenetv4_blocks").family == "mobilenetv4"


def test_call_counts_do_not_depend_on_an_earlier_torch_compile():
    """The first torch.compile in a process turns torch.distributions' checks off for good (13 fewer aten calls per
    categorical policy step); the instrument measures with torch's default whatever ran before, and leaves the
    setting as it found it."""
    from torch.distributions import Distribution

    before = measure(["nature_cnn"], [40], rounds=1, rollout_repeats=1)[0]
    Distribution.set_default_validate_args(False)  # what torch.compile leaves behind
    after = measure(["nature_cnn"], [40], rounds=1, rollout_repeats=1)[0]
    assert Distribution._validate_args is False
    assert (after.update_calls, after.rollout_calls) == (before.update_calls, before.rollout_calls)
