"""Export (issue 22): ONNX / TorchScript / ExecuTorch files of trained policies act as the SB3 model does."""

import os
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402

from rlvision import export  # noqa: E402
from rlvision.agents import make_agent  # noqa: E402
from rlvision.cli import main as cli  # noqa: E402
from rlvision.envs import make_env  # noqa: E402

SMALL = dict(size=36, grid=3)


def trained(algo, backbone="nature_cnn", env_id="SyntheticPixel-v0", **hp):
    env = make_env(env_id, n_envs=2, seed=0, env_kwargs=SMALL)
    fast = {"ppo": dict(n_steps=16, batch_size=32, n_epochs=1),
            "sac": dict(buffer_size=200, learning_starts=20, batch_size=16),
            "dqn": dict(buffer_size=200, learning_starts=20, batch_size=16, train_freq=4),
            "maskableppo": dict(n_steps=16, batch_size=32, n_epochs=1)}[algo]
    model = make_agent(algo, env, backbone=backbone, seed=0, **{**fast, **hp})
    model.learn(64)
    return model, env


def test_ppo_with_batchnorm_exports_to_onnx_and_acts_as_sb3(tmp_path):
    """The default encoder (BatchNorm folded in the file), value included; the file serves evaluate_policy."""
    model, env = trained("ppo", "mobilenetv4_nano_rl")
    path = str(tmp_path / "policy.onnx")
    report = export.export_policy(model, path, with_value=True, n_check=16, log=lambda *_: None)
    assert os.path.isfile(path) and report.action_agreement == 1.0 and report.max_diff["value"] < 1e-4
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    import onnx

    graph = onnx.load(path).graph
    assert not any(n.op_type == "BatchNormalization" for n in graph.node)  # folded
    policy = export.OnnxPolicy(path)
    obs = np.stack([env.observation_space.sample() for _ in range(5)])  # a batch size the export never saw
    np.testing.assert_array_equal(policy.predict(obs)[0], model.predict(obs, deterministic=True)[0])
    single, _ = policy.predict(obs[0])
    assert np.ndim(single) == 0 and single == model.predict(obs[0], deterministic=True)[0]
    episodes, _ = evaluate_policy(policy, env, n_eval_episodes=2, return_episode_rewards=True)
    assert len(episodes) == 2
    with pytest.raises(ValueError, match="deterministic=True"):
        policy.predict(obs, deterministic=False)


