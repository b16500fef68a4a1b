"""Issue 34 item 1: no code runs when a model file is opened (rlvision.model_files)."""

import base64
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

import rlvision
from rlvision.agents import make_agent
from rlvision.algorithms import ALGORITHMS
from rlvision.envs import make_env
from rlvision.model_files import MANIFEST, UntrustedModelError, read_zip

SMALL = dict(size=36, grid=3)
DATA = os.path.join(os.path.dirname(__file__), "data", "saved")


class Payload:
    """Unpickling this creates ``path``: what a crafted zip's pickle would do with os.system instead."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def small_model(algo="ppo", seed=0):
    row = ALGORITHMS[algo]
    env_id = "SyntheticPixelContinuous-v0" if row.actions == "box" else "SyntheticPixel-v0"
    env = make_env(env_id, n_envs=1, seed=seed, env_kwargs=SMALL)
    small = dict(buffer_size=64, learning_starts=8, batch_size=8) if not row.on_policy else dict(n_steps=16)
    if row.on_policy and "batch_size" in row.defaults:
        small["batch_size"] = 16
    return make_agent(algo, env, backbone="nature_cnn", seed=seed, **small), env


def craft(path, out, key, keep_manifest=True, readable=None):
    """A copy of the zip at ``path`` whose data entry ``key`` is a pickle of :class:`Payload` (and, optionally, a
    different readable text next to it); without the manifest if asked."""
    marker = out + ".ran"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            if name == MANIFEST and not keep_manifest:
                continue
            content = src.read(name)
            if name == "data":
                data = json.loads(content)
                entry = dict(data.get(key) or {":type:": "<class 'object'>"})
                entry[":serialized:"] = base64.b64encode(pickle.dumps(Payload(marker))).decode()
                entry.update(readable or {})
                data[key] = entry
                content = json.dumps(data).encode()
            dst.writestr(name, content)
    return marker


@pytest.mark.parametrize("algo", sorted(ALGORITHMS))
def test_every_algorithm_saves_a_manifest_and_opens_without_unpickling(algo, tmp_path):
    if ALGORITHMS[algo].cls_path.startswith("sb3_contrib"):
        pytest.importorskip("sb3_contrib")
    model, env = small_model(algo)
    model.learn(32)
    path = rlvision.save(model, tmp_path / "model")
    assert path.endswith("model.zip") and os.listdir(tmp_path) == ["model.zip"]  # no temporary file left
    data, manifest = read_zip(path)
    assert manifest["algorithm"] == algo and manifest["unsupported"] == {}
    assert manifest["encoder"]["backbone"] == "nature_cnn" and "stable_baselines3" in manifest["versions"]
    serialized = {k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v}
    assert serialized == set(manifest["entries"])
    loaded = rlvision.load(path, env=env, device="cpu")
    obs = env.reset()
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0],
                                  loaded.predict(obs, deterministic=True)[0])
    assert loaded.num_timesteps == model.num_timesteps
    assert type(loaded.lr_schedule(1.0)) is float and loaded.lr_schedule(0.5) == pytest.approx(model.lr_schedule(0.5))


def test_linear_schedules_are_kept_as_rl_zoo_strings(tmp_path):
    env = make_env("SyntheticPixel-v0", n_envs=1, seed=0, env_kwargs=SMALL)
    model = make_agent("ppo", env, backbone="nature_cnn", seed=0, n_steps=16, batch_size=16, learning_rate="lin_1e-3")
    path = rlvision.save(model, tmp_path / "m.zip")
    assert read_zip(path)[1]["entries"]["lr_schedule"]["value"] == "lin_0.001"
    assert rlvision.load(path, device="cpu").lr_schedule(0.25) == pytest.approx(2.5e-4)


@pytest.mark.parametrize("key, readable", [
    ("clip_range", None),  # a schedule
    ("policy_kwargs", None),
    ("observation_space", None),
    ("lr_schedule", {"value_schedule": "not a schedule"}),  # its readable text changed too
])
def test_a_crafted_entry_never_runs(key, readable, tmp_path):
    """With the manifest the entry is rebuilt from it; without, from the readable text or refused; never from the
    pickle. trust=True runs SB3's loader, which does unpickle it (the payload is live)."""
    model, env = small_model()
    path = rlvision.save(model, tmp_path / "model.zip")
    for keep in (True, False):
        evil = str(tmp_path / f"evil-{key}-{keep}.zip")
        marker = craft(path, evil, key, keep_manifest=keep, readable=readable)
        try:
            loaded = rlvision.load(evil, env=env, device="cpu")
            assert loaded.policy_kwargs["features_extractor_kwargs"]["backbone"] == "nature_cnn"
        except UntrustedModelError as error:
            assert not keep and f"entry {key!r}" in str(error) and "trust=True" in str(error)
        assert not os.path.exists(marker), f"the payload in {key} ran ({'with' if keep else 'without'} manifest)"
    try:
        rlvision.load(evil, env=env, device="cpu", trust=True)
    except Exception:  # noqa: BLE001  (SB3 may or may not choke on the payload's return value: it ran either way)
        pass
    assert os.path.exists(marker)


