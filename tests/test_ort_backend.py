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
        assert runner is not None and runner.exports == 1  # one graph serves every batch size
        made = runner.sessions_made
        for p in plain.parameters():
            p.add_(0.01 * torch.randn_like(p))
        ort.load_state_dict(plain.state_dict())
        x = torch.rand(8, *SPACE.shape)
        expected = plain(x)
        torch.testing.assert_close(ort(x), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
        assert runner.exports == 1 and runner.sessions_made == made + 1


def test_a_failed_export_falls_back_to_torch_with_a_warning(monkeypatch):
    from rlvision.ort_backend import OrtRunner

    def broken(self, shape):
        raise RuntimeError("no exporter today")

    monkeypatch.setattr(OrtRunner, "_export", broken)
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
    assert runner is not None and runner.exports == 1 and runner.sessions_made == 2
    with pytest.raises(ValueError, match="rollout_backend must be"):
        VisionExtractor(SPACE, "nature_cnn", rollout_backend="tensorrt")
