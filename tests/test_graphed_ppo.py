"""rlvision.graphed_ppo.GraphedPPO computes SB3's PPO update (same weights, same logs) on every device; its minibatch
update is captured in CUDA graphs on CUDA (rlvision.cuda_graphs.CudaGraphStep)."""

import warnings

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure
from torch import nn

import rlvision
from rlvision.agents import make_agent
from rlvision.cuda_graphs import CudaGraphStep
from rlvision.envs import SyntheticPixelEnv, make_env
from rlvision.graphed_ppo import GraphedPPO
from conftest import WithPosition

SMALL = dict(size=36, grid=3)


def _train(cls, device, env_id="SyntheticPixel-v0", backbone="nature_cnn", dict_obs=False, steps=256, **hyper):
    if dict_obs:
        env, policy = WithPosition(SyntheticPixelEnv(**SMALL)), "MultiInputPolicy"
    else:
        env, policy = make_env(env_id, 2, seed=0, env_kwargs=SMALL), "CnnPolicy"
    params = dict(n_steps=32, batch_size=24, n_epochs=2, seed=1, device=device)  # 64 rows: 24 + 24 + 16 per epoch
    params.update(hyper)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SB3: "truncated mini-batch of size 16" (on purpose here)
        model = cls(policy, env, policy_kwargs=rlvision.policy_kwargs(backbone, algo="ppo"), **params)
    model.set_logger(configure(None, []))
    model.learn(steps)
    return model


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().cpu() for p in model.policy.parameters()])


CASES = {
    "discrete": {},
    "clip_range_vf": dict(clip_range_vf=0.2),
    "continuous": dict(env_id="SyntheticPixelContinuous-v0"),
    "dict_obs": dict(dict_obs=True, n_steps=64),
    "mobilenet_bn": dict(backbone="mobilenetv4_nano_rl"),
    "no_adv_norm_lr_schedule": dict(normalize_advantage=False, learning_rate=lambda p: 3e-4 * p),
    "target_kl (SB3's train)": dict(target_kl=0.001),
}


@pytest.mark.parametrize("case", CASES)
def test_same_weights_and_logs_as_sb3_ppo(case, device, exact_cuda):
    kwargs = CASES[case]
    ours, theirs = _train(GraphedPPO, device, **kwargs), _train(PPO, device, **kwargs)
    if device == "cpu":  # same operations in the same order: bit for bit
        assert torch.equal(_flat(ours), _flat(theirs))
    else:  # graph replay vs eager, and Adam's learning rate as a float32 tensor: float rounding only
        torch.testing.assert_close(_flat(ours), _flat(theirs), atol=1e-4, rtol=1e-3)
        if "target_kl" not in case:
            assert ours.graph_captures == 2  # minibatches of 24 and of 16 rows
            assert ours.graph_step.error is None
    logs, expected = ours.logger.name_to_value, theirs.logger.name_to_value
    assert set(logs) == set(expected)
    for key, value in expected.items():
        assert logs[key] == pytest.approx(float(value), rel=1e-5 if device == "cpu" else 1e-2, abs=1e-6), key


def test_learning_moves_and_save_load_continue_identically(tmp_path):
    env = make_env("SyntheticPixel-v0", 2, seed=0, env_kwargs=SMALL)
    model = make_agent("graphedppo", env, backbone="nature_cnn", seed=0, n_steps=32, batch_size=32, n_epochs=2)
    assert isinstance(model, GraphedPPO) and model.policy.optimizer.defaults["eps"] == 1e-5  # PPO's defaults
    before = _flat(model)
    model.set_logger(configure(None, []))
    model.learn(128)
    assert not torch.equal(before, _flat(model))
    model.save(tmp_path / "model.zip")
    loaded = GraphedPPO.load(tmp_path / "model.zip", env=env)
    assert loaded.cuda_graph and torch.equal(_flat(loaded), _flat(model))
    obs = env.reset()
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    for m in (model, loaded):  # the same further training from the same state
        m.set_random_seed(5)
        m.set_logger(configure(None, []))
        m.learn(64)
    assert torch.equal(_flat(loaded), _flat(model))


def test_replaced_optimizer_state_means_a_new_capture(tmp_path):
    """Loading parameters from a file replaces the optimizer's state tensors: graphs that read the old ones go."""
    model = _train(GraphedPPO, "cpu", steps=64)
    model.save(tmp_path / "model.zip")
    resets = []
    model.graph_step.reset = lambda: resets.append(1)
    model._prepare_update()
    assert resets == []  # nothing replaced: the graphs stay
    model.set_parameters(model.get_parameters())  # the same tensors (torch keeps them): nothing to capture again
    model._prepare_update()
    assert resets == []
    model.set_parameters(str(tmp_path / "model.zip"))
    model._prepare_update()
    assert resets == [1]


