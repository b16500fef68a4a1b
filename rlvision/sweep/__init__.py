"""Sweeps, split by job: :mod:`.grid` (envs x backbones x seeds x algos -> trial records and RunSpecs, checked before
anything starts), :mod:`.runner` (the trials on Ray Tune, resumable) and :mod:`.plots` (curves with bootstrap bands,
the encoder diagnostics). The command is :mod:`rlvision.commands.sweep`; tables come from :mod:`rlvision.stats`.

    from rlvision.sweep import grid, specs
    trials, settings = grid({"envs": ["SyntheticPixel-v0"], "backbones": ["nature_cnn"], "seeds": [0, 1]})
    runs = specs(trials)            # list[RunSpec]: rlvision.runs.run(spec) trains one
"""

from .grid import ENV_KEYS, GRID_KEYS, SETTINGS, check_trials, grid, run_spec, specs, trial_file

__all__ = ["grid", "specs", "run_spec", "check_trials", "trial_file", "GRID_KEYS", "SETTINGS", "ENV_KEYS"]
