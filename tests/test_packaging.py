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
    for heavy in ("ale_py", "minigrid", "sb3_contrib", "rl_zoo3", "ray", "Box2D", "pygame", "matplotlib"):
        assert heavy not in loaded, heavy
    assert not any(m.startswith("rlvision.envs") or m.startswith("rlvision.agents") for m in
                   eval(run_outside_checkout("import sys, rlvision; print(list(sys.modules))", tmp_path).stdout))
