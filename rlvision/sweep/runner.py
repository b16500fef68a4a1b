"""Running a sweep's trials on Ray Tune: one trial is one :func:`rlvision.runs.run`, its row written atomically to
``OUT/trials/<trial>.json``; a killed sweep restores its Tune experiment and never re-runs a finished trial."""

from __future__ import annotations

import json
import os
import shutil
import time

from rlvision.runs import run

from .grid import run_spec, trial_file

# the checkout holding the package, when it runs from one (shipped to a Ray cluster's workers as working_dir)
_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKOUT = _PARENT if os.path.exists(os.path.join(_PARENT, "pyproject.toml")) else None


def trial(tune_config: dict) -> None:
    """One training run (rlvision.runs.run) with periodic evaluation; every point goes to Tune."""
    import torch
    from ray import tune

    config = tune_config["config"]
    path = os.path.join(config["out"], "trials", trial_file(config))
    if os.path.exists(path):  # finished before a restore: report its last point, do not train again
        with open(path) as f:
            tune.report({k: v for k, v in json.load(f)["curve"][-1].items() if v is not None})
        return
    spec = run_spec(config)
    torch.set_num_threads(config["cpus"])
    # a trial killed with the sweep goes on from its newest checkpoint when the sweep runs again
    checkpoints = os.path.join(config["out"], "checkpoints", trial_file(config)[:-len(".json")])
    row = run(spec, on_point=lambda point: tune.report({k: v for k, v in point.items() if v is not None}),
              checkpoint_dir=checkpoints).row
    row.update(env=config["env"], algo=config["algo"], seed=config["seed"])
    with open(path + ".tmp", "w") as f:
        json.dump(row, f)
    os.replace(path + ".tmp", path)  # a finished trial is one whose file exists
    shutil.rmtree(checkpoints, ignore_errors=True)  # finished: its result file holds what the sweep needs


def run_sweep(trials: list[dict], settings: dict, out: str, address: str | None = None) -> list[str]:
    """Run the unfinished trials on Ray Tune; returns the errors of trials that failed after their retries.

    A killed sweep's Tune experiment (``OUT/tune/run-*``) is restored first (Tune's restore: unfinished and errored
    trials continue); trials finished since (their result file exists) return at once. Whatever is still missing
    then runs as a new experiment."""
    import ray

    done = set(os.listdir(os.path.join(out, "trials")))
    todo = [t for t in trials if trial_file(t) not in done]
    print(f"{len(trials)} trials, {len(trials) - len(todo)} already finished", flush=True)
    if not todo:
        return []
    runtime_env = {}  # local workers import the installed package
    if address and CHECKOUT:  # a cluster's workers need the code: ship the checkout, not its virtualenv or runs
        runtime_env = {"working_dir": CHECKOUT, "excludes": [".venv/", "runs/", ".git/", ".whl/", "*.pt"]}
    ray.init(address=address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=False,
             configure_logging=False, ignore_reinit_error=True)
    try:
        return _run_on_ray(trials, todo, settings, out)
    finally:  # on every way out (Ctrl-C, an error): no Ray processes left behind
        ray.shutdown()


def _run_on_ray(trials: list[dict], todo: list[dict], settings: dict, out: str) -> list[str]:
    from ray import tune

    trainable = tune.with_resources(trial, {"cpu": settings["cpus"], "gpu": settings["gpu"]})
    storage = os.path.join(out, "tune")
    runs = sorted(os.listdir(storage)) if os.path.isdir(storage) else []
    errors = []
    if runs and tune.Tuner.can_restore(os.path.join(storage, runs[-1])):
        print(f"Resuming the Tune experiment {runs[-1]}", flush=True)
        results = tune.Tuner.restore(os.path.join(storage, runs[-1]), trainable, resume_errored=True).fit()
        errors = [r for r in results if r.error is not None]
        done = set(os.listdir(os.path.join(out, "trials")))
        todo = [t for t in trials if trial_file(t) not in done]
    if todo:
        tuner = tune.Tuner(trainable, param_space={"config": tune.grid_search(todo)},
                           tune_config=tune.TuneConfig(reuse_actors=False),
                           run_config=tune.RunConfig(name=f"run-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage,
                                                     verbose=1, failure_config=tune.FailureConfig(
                                                         max_failures=settings["max_failures"])))
        errors = [r for r in tuner.fit() if r.error is not None]
    return [f"{r.config['config']['backbone']} seed {r.config['config']['seed']} on {r.config['config']['env']}: "
            f"{type(r.error).__name__}: {str(r.error).strip().splitlines()[-1] if str(r.error).strip() else ''}"
            for r in errors]


def collect(trials: list[dict], out: str) -> list[dict]:
    """The rows of the finished trials (those whose result file exists), in grid order."""
    rows = []
    for t in trials:
        path = os.path.join(out, "trials", trial_file(t))
        if os.path.exists(path):
            with open(path) as f:
                rows.append(json.load(f))
    return rows
