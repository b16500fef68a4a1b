"""Which encoder learns best per unit of compute: a grid of training runs on Ray Tune, learning curves with CIs.

    rlvision sweep --envs SyntheticPixel-v0 --backbones nature_cnn,mobilenetv4_nano_rl \
        --seeds 0,1 --steps 2048 --out runs/sweep-demo
    rlvision sweep --config experiments/configs/sweep_learning.yaml --out runs/sweep-learning
    rlvision sweep --config ... --address auto --gpu 0.25   # on a running Ray cluster, 4 trials per GPU

1. The grid: envs x backbones (``name[k=v]`` variants as in ``rlvision compare``) x seeds x algos, from the command
   line or a YAML file (per-env hyperparameters, env kwargs, step budget and return threshold).
2. Each trial is one profiled training run, :func:`rlvision.runs.run` of a RunSpec (the same code path as
   ``rlvision compare``), with an evaluation
   every ``eval_every`` env steps reported to Tune. Resources per trial: ``cpus`` (also its torch threads, so
   parallel trials do not oversubscribe the cores) and a ``gpu`` fraction. Locally ``ray.init()`` starts in-process
   and runs trials in parallel up to the cores; ``--address auto`` joins a running cluster.
3. Failed trials are retried (``--max-failures``) and reported. A killed sweep resumes when the same command runs
   again: Tune restores its experiment from ``OUT/tune``; finished trials (``OUT/trials/*.json``) are never re-run,
   unfinished ones start over.
4. Results: per trial a TensorBoard run under ``OUT/tb`` and its row with the curve in ``OUT/trials/*.json``;
   ``OUT/summary.md`` / ``summary.csv`` per env, algo and backbone (final return: mean and 95% bootstrap CI over
   seeds, IQM with >= 4 seeds, FPS, steps and seconds to the return threshold, parameters, FLOPs, the largest
   acting/learning gap logged, the final feature rank), ``OUT/curves.png`` (mean and CI band against env steps and
   against training seconds) and ``OUT/diagnostics.png`` (the encoder diagnostics of the same trials:
   rlvision.diagnostics, also in each trial's TensorBoard run under ``encoder/``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import yaml

from rlvision.runs import DEFAULT_STEPS, RunSpec, check_entry, parse_backbones, run
from rlvision.stats import bootstrap_ci, markdown_table, summarize, write_tables
from rlvision.commands import command_parser

# the checkout holding the package, when it runs from one (shipped to a Ray cluster's workers as working_dir)
_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKOUT = _PARENT if os.path.exists(os.path.join(_PARENT, "pyproject.toml")) else None

GRID_KEYS = ("envs", "backbones", "seeds", "algos")
SETTINGS = dict(steps=DEFAULT_STEPS, n_envs=8, eval_every=None, eval_episodes=10, cpus=1, gpu=0.0, hyperparams={},
                env_kwargs={}, threshold=None, backend="native", max_failures=2)
ENV_KEYS = ("steps", "hyperparams", "env_kwargs", "threshold", "n_envs", "eval_every", "eval_episodes")


def band(curves: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% bootstrap band over seeds of curves (x, y) interpolated onto ``grid``."""
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    lows, highs = zip(*(bootstrap_ci(ys[:, i], resamples=2000) for i in range(grid.size)), strict=False)
    mean = ys.mean(axis=0)
    return mean, np.where(np.isnan(lows), mean, lows), np.where(np.isnan(highs), mean, highs)