def test_export_prints_its_result_and_nothing_else(tmp_path, capfd):
    """Every export made torch's exporter print four "torchvision is not installed. Skipping torchvision::nms"
    lines (rlvision never needs torchvision) and a FutureWarning of torch.export: not the user's business."""
    model, _ = trained("ppo")
    model.save(tmp_path / "m.zip")
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli(["export", str(tmp_path / "m.zip"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    out, err = capfd.readouterr()
    assert len(out.splitlines()) == 1 and "actions equal: 100.0%" in out and err == ""
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]


def test_sac_actor_exports_with_unscaled_actions(tmp_path):
    model, env = trained("sac", env_id="SyntheticPixelContinuous-v0")
    path = str(tmp_path / "sac.onnx")
    report = export.export_policy(model, path, logits=True, log=lambda *_: None)
    assert report.max_diff["action"] < 1e-5
    obs = np.stack([env.observation_space.sample() for _ in range(4)])
    np.testing.assert_allclose(export.OnnxPolicy(path).predict(obs)[0], model.predict(obs, deterministic=True)[0],
                               atol=1e-5)
    with pytest.raises(ValueError, match="no state-value critic"):
        export.export_policy(model, str(tmp_path / "v.onnx"), with_value=True)


def test_dqn_torchscript_and_the_mask_of_maskable_ppo(tmp_path):
    dqn, _ = trained("dqn")
    report = export.export_policy(dqn, str(tmp_path / "dqn.pt"), format="torchscript", log=lambda *_: None)
    assert report.action_agreement == 1.0
    pytest.importorskip("sb3_contrib")
    from sb3_contrib.common.wrappers import ActionMasker
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecTransposeImage

    from rlvision.envs import SyntheticPixelEnv

    env = VecTransposeImage(make_vec_env(SyntheticPixelEnv, n_envs=2, seed=0, env_kwargs=SMALL,
                                         wrapper_class=ActionMasker,
                                         wrapper_kwargs=dict(action_mask_fn=lambda e: np.ones(4, dtype=bool))))
    masked = make_agent("maskableppo", env, backbone="nature_cnn", seed=0, n_steps=16, batch_size=32, n_epochs=1)
    path = str(tmp_path / "masked.onnx")
    assert export.export_policy(masked, path, log=lambda *_: None).action_agreement == 1.0
    policy = export.OnnxPolicy(path)
    obs = np.stack([env.observation_space.sample() for _ in range(6)])
    only = np.zeros((6, 4), dtype=bool)
    only[np.arange(6), [0, 1, 2, 3, 2, 1]] = True  # one legal action per row: the policy must take it
    np.testing.assert_array_equal(policy.predict(obs, action_masks=only)[0], [0, 1, 2, 3, 2, 1])
    with pytest.raises(ValueError, match="action_masks"):
        policy.predict(obs)


def test_a_mismatch_fails_with_the_numbers_and_leaves_no_file(tmp_path, monkeypatch):
    model, _ = trained("ppo")
    path = tmp_path / "p.pt"
    from rlvision.export import verification

    real = verification._reference
    monkeypatch.setattr(verification, "_reference", lambda m, i, g: [(real(m, i, g)[0] + 1) % 4])
    with pytest.raises(export.ExportMismatchError, match=r"actions equal: 0\.0%"):
        export.export_policy(model, str(path), format="torchscript", log=lambda *_: None)
    assert not os.listdir(tmp_path)


def test_unsupported_and_bad_input_are_named(tmp_path):
    model, _ = trained("ppo")
    with pytest.raises(ValueError, match="format 'tflite': choose one of onnx, torchscript, executorch"):
        export.export_policy(model, str(tmp_path / "p.tflite"), format="tflite")
    with pytest.raises(ValueError, match="positive int"):
        export.export_policy(model, str(tmp_path / "p.onnx"), batch=0)
    (tmp_path / "junk.onnx").write_text("not a model")
    with pytest.raises(ValueError, match="junk.onnx.*export it again"):
        export.OnnxPolicy(str(tmp_path / "junk.onnx"))
    with pytest.raises(ValueError, match="Cannot export ARS; supported: ppo"):  # an algorithm not covered
        export.graph._PolicyGraph(type("ARS", (), dict(policy=None, observation_space=None))(), False, False)


def test_recurrent_ppo_exports_with_its_lstm_state_in_and_out(tmp_path):
    pytest.importorskip("sb3_contrib")
    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=SMALL)
    model = make_agent("recurrentppo", env, backbone="nature_cnn", seed=0, n_steps=16, batch_size=32, n_epochs=1)
    model.learn(64)
    path = str(tmp_path / "lstm.onnx")
    report = export.export_policy(model, path, log=lambda *_: None)
    assert report.action_agreement == 1.0 and report.max_diff["state_h_out"] < 1e-4
    policy = export.OnnxPolicy(path)
    obs = env.reset()
    state, starts = None, np.ones(2, dtype=bool)
    ours, sb3 = None, None
    for _ in range(4):  # a few steps with the state carried along, both ways
        ours_action, ours = policy.predict(obs, state=ours, episode_start=starts)
        sb3_action, sb3 = model.predict(obs, state=sb3, episode_start=starts, deterministic=True)
        np.testing.assert_array_equal(ours_action, sb3_action)
        np.testing.assert_allclose(ours[0], sb3[0], atol=1e-5)
        obs, _, dones, _ = env.step(sb3_action)
        starts = dones
    del state


def test_command_exports_and_rechecks(tmp_path, capsys):
    model, _ = trained("ppo")
    model.save(tmp_path / "ppo_run.zip")
    cli(["export", str(tmp_path / "ppo_run.zip"), "--format", "torchscript", "--with-value", "--n-check", "8"])
    assert (tmp_path / "ppo_run.pt").is_file()
    assert "actions equal: 100.0%" in capsys.readouterr().out
    cli(["export", str(tmp_path / "ppo_run.pt"), "--check-only", "--zip", str(tmp_path / "ppo_run.zip")])
    out = capsys.readouterr().out  # the file has a value output: --check-only checks it too (issue 34 item 3)
    assert "actions equal: 100.0%" in out and "value" in out
    cli(["export", str(tmp_path / "ppo_run.zip"), "--format", "torchscript", "--out", str(tmp_path / "a.pt")])
    capsys.readouterr()
    cli(["export", str(tmp_path / "a.pt"), "--check-only", "--zip", str(tmp_path / "ppo_run.zip")])
    assert "value" not in capsys.readouterr().out  # a file without one: the action only
    with pytest.raises(SystemExit) as error:
        cli(["export", str(tmp_path / "missing.zip")])
    assert error.value.code == 2
    torch.manual_seed(0)


@pytest.mark.parametrize("algo", ["a2c", "trpo", "ppo", "td3", "tqc", "crossq", "qrdqn"])
def test_every_covered_algorithm_exports_and_acts_as_sb3(algo, tmp_path):
    """TorchScript (fast to write) for the rest of the covered algorithms; PPO here on Box actions."""
    from rlvision.algorithms import algorithm

    if algo in ("tqc", "crossq", "qrdqn", "trpo"):
        pytest.importorskip("sb3_contrib")
    continuous = algo == "ppo" or algorithm(algo).actions == "box"
    env = make_env("SyntheticPixelContinuous-v0" if continuous else "SyntheticPixel-v0", n_envs=2, seed=0,
                   env_kwargs=SMALL)
    on_policy = dict(n_steps=16, batch_size=32) if algo in ("ppo", "trpo") else dict(n_steps=16)
    off_policy = dict(buffer_size=200, learning_starts=20, batch_size=16)
    hp = on_policy if algorithm(algo).on_policy else off_policy
    model = make_agent(algo, env, backbone="nature_cnn", seed=0, **hp)
    model.learn(48)
    report = export.export_policy(model, str(tmp_path / "p.pt"), format="torchscript",
                                  with_value=algorithm(algo).on_policy, log=lambda *_: None)
    assert report.action_agreement == 1.0
    assert report.max_diff["action"] < (1e-5 if continuous else 0.5)


def test_train_exports_at_the_end_of_a_run(tmp_path):
    from rlvision.commands import train

    values = dict(env="SyntheticPixel-v0", env_kwargs="{size: 36, grid: 3}", n_envs=2, backbone="nature_cnn",
                  steps=64, checkpoint_every=64, eval_episodes=0, log_dir=str(tmp_path), run_name="r",
                  hyperparams="{n_steps: 32, batch_size: 32, n_epochs: 1}", export="torchscript")
    train.main([a for k, v in values.items() for a in ("--set", f"{k}={v}")] + ["--no-progress"])
    assert (tmp_path / "r" / "policy.pt").is_file()
    with pytest.raises(ValueError, match="'export' must be one of"):
        train.load_config(None, ["export=tflite"])


def test_bad_files_paths_and_observations_are_named(tmp_path):
    model, env = trained("ppo")
    path = str(tmp_path / "p.onnx")
    export.export_policy(model, path, log=lambda *_: None)
    policy = export.OnnxPolicy(path)
    with pytest.raises(ValueError, match=r"wants observations of shape \(3, 36, 36\).*got \(2, 3, 40, 40\)"):
        policy.predict(np.zeros((2, 3, 40, 40), dtype=np.uint8))
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0o500)
    try:
        if not os.access(tmp_path / "locked", os.W_OK):  # (root may write anywhere)
            with pytest.raises(ValueError, match="not writable; choose another --out"):
                export.export_policy(model, str(tmp_path / "locked" / "p.onnx"))
    finally:
        (tmp_path / "locked").chmod(0o700)
    (tmp_path / "notes.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip, not an SB3 model
    with pytest.raises(SystemExit) as error:
        cli(["export", str(tmp_path / "notes.zip"), "--algo", "ppo"])
    assert error.value.code == 2
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_executorch_file_acts_as_sb3_in_any_batch(tmp_path):
    """The .pte (XNNPACK, fixed batch 1) is checked at export (32 observations, run one by one) and serves SB3's
    evaluate_policy through ExecuTorchPolicy, which runs a batch of 2 envs in chunks."""
    pytest.importorskip("executorch")
    model, env = trained("ppo", "mobilenetv4_nano_rl")
    path = str(tmp_path / "policy.pte")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = export.export_policy(model, path, format="executorch", with_value=True, log=lambda *_: None)
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]  # torch.export's LeafSpec warnings
    assert report.action_agreement == 1.0 and report.max_diff["value"] < 1e-4
    assert sorted(os.listdir(tmp_path)) == ["policy.pte", "policy.pte.json"]  # no temporary file left
    policy = export.ExecuTorchPolicy(path)
    obs = env.reset()
    np.testing.assert_array_equal(policy.predict(obs)[0], model.predict(obs, deterministic=True)[0])
    np.testing.assert_array_equal(policy.predict(obs[0])[0], model.predict(obs[0], deterministic=True)[0])
    env.seed(0)
    mine = evaluate_policy(policy, env, n_eval_episodes=4, deterministic=True, return_episode_rewards=True)
    env.seed(0)
    theirs = evaluate_policy(model, env, n_eval_episodes=4, deterministic=True, return_episode_rewards=True)
    assert mine == theirs  # the same episodes: returns and lengths
    print(export.verify(model, path, n_check=5, with_value=True))  # --check-only's path: 5 = 1+1+1+1+1 chunks
    os.remove(path + ".json")
    with pytest.raises(ValueError, match="names file.*missing.*export the model again"):
        export.ExecuTorchPolicy(path)