def test_bad_arguments():
    env = make_env("SyntheticPixel-v0", 1, seed=0, env_kwargs=SMALL)
    with pytest.raises(ValueError, match="graph_warmup must be >= 1"):
        GraphedPPO("CnnPolicy", env, graph_warmup=0)
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        CudaGraphStep(lambda x: x, warmup=0)


def _sgd_setup(device, lr):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1)).to(device)
    cuda = device == "cuda"
    optimizer = torch.optim.Adam(net.parameters(), lr=torch.tensor(lr, device=device) if cuda else lr,
                                 capturable=cuda, fused=True)

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(x).flatten(), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return net, optimizer, step


def test_cuda_graph_step_off_cuda_runs_the_step_eagerly():
    net, _, step = _sgd_setup("cpu", 1e-2)
    graphed = CudaGraphStep(step, warmup=1)
    x, y = torch.randn(16, 8), torch.randn(16)
    losses = [graphed(x, y).item() for _ in range(5)]
    assert graphed.captures == 0 and losses[-1] < losses[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_graph_step_replays_the_same_training_and_sees_in_place_updates(exact_cuda):
    data = [(torch.randn(32, 8, device="cuda"), torch.randn(32, device="cuda")) for _ in range(8)]
    eager_net, eager_opt, eager_step = _sgd_setup("cuda", 1e-2)
    graph_net, graph_opt, step = _sgd_setup("cuda", 1e-2)
    graphed = CudaGraphStep(step, warmup=2)
    for x, y in data:
        torch.testing.assert_close(graphed(x, y), eager_step(x, y), atol=1e-5, rtol=1e-5)
    assert graphed.captures == 1 and graphed.error is None
    torch.testing.assert_close(list(graph_net.state_dict().values()), list(eager_net.state_dict().values()),
                               atol=1e-5, rtol=1e-5)
    graph_opt.param_groups[0]["lr"].fill_(0.0)  # a learning rate of 0 updated in place: the replay uses it
    frozen = [p.clone() for p in graph_net.parameters()]
    graphed(*data[0])
    for before, after in zip(frozen, graph_net.parameters(), strict=False):
        torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_the_graph_bookkeeping_on_cpu(monkeypatch):
    """What the CUDA path does besides capturing, run on the CPU (where CudaGraphStep runs the step eagerly): a
    capturable Adam whose learning rate is a tensor updated in place by the schedule, graphs kept across updates."""
    monkeypatch.setattr(GraphedPPO, "graphs_enabled", property(lambda self: True))
    schedule = dict(learning_rate=lambda p: 3e-4 * p)
    ours, theirs = _train(GraphedPPO, "cpu", steps=64, **schedule), _train(PPO, "cpu", steps=64, **schedule)
    # the same update (Adam's lr now a float32 tensor: float rounding at most)
    torch.testing.assert_close(_flat(ours), _flat(theirs), atol=1e-6, rtol=1e-5)
    group = ours.policy.optimizer.param_groups[0]
    assert group["capturable"] and isinstance(group["lr"], torch.Tensor)
    lr = group["lr"]
    resets = []
    ours.graph_step.reset = lambda: resets.append(1)
    ours.set_logger(configure(None, []))
    ours.learn(128, reset_num_timesteps=False)  # two more updates: the schedule moves the lr
    assert resets == [] and ours.policy.optimizer.param_groups[0]["lr"] is lr  # the same tensor, updated in place
    assert lr.item() == pytest.approx(ours.lr_schedule(ours._current_progress_remaining), rel=1e-6)


def test_profiler_times_and_counts_graph_replays():
    """Replays bypass forward hooks and the optimizer's step: the profiler times CudaGraphStep.replay as its own
    phase and counts its rows as training samples (exercised with a stand-in graph, as CPUs have no CUDA graphs)."""
    from rlvision.profiler import PHASES, ThroughputProfiler

    assert "train_graph" in PHASES
    model = _train(GraphedPPO, "cpu", steps=64)
    profiler = ThroughputProfiler()
    profiler.init_callback(model)
    profiler.on_training_start(locals(), globals())

    class Graph:
        replays = 0

        def replay(self):
            Graph.replays += 1

    out = torch.zeros(6)
    idx = torch.arange(24)
    session = profiler.session
    before = session._counts["train_samples"]
    assert model.graph_step.replay((Graph(), [torch.empty_like(idx)], out), (idx,)) is out
    assert Graph.replays == 1 and session._counts["train_samples"] - before == 24
    assert session._window["train_graph"] > 0
    profiler.on_training_end()
    assert "replay" not in vars(model.graph_step)  # the timer is removed after training