def test_an_unknown_pickled_entry_is_refused_and_named(tmp_path):
    model, _ = small_model()
    path = rlvision.save(model, tmp_path / "model.zip")
    evil = str(tmp_path / "evil.zip")
    marker = craft(path, evil, "surprise")
    with pytest.raises(UntrustedModelError, match=r"entry 'surprise'.*runs code from the file.*trust=True"):
        rlvision.load(evil, device="cpu")
    assert not os.path.exists(marker)


def test_the_export_command_and_train_resume_never_run_a_payload(tmp_path, capsys):
    from rlvision.cli import main as cli
    from rlvision.commands import train

    model, _ = small_model()
    path = rlvision.save(model, tmp_path / "ppo_model.zip")
    evil = str(tmp_path / "ppo_evil.zip")
    marker = craft(path, evil, "surprise")
    with pytest.raises(SystemExit) as exit_:
        cli(["export", evil, "--format", "torchscript", "--out", str(tmp_path / "x.pt")])
    assert exit_.value.code == 2 and "--trust-file" in capsys.readouterr().err and not os.path.exists(marker)
    with pytest.raises(SystemExit):  # --check-only opens the zip too
        cli(["export", str(tmp_path / "x.pt"), "--check-only", "--zip", evil])
    assert not os.path.exists(marker)
    # train --resume on a copied run folder whose checkpoint zip was swapped for a crafted one
    settings = ["--set", "env=SyntheticPixel-v0", "--set", "env_kwargs={size: 36, grid: 3}", "--set", "n_envs=2",
                "--set", "backbone=nature_cnn", "--set", "hyperparams={n_steps: 16, batch_size: 32}", "--set",
                "checkpoint_every=32", "--set", "eval_episodes=0", "--set", f"log_dir={tmp_path / 'runs'}",
                "--set", "run_name=r", "--no-progress"]
    train.main(settings + ["--set", "steps=64"])
    checkpoints = sorted((tmp_path / "runs" / "r" / "checkpoints").iterdir())
    zip_in_checkpoint = checkpoints[-1] / "model.zip"
    marker = craft(str(zip_in_checkpoint), str(tmp_path / "swapped.zip"), "surprise")
    os.replace(tmp_path / "swapped.zip", zip_in_checkpoint)
    meta = json.loads((checkpoints[-1] / "meta.json").read_text())  # a copier keeps the hashes consistent
    from rlvision.agents.checkpoints import _digest

    meta["files"]["model.zip"] = dict(size=zip_in_checkpoint.stat().st_size, sha256=_digest(str(zip_in_checkpoint)))
    (checkpoints[-1] / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        train.main(settings + ["--set", "steps=128", "--resume"])
    assert exit_.value.code == 2 and "pass --trust-file" in capsys.readouterr().err and not os.path.exists(marker)


def test_zips_saved_before_open_without_the_opt_in_and_act_as_saved():
    """tests/data zips have no manifest: their readable JSON says all there is (class paths, literal kwargs,
    spaces, schedules)."""
    import torch

    for name in ("ppo_nano_rl_90905d6", "ppo_nano_rl_90694ce", "ppo_default_61270d4"):
        saved = np.load(os.path.join(DATA, name + ".npz"))
        model = rlvision.load(os.path.join(DATA, name + ".zip"), device="cpu")
        model.policy.set_training_mode(False)
        with torch.no_grad():
            probs = model.policy.get_distribution(model.policy.obs_to_tensor(saved["obs"])[0]).distribution.probs
        np.testing.assert_allclose(probs.numpy(), saved["probs"], atol=1e-6)


def test_a_file_that_is_not_a_model_zip_is_named_as_such(tmp_path, capsys):
    from rlvision.cli import main as cli

    junk = tmp_path / "corrupt.zip"
    junk.write_bytes(os.urandom(256))
    for extra in ([], ["--algo", "ppo"]):
        with pytest.raises(SystemExit) as exit_:
            cli(["export", str(junk), *extra])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "is not a model zip" in err and "pass --algo" not in err
    with pytest.raises(ValueError, match="not a model zip"):
        rlvision.load(str(junk), algo="ppo")