def plot_curves(rows: list[dict], path: str) -> None:
    """One line of panels per (env, algo): return against env steps and against training seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["env"], r["algo"]) for r in rows})
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for (env, algo), (ax_steps, ax_time) in zip(panels, axes, strict=False):
        runs = [r for r in rows if (r["env"], r["algo"]) == (env, algo)]
        for backbone in dict.fromkeys(r["backbone"] for r in runs):
            curves = [r["curve"] for r in runs if r["backbone"] == backbone]
            steps = [(np.array([p["steps"] for p in c], float), np.array([p["eval_return"] for p in c]))
                     for c in curves]
            secs = [(np.array([p["seconds"] for p in c], float), np.array([p["eval_return"] for p in c]))
                    for c in curves]
            for ax, xy, last in ((ax_steps, steps, min(x[-1] for x, _ in steps)),
                                 (ax_time, secs, min(x[-1] for x, _ in secs))):
                grid = np.linspace(0, last, 50)
                mean, low, high = band(xy, grid)
                line, = ax.plot(grid, mean, label=f"{backbone} (n={len(curves)})")
                ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2)
        ax_steps.set(title=f"{algo.upper()} on {env}", xlabel="env steps", ylabel="eval return")
        ax_time.set(title=f"{algo.upper()} on {env}: per unit of compute", xlabel="training seconds")
        ax_steps.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


DIAGNOSTICS = (("value_rel_diff", "acting/learning gap: value (relative RMS)", "log"),
               ("action_kl", "acting/learning gap: action KL", "log"),
               ("features_srank", "feature effective rank (srank, delta 0.01)", "linear"),
               ("features_dormant", "dormant features (tau 0.025)", "linear"),
               ("grad_share", "encoder's share of the gradient norm", "linear"))


def plot_diagnostics(rows: list[dict], path: str) -> None:
    """The encoder diagnostics of the same trials (rlvision.diagnostics), mean over seeds against env steps: one
    line of panels per (env, algo), one panel per diagnostic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["env"], r["algo"]) for r in rows if r.get("diagnostics")})
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), len(DIAGNOSTICS), figsize=(4 * len(DIAGNOSTICS), 3.4 * len(panels)),
                             squeeze=False)
    for (env, algo), line in zip(panels, axes, strict=False):
        runs = [r for r in rows if (r["env"], r["algo"]) == (env, algo) and r.get("diagnostics")]
        for backbone in dict.fromkeys(r["backbone"] for r in runs):
            histories = [r["diagnostics"] for r in runs if r["backbone"] == backbone]
            for ax, (key, title, scale) in zip(line, DIAGNOSTICS, strict=False):
                curves = [(np.array([h["steps"] for h in hist if key in h], float),
                           np.array([h[key] for h in hist if key in h], float)) for hist in histories]
                curves = [(x, y) for x, y in curves if x.size]
                if not curves:
                    continue
                grid = np.linspace(max(x[0] for x, _ in curves), min(x[-1] for x, _ in curves), 30)
                mean = np.mean([np.interp(grid, x, y) for x, y in curves], axis=0)
                ax.plot(grid, np.maximum(mean, 1e-9) if scale == "log" else mean, label=backbone)
                ax.set(title=f"{env}: {title}" if ax is line[0] else title, xlabel="env steps", yscale=scale)
        line[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---- one trial -----------------------------------------------------------------------------------------------------

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
    name, options = config["backbone"]
    spec = RunSpec(env=config["env"], backbone=name, options=dict(options), algo=config["algo"], steps=config["steps"],
                   n_envs=config["n_envs"], seed=config["seed"], hyperparams=config["hyperparams"],
                   env_kwargs=config["env_kwargs"], backend=config["backend"], eval_episodes=config["eval_episodes"],
                   eval_every=config["eval_every"], device="cuda" if config["gpu"] else "cpu", threads=config["cpus"],
                   logdir=os.path.join(config["out"], "tb", config["env"].replace("/", "-"), config["algo"],
                                       f"seed{config['seed']}"))
    torch.set_num_threads(config["cpus"])
    row = run(spec, on_point=lambda point: tune.report({k: v for k, v in point.items() if v is not None}))
    row.update(env=config["env"], algo=config["algo"], seed=config["seed"])
    with open(path + ".tmp", "w") as f:
        json.dump(row, f)
    os.replace(path + ".tmp", path)  # a finished trial is one whose file exists


def default_eval_every(algo: str, per_env: dict) -> int:
    """A tenth of the steps, but at least one rollout of an on-policy algorithm (an evaluation between two updates
    would re-evaluate an unchanged policy)."""
    from rlvision.agents import DEFAULTS
    from rlvision.algorithms import algorithm

    every = max(per_env["steps"] // 10, 1)
    if algorithm(algo).on_policy:
        n_steps = per_env["hyperparams"].get("n_steps", DEFAULTS[algo].get("n_steps", 1))
        every = max(every, n_steps * per_env["n_envs"])
    return every


def trial_file(config: dict) -> str:
    label = config["backbone"][0] + "".join(f",{k}={v}" for k, v in config["backbone"][1].items())
    return f"{config['env'].replace('/', '-')}__{config['algo']}__{label}__seed{config['seed']}.json"


# ---- the grid ------------------------------------------------------------------------------------------------------

def resolve(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """The list of trial configs and the settings, from --config (YAML) with the command line over it."""
    spec = {}
    if args.config:
        with open(args.config) as f:
            spec = yaml.safe_load(f) or {}
        unknown = set(spec) - set(GRID_KEYS) - set(SETTINGS)
        if unknown:
            raise ValueError(f"{args.config}: unknown keys {sorted(unknown)}; allowed: "
                             f"{list(GRID_KEYS) + list(SETTINGS)}")
    for key in GRID_KEYS + tuple(SETTINGS):
        value = getattr(args, key, None)
        if value is not None:
            spec[key] = value
    envs = spec.get("envs")
    if not envs or not spec.get("backbones"):
        raise ValueError("a sweep needs --envs and --backbones (or 'envs' and 'backbones' in --config)")
    if isinstance(envs, str):
        envs = [e.strip() for e in envs.split(",") if e.strip()]
    if isinstance(envs, list):
        envs = {e: (spec.get("envs") or {}).get(e, {}) if isinstance(spec.get("envs"), dict) else {} for e in envs}
    settings = {k: spec.get(k, v) for k, v in SETTINGS.items()}
    backbones = spec["backbones"]
    backbones = parse_backbones(backbones if isinstance(backbones, str) else ",".join(backbones))
    seeds = spec.get("seeds", [0])
    seeds = [int(s) for s in (seeds.split(",") if isinstance(seeds, str) else seeds)]
    algos = spec.get("algos", ["ppo"])
    algos = [a.strip().lower() for a in (algos.split(",") if isinstance(algos, str) else algos)]
    trials = []
    for env, env_spec in envs.items():
        unknown = set(env_spec or {}) - set(ENV_KEYS)
        if unknown:
            raise ValueError(f"env {env!r}: unknown keys {sorted(unknown)}; allowed: {list(ENV_KEYS)}")
        per_env = {**settings, **(env_spec or {})}
        per_env["hyperparams"] = {**settings["hyperparams"], **(env_spec or {}).get("hyperparams", {})}
        for algo in algos:
            per_env["eval_every"] = (env_spec or {}).get("eval_every") or settings["eval_every"] or default_eval_every(
                algo, per_env)
            for backbone in backbones:
                for seed in seeds:
                    trials.append(dict(env=env, algo=algo, backbone=list(backbone), seed=seed,
                                       **{k: per_env[k] for k in ("steps", "n_envs", "eval_every", "eval_episodes",
                                                                  "hyperparams", "env_kwargs", "threshold")},
                                       **{k: settings[k] for k in ("cpus", "gpu", "backend")}))
    return trials, settings


def check(trials: list[dict], parser: argparse.ArgumentParser) -> None:
    """Unknown envs, backbones, options, algos and hyperparameters (names and schedule strings) and numbers out of
    range fail now, before any folder is made or Ray starts, not inside a Ray worker."""
    from rlvision.agents.factory import check_hyperparams
    from rlvision.envs import check_env_id

    for t in trials:
        name, options = t["backbone"]
        try:
            check_env_id(t["env"])
            check_entry(name, options, t["algo"], allow_algo_option=False)
            check_hyperparams(t["algo"], t["hyperparams"])  # a typo or a malformed "lin_..." fails here
            for key, minimum in (("steps", 1), ("n_envs", 1), ("eval_episodes", 1), ("cpus", 1), ("gpu", 0)):
                value = t[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
                    raise ValueError(f"{key} must be a number >= {minimum}, got {value!r} (env {t['env']!r}).")
        except (KeyError, ValueError) as error:
            parser.error(str(error))


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


def main(argv: list[str] | None = None) -> list[dict]:
    parser = command_parser("sweep", __doc__)
    parser.add_argument("--config", help="YAML file with the grid and settings (the options below override it; "
                                          "default: none, the grid from the options)")
    parser.add_argument("--envs", help="comma-separated env ids (default: from --config)")
    parser.add_argument("--backbones", help="comma-separated, each with optional [k=v] options, as in rlvision "
                                             "compare (default: from --config)")
    parser.add_argument("--seeds", help="comma-separated ints (default 0)")
    parser.add_argument("--algos", help="comma-separated (default ppo)")
    parser.add_argument("--steps", type=int, help=f"env steps per trial (default {SETTINGS['steps']})")
    parser.add_argument("--n-envs", type=int, help=f"parallel envs per trial (default {SETTINGS['n_envs']})")
    parser.add_argument("--eval-every", type=int, help="env steps between evaluations (default steps / 10)")
    parser.add_argument("--eval-episodes", type=int,
                        help=f"episodes per evaluation (default {SETTINGS['eval_episodes']})")
    parser.add_argument("--threshold", type=float,
                        help="return threshold for 'steps to threshold' (every env; default: none, no such column)")
    parser.add_argument("--hyperparams", type=yaml.safe_load,
                        help="YAML dict over rlvision.agents.DEFAULTS (default: {})")
    parser.add_argument("--env-kwargs", type=yaml.safe_load, help="YAML dict for every env (default: {})")
    parser.add_argument("--cpus", type=int, help="CPUs (= torch threads) per trial (default 1)")
    parser.add_argument("--gpu", type=float, help="GPU fraction per trial, e.g. 0.25 (default 0: CPU)")
    parser.add_argument("--max-failures", type=int, help="retries of a failed trial (default 2)")
    parser.add_argument("--address", help="a running Ray cluster ('auto'); default: a local in-process Ray")
    parser.add_argument("--out", default=None, help="output folder (default runs/sweep-<time>); rerun to resume")
    parser.add_argument("--fresh", action="store_true", help="discard an earlier sweep in --out and start over")
    args = parser.parse_args(argv)
    try:
        trials, settings = resolve(args)
    except ValueError as error:
        parser.error(str(error))
    check(trials, parser)
    out = os.path.abspath(args.out or os.path.join("runs", f"sweep-{time.strftime('%m%d-%H%M%S')}"))
    grid_file = os.path.join(out, "sweep.json")
    if args.fresh and os.path.isdir(out):
        import shutil

        shutil.rmtree(out)
    if os.path.exists(grid_file):
        with open(grid_file) as f:
            if json.load(f) != trials:
                parser.error(f"{out} holds a sweep with another grid; use another --out, or --fresh to discard it")
    os.makedirs(os.path.join(out, "trials"), exist_ok=True)
    with open(grid_file, "w") as f:
        json.dump(trials, f, indent=1)
    for t in trials:
        t["out"] = out
    errors = run_sweep(trials, settings, out, args.address)

    rows = []
    for t in trials:
        path = os.path.join(out, "trials", trial_file(t))
        if os.path.exists(path):
            with open(path) as f:
                rows.append(json.load(f))
    thresholds = {t["env"]: t["threshold"] for t in trials}
    table = summarize(rows, thresholds) if rows else []
    if table:
        write_tables(table, os.path.join(out, "summary.md"), os.path.join(out, "summary.csv"))
        plot_curves(rows, os.path.join(out, "curves.png"))
        plot_diagnostics(rows, os.path.join(out, "diagnostics.png"))
        print("\n" + markdown_table(table) + "\n")
    for error in errors:
        print(f"FAILED after retries: {error}")
    written = "summary.md, summary.csv, curves.png, diagnostics.png" if table else "no trial finished: no summary"
    print(f"{len(rows)}/{len(trials)} trials finished. Results in {out} ({written}); "
          f"curves per run: tensorboard --logdir {os.path.join(out, 'tb')}")
    if len(rows) < len(trials):  # a sweep with failed trials does not end as a success
        missing = [trial_file(t) for t in trials
                   if not os.path.exists(os.path.join(out, "trials", trial_file(t)))]
        print("Trials without a result (rerun the same command to retry them): " + ", ".join(missing),
              file=sys.stderr)
        raise SystemExit(1)
    return table


if __name__ == "__main__":
    main()
