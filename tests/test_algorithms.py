"""Issue 33 item 3: the algorithm table is complete, and nothing outside it branches on an algorithm's name."""

import ast
import os

import pytest
import torch

from rlvision.algorithms import ALGORITHMS
from rlvision.policies import policy_head, policy_outputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(size=36, grid=3)


def _names_in(node) -> set:
    values = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)}


def test_no_algorithm_name_is_compared_outside_the_table():
    offenders = []
    for folder in ("rlvision", "agents", "envs"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for file in files:
                path = os.path.join(dirpath, file)
                if not file.endswith(".py") or path.endswith(os.path.join("rlvision", "algorithms.py")):
                    continue
                with open(path) as f:
                    tree = ast.parse(f.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Compare):
                        names = set().union(*(_names_in(n) for n in [node.left, *node.comparators]))
                        if names & set(ALGORITHMS):
                            offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {sorted(names)}")
    assert offenders == []


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_the_tables_head_is_the_policy_make_agent_builds(algo):
    row = ALGORITHMS[algo]
    if row.cls_path.startswith("sb3_contrib"):
        pytest.importorskip("sb3_contrib")
    from rlvision.agents import make_agent
    from rlvision.envs import make_env

    env_id = "SyntheticPixelContinuous-v0" if row.actions == "box" else "SyntheticPixel-v0"
    env = make_env(env_id, n_envs=1, seed=0, env_kwargs=SMALL)
    small = dict(buffer_size=64, learning_starts=8) if not row.on_policy else dict(n_steps=8)
    if "batch_size" in row.defaults:
        small["batch_size"] = 8
    model = make_agent(algo, env, backbone="nature_cnn", seed=0, **small)
    assert policy_head(model.policy) == row.head
    if row.recurrent:
        return  # its outputs need the LSTM state: the exporter steps it (tests/test_export.py)
    obs = model.policy.obs_to_tensor(env.observation_space.sample()[None])[0]
    model.policy.set_training_mode(False)
    with torch.no_grad():
        out = policy_outputs(model.policy, obs, row.head, critic_q=True)
        action = model.policy._predict(obs, deterministic=True)
        if row.head == "distribution":
            torch.testing.assert_close(out.value, model.policy.predict_values(obs))
            assert torch.equal(out.params.argmax(dim=1), action.flatten())
        elif row.head in ("q", "quantile"):
            assert torch.equal(out.q.argmax(dim=1), action.flatten())
        elif row.head == "squashed_gaussian":
            torch.testing.assert_close(torch.tanh(out.params), action)
            assert out.q is not None and out.q.shape == (1, 1)
        else:
            torch.testing.assert_close(out.params, action)


def test_every_row_says_how_to_build_and_run_its_algorithm():
    from rlvision.agents import DEFAULTS

    for name, row in ALGORITHMS.items():
        assert DEFAULTS[name] == row.defaults and DEFAULTS[name] is not row.defaults  # a copy each
        assert row.head in ("distribution", "squashed_gaussian", "deterministic", "q", "quantile")
        assert not (row.masked and row.recurrent)
        assert row.on_policy == ("n_steps" in row.defaults)
