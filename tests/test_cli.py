"""The installed ``rlvision`` command, and no script-as-library leftovers (issue 19)."""

import os
import re
import subprocess
import sys

import pytest

from rlvision.cli import COMMANDS, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(os.path.dirname(sys.executable), "rlvision")


def run_outside(args, tmp_path):
    return subprocess.run([SCRIPT, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not os.path.exists(SCRIPT), reason="the console script is installed by pip install")
def test_help_of_the_command_and_of_every_subcommand_outside_the_checkout(tmp_path):
    top = run_outside(["--help"], tmp_path)
    assert top.returncode == 0 and all(name in top.stdout for name in COMMANDS)
    for name in COMMANDS:
        result = run_outside([name, "--help"], tmp_path)
        assert result.returncode == 0, (name, result.stderr)
        assert result.stdout.startswith(f"usage: rlvision {name}") or name == "zoo", (name, result.stdout[:80])
    typo = run_outside(["cmpare"], tmp_path)
    assert typo.returncode == 2 and "did you mean 'compare'" in typo.stderr


def _parser(name):
    """The parser ``rlvision NAME`` builds (its parse_args stopped before anything runs)."""
    import argparse

    captured = {}
    original = argparse.ArgumentParser.parse_args

    def grab(self, args=None, namespace=None):
        captured["parser"] = self
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = grab
    try:
        with pytest.raises(SystemExit):
            main([name])
    finally:
        argparse.ArgumentParser.parse_args = original
    return captured["parser"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_that_states_its_default(name):
    """Issue 33 item 8: a newcomer reads each option's default in --help, and the description as plain text."""
    import argparse

    parser = _parser(name)
    assert parser.prog == f"rlvision {name}"
    missing = [a.dest for a in parser._actions if not a.help and a.dest != "help"]
    assert not missing, (name, missing)
    formatter = parser._get_formatter()
    no_default = [a.option_strings[0] for a in parser._actions
                  if a.option_strings and a.dest != "help" and not a.required
                  and not isinstance(a, argparse._StoreConstAction)
                  and "default" not in formatter._get_help_string(a)]
    assert not no_default, (name, no_default)
    text = parser.format_help()
    assert "``" not in text and ":class:" not in text and ":func:" not in text
    assert not [line for line in text.splitlines() if re.search(r"\S {3,}\S", line.strip()) and "  " not in
                line[:4] and not line.strip().startswith("-")], text


def test_no_module_edits_sys_path_or_imports_a_script():
    offenders = []
    for folder in ("rlvision", "experiments", "tests", "agents", "envs"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for file in files:
                if file.endswith(".py") and file != "test_cli.py":
                    with open(os.path.join(dirpath, file)) as f:
                        text = f.read()
                    if re.search(r"sys\.path\.(insert|append)|PYTHONPATH|from experiments|import experiments", text):
                        offenders.append(os.path.join(folder, file))
    assert offenders == []


def test_installed_command_exits_zero_when_a_command_returns_results(monkeypatch):
    """`rlvision sweep` returns its table; the console entry point must not turn it into exit status 1."""
    import rlvision.cli as cli

    monkeypatch.setattr(cli, "main", lambda: [{"final_return": 1.0}])
    assert cli.console() == 0
    monkeypatch.setattr(cli, "main", lambda: 3)
    assert cli.console() == 3
    monkeypatch.setattr(cli, "main", lambda: None)
    assert cli.console() == 0


def test_train_help_lists_every_config_key_with_its_default_and_the_shipped_configs():
    from rlvision.commands.train import DEFAULT_CONFIG, shipped_configs

    text = _parser("train").format_help()
    assert "Without a config the defaults run" in text and "shipped configs (rlvision train NAME)" in text
    keys = text.split("config keys:")[1]
    for key in DEFAULT_CONFIG:
        assert re.search(rf"^  {key} +\S.*\(default: .+\)$", keys, re.M), key
    assert set(shipped_configs()) >= {"ppo_synthetic", "ppo_pong", "ppo_minigrid", "sac_synthetic"}


def test_bench_help_names_the_files_it_writes():
    bench = _parser("bench")
    out = next(a for a in bench._actions if "--out" in a.option_strings)
    assert "bench.md" in out.help and "summary.md" not in out.help


def test_train_compare_and_sweep_list_the_same_run_settings_from_runspec():
    """One source (RunSpec's fields): the same flags, help and defaults in train, compare and sweep."""
    import dataclasses

    from rlvision.runs import RUN_SETTINGS, RunSpec

    groups = {}
    for name in ("train", "compare", "sweep"):
        parser = _parser(name)
        group = next(g for g in parser._action_groups if g.title.startswith("run settings"))
        groups[name] = [(a.option_strings, a.help) for a in group._group_actions]
    assert groups["train"] == groups["compare"] == groups["sweep"]
    assert [flags[0] for flags, _ in groups["train"]] == ["--" + k.replace("_", "-") for k in RUN_SETTINGS]
    spec = RunSpec()
    for (_flags, text), key in zip(groups["train"], RUN_SETTINGS, strict=True):
        value = getattr(spec, key)
        shown = "null" if value is None else "false" if value is False else "{}" if value == {} else (
            f'"{value}"' if isinstance(value, str) else str(value))
        assert text.endswith(f"(default: {shown})") or f"(default: {shown});" in text, (key, text)
    from rlvision.commands.train import DEFAULT_CONFIG
    from rlvision.sweep.grid import SETTINGS

    for key in RUN_SETTINGS:  # the config keys and the sweep's settings take RunSpec's defaults
        assert DEFAULT_CONFIG[key] == SETTINGS[key] == getattr(spec, key), key
    assert {f.name for f in dataclasses.fields(RunSpec)} >= set(DEFAULT_CONFIG) - {"checkpoint_every", "log_dir",
                                                                                    "run_name", "export"}


def test_an_old_train_config_keeps_working_and_resuming(tmp_path, capsys):
    """backbone_kwargs and features_dim (train's keys before RunSpec) are read as options, with a note naming the
    new key; the checkpoint digest of such a config is the one train computed before, so old runs still resume."""
    from rlvision.agents.checkpoints import config_hash
    from rlvision.commands.train import RESUMABLE_CHANGES, load_config, run_digest

    path = tmp_path / "old.yaml"
    path.write_text("env: SyntheticPixel-v0\nbackbone: mobilenetv4_nano_rl\nbackbone_kwargs: {norm: gn}\n"
                    "features_dim: 128\nsteps: 1000\n")
    cfg = load_config(str(path), [])
    assert cfg["options"] == {"norm": "gn", "features_dim": 128} and "backbone_kwargs" not in cfg
    err = capsys.readouterr().err
    assert "'backbone_kwargs' is now 'options'" in err and "'features_dim' is now 'options: {features_dim: N}'" in err
    # train's config as it was written before (issue 33): the same digest
    legacy = dict(env="SyntheticPixel-v0", env_kwargs={}, n_envs=8, frame_stack=None, algo="ppo",
                  backbone="mobilenetv4_nano_rl", backbone_kwargs={"norm": "gn"}, features_dim=128, hyperparams={},
                  steps=1000, seed=0, eval_episodes=20, checkpoint_every=25_000, log_dir="runs/train", run_name=None,
                  threads=None, device="auto", normalize_reward=False, export=None, check_nan=False)
    assert run_digest(cfg) == config_hash(legacy, RESUMABLE_CHANGES)
    assert run_digest({**cfg, "low_res": 2}) != run_digest(cfg)  # a new setting that changes the run counts
    with pytest.raises(ValueError, match="'low_res' must be an int >= 1 or null, got 'x'"):
        load_config(None, ["low_res=x"])


def test_bench_takes_encoder_options_per_entry(tmp_path):
    """rlvision bench 'name[k=v]': the options reach the extractor (bf16 next to fp32 in one table); a wrong option
    fails before anything runs."""
    from rlvision.commands import bench_backbones

    argv = ["--input", "3x36x36", "--batches", "2,4", "--repeats", "1", "--warmup", "0", "--threads", "1",
            "--out", str(tmp_path)]
    rows = bench_backbones.main(["--backbones", "nature_cnn,nature_cnn[precision=bf16]", *argv])
    assert [r["backbone"] for r in rows] == ["nature_cnn", "nature_cnn[precision=bf16]"]
    assert rows[0]["params"] == rows[1]["params"] and "precision=bf16" in (tmp_path / "bench.md").read_text()
    with pytest.raises(SystemExit):
        bench_backbones.main(["--backbones", "nature_cnn[precison=bf16]", *argv])
