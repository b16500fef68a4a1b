"""Packaging: envs/ and agents/ install under the rlvision namespace; `import rlvision` stays light."""

import subprocess
import sys


def run_outside_checkout(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_envs_and_agents_import_only_under_the_rlvision_namespace(tmp_path):
    ok = run_outside_checkout("import rlvision.envs, rlvision.agents; print(rlvision.envs.make_env.__module__)",
                              tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "rlvision.envs.factory"
    for bare in ("envs", "agents"):
        result = run_outside_checkout(f"import {bare}", tmp_path)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, (bare, result.stderr)


def test_import_rlvision_does_not_import_envs_algorithm_extras_or_env_packages(tmp_path):
    # (stable_baselines3 itself is imported: the extractors subclass its BaseFeaturesExtractor)
    code = ("import sys, rlvision; rlvision.create_backbone('nature_cnn', in_channels=4); "
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    result = run_outside_checkout(code, tmp_path)
    assert result.returncode == 0, result.stderr
    loaded = eval(result.stdout)
    for heavy in ("ale_py", "minigrid", "sb3_contrib", "rl_zoo3", "ray", "Box2D", "pygame", "matplotlib", "onnx",
                  "onnxruntime", "onnxscript"):
        assert heavy not in loaded, heavy
    assert not any(m.startswith("rlvision.envs") or m.startswith("rlvision.agents") for m in
                   eval(run_outside_checkout("import sys, rlvision; print(list(sys.modules))", tmp_path).stdout))


def test_an_empty_rlvision_folder_in_the_working_directory_is_named_in_the_error(tmp_path):
    """An empty 'rlvision' folder in the working directory comes first on sys.path and Python makes it a namespace
    package ahead of the editable install: rlvision.agents and rlvision.envs then say what shadows the package
    instead of failing on a missing name."""
    (tmp_path / "rlvision").mkdir()
    for sub in ("agents", "envs"):
        result = run_outside_checkout(f"import rlvision.{sub}", tmp_path)
        assert result.returncode != 0, result.stdout
        assert "a folder without __init__.py" in result.stderr and str(tmp_path / "rlvision") in result.stderr