def test_executorch_recurrent_state_is_chunked_on_its_batch_axis(tmp_path):
    pytest.importorskip("executorch")
    pytest.importorskip("sb3_contrib")
    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=SMALL)
    model = make_agent("recurrentppo", env, backbone="nature_cnn", seed=0, n_steps=16, batch_size=32, n_epochs=1)
    model.learn(32)
    path = str(tmp_path / "lstm.pte")
    report = export.export_policy(model, path, format="executorch", n_check=6, log=lambda *_: None)
    assert report.action_agreement == 1.0 and report.max_diff["state_h_out"] < 1e-4
    policy, obs = export.ExecuTorchPolicy(path), env.reset()
    ours_action, ours = policy.predict(obs, episode_start=np.ones(2, dtype=bool))
    sb3_action, sb3 = model.predict(obs, episode_start=np.ones(2, dtype=bool), deterministic=True)
    np.testing.assert_array_equal(ours_action, sb3_action)
    np.testing.assert_allclose(ours[1], sb3[1], atol=1e-5)


def test_executorch_falls_back_to_portable_kernels_when_xnnpack_differs(tmp_path, monkeypatch):
    """XNNPACK approximates some operators (ResT's actions differed on 77% of 256 observations, BENCHMARKS.md): a
    refused XNNPACK file is lowered again on ExecuTorch's portable kernels and checked again."""
    pytest.importorskip("executorch")
    import json

    model, _ = trained("ppo")
    real, calls = export.verify, []

    def xnnpack_differs(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise export.ExportMismatchError("actions equal: 23.0%")
        return real(*args, **kwargs)

    from rlvision.export import writers

    monkeypatch.setattr(writers, "verify", xnnpack_differs)
    lines = []
    path = str(tmp_path / "p.pte")
    report = export.export_policy(model, path, format="executorch", n_check=4, log=lines.append)
    assert report.action_agreement == 1.0 and len(calls) == 2
    assert "portable kernels" in lines[0] and "portable" in lines[-1]
    with open(path + ".json") as f:
        assert json.load(f)["backend"] == "portable"
    assert sorted(os.listdir(tmp_path)) == ["p.pte", "p.pte.json"]
