"""onnxruntime as the rollout backend (issue 22, part): same outputs as the torch path, follows weight changes
without re-exporting, any batch from one export, falls back to torch with a warning."""

import numpy as np
import pytest
import torch
from gymnasium import spaces

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
from rlvision import VisionExtractor  # noqa: E402
from rlvision.agents import make_agent  # noqa: E402
from rlvision.envs import make_env  # noqa: E402

SPACE = spaces.Box(0, 255, (4, 48, 48), np.uint8)


def pair(backbone):
    torch.manual_seed(0)
    plain = VisionExtractor(SPACE, backbone)
    ort = VisionExtractor(SPACE, backbone, rollout_backend="onnxruntime")
    ort.load_state_dict(plain.state_dict())
    for extractor in (plain, ort):
        extractor.train()
        extractor.eval()
    return plain, ort


@pytest.mark.parametrize("backbone", ["mobilenetv4_nano_rl", "nature_cnn"])
def test_same_outputs_any_batch_and_weight_changes_followed_without_reexport(backbone):
    plain, ort = pair(backbone)
    with torch.no_grad():
        for batch in (8, 3, 1):
            x = torch.rand(batch, *SPACE.shape)
            expected = plain(x)
            torch.testing.assert_close(ort(x), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
        runner = ort._inference.runner
        assert runner is not None and runner.exports + runner.cache_hits == 1  # one graph serves every batch
        made = runner.sessions_made
        for p in plain.parameters():
            p.add_(0.01 * torch.randn_like(p))
        ort.load_state_dict(plain.state_dict())
        x = torch.rand(8, *SPACE.shape)
        expected = plain(x)
        torch.testing.assert_close(ort(x), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
        assert runner.exports + runner.cache_hits == 1 and runner.sessions_made == made + 1


def test_a_failed_export_falls_back_to_torch_with_a_warning(monkeypatch):
    from rlvision.ort_backend import OrtRunner

    def broken(self, shape):
        raise RuntimeError("no exporter today")

    monkeypatch.setattr(OrtRunner, "_export", broken)
    monkeypatch.setenv("RLVISION_CACHE_DIR", "")  # no cached graph to fall back on
    plain, ort = pair("nature_cnn")
    x = torch.rand(4, *SPACE.shape)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="no exporter today.*running on torch"):
        out = ort(x)
    torch.testing.assert_close(out, plain(x))
    assert ort._inference.runner is None and "no exporter today" in ort._inference.runner_error


def test_ppo_rollouts_run_on_onnxruntime():
    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=36, grid=3))
    model = make_agent("ppo", env, backbone="mobilenetv4_nano_rl", seed=0, n_steps=16, batch_size=32, n_epochs=1,
                       backbone_kwargs=dict(rollout_backend="onnxruntime"))
    model.learn(96)
    runner = model.policy.features_extractor._inference.runner
    # the first rollout runs before any update (plain path); each later one on a session with the new weights
    assert runner is not None and runner.exports + runner.cache_hits == 1 and runner.sessions_made == 2
    with pytest.raises(ValueError, match="rollout_backend must be"):
        VisionExtractor(SPACE, "nature_cnn", rollout_backend="tensorrt")


def runner_for(model, cache):
    from rlvision.ort_backend import OrtRunner

    return OrtRunner(model, threads=1, cache=str(cache) if cache else None)


def small_model(seed=0, width=8):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(4 * width, 5)).eval()


def test_the_exported_graph_is_cached_on_disk_and_read_back_with_the_current_weights(tmp_path):
    model = small_model()
    x = torch.rand(4, 3, 12, 12)
    first = runner_for(model, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(first(x), model(x), rtol=1e-4, atol=1e-6)
    assert (first.exports, first.cache_hits) == (1, 0)
    assert len(list(tmp_path.glob("*.onnx"))) == 1 and not list(tmp_path.glob(".tmp-*"))
    # another process (here: another runner) with the same architecture and other weights reads the graph back
    other = small_model(seed=1)
    second = runner_for(other, tmp_path)
    with torch.no_grad():
        out = second(x)
        torch.testing.assert_close(out, other(x), rtol=1e-4, atol=1e-6)
        assert not torch.allclose(out, model(x))
    assert (second.exports, second.cache_hits) == (0, 1)
    # another input shape, another architecture: other keys, each exported once
    wider = runner_for(small_model(width=6), tmp_path)
    with torch.no_grad():
        second(torch.rand(2, 3, 16, 16))
        wider(x)
    assert second.exports == 1 and wider.exports == 1 and len(list(tmp_path.glob("*.onnx"))) == 3


def test_a_cached_graph_that_disagrees_with_the_module_is_exported_again(tmp_path):
    from rlvision.ort_backend import graph_key

    model = small_model()
    x = torch.rand(4, 3, 12, 12)
    impostor = runner_for(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 12 * 12, 5)).eval(), None)
    with torch.no_grad():
        impostor(x)
    path = tmp_path / (graph_key(model, (3, 12, 12)) + ".onnx")
    path.write_bytes(impostor.graphs[(3, 12, 12)].SerializeToString())  # a stale file under the model's key
    runner = runner_for(model, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), model(x), rtol=1e-4, atol=1e-6)
    assert runner.cache_hits == 1 and runner.exports == 1  # read, refused by the check, exported, rewritten
    fresh = runner_for(model, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=1e-4, atol=1e-6)
    assert (fresh.exports, fresh.cache_hits) == (0, 1)
    path.write_bytes(b"not an onnx file")  # a damaged file: exported again
    damaged = runner_for(model, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(damaged(x), model(x), rtol=1e-4, atol=1e-6)
    assert (damaged.exports, damaged.cache_hits) == (1, 0)


def test_a_fresh_graph_that_disagrees_raises_and_the_copy_falls_back_to_torch(monkeypatch):
    from rlvision.ort_backend import OrtRunner

    real = OrtRunner._run
    monkeypatch.setattr(OrtRunner, "_run", lambda self, shape, x: real(self, shape, x) + 1.0)
    model = small_model()
    with torch.no_grad(), pytest.raises(ValueError, match="does not reproduce the torch module"):
        runner_for(model, None)(torch.rand(2, 3, 12, 12))
    plain, ort = pair("nature_cnn")
    monkeypatch.setenv("RLVISION_CACHE_DIR", "")
    x = torch.rand(2, *SPACE.shape)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="does not reproduce.*running on torch"):
        torch.testing.assert_close(ort(x), plain(x))


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    from rlvision.ort_backend import cache_dir

    monkeypatch.setenv("RLVISION_CACHE_DIR", str(tmp_path))
    assert cache_dir() == str(tmp_path)
    monkeypatch.setenv("RLVISION_CACHE_DIR", "")
    assert cache_dir() is None
    monkeypatch.delenv("RLVISION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == str(tmp_path / "rlvision" / "onnx")
