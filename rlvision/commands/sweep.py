"""Which encoder learns best per unit of compute: a grid of training runs on Ray Tune, learning curves with CIs.

    rlvision sweep --envs SyntheticPixel-v0 --backbones nature_cnn,mobilenetv4_nano_rl \
        --seeds 0,1 --steps 2048 --out runs/sweep-demo
    rlvision sweep --config experiments/configs/sweep_learning.yaml --out runs/sweep-learning
    rlvision sweep --config ... --address auto --gpu 0.25   # on a running Ray cluster, 4 trials per GPU

1. The grid: envs x backbones (``name[k=v]`` variants as in ``rlvision compare``) x seeds x algos, from the command
   line or a YAML file (per-env hyperparameters, env kwargs, step budget and return threshold). The run settings
   are RunSpec's, as in ``rlvision train`` and ``compare`` (same flags, YAML keys and defaults); a sweep always
   evaluates: ``eval_every`` null means a tenth of the steps (at least one rollout), and ``threads``/``device`` follow
   ``cpus``/``gpu`` unless given.
2. Each trial is one profiled training run, :func:`rlvision.runs.run` of a RunSpec (the same code path as
   ``rlvision compare``), with an evaluation
   every ``eval_every`` env steps reported to Tune. Resources per trial: ``cpus`` (also its torch threads, so
   parallel trials do not oversubscribe the cores) and a ``gpu`` fraction. Locally ``ray.init()`` starts in-process
   and runs trials in parallel up to the cores; ``--address auto`` joins a running cluster.
3. Failed trials are retried (``--max-failures``) and reported. A killed sweep resumes when the same command runs
   again: Tune restores its experiment from ``OUT/tune``; finished trials (``OUT/trials/*.json``) are never re-run,
   unfinished ones go on from their newest checkpoint (``OUT/checkpoints/<trial>/``, every ``checkpoint_every``
   steps, with the learning curve so far). ``--report`` trains nothing: it writes the summary of the trials finished
   so far (a sweep that spans several sessions keeps its finished trials, e.g. in ``experiments/results/``).
4. Results: per trial a TensorBoard run under ``OUT/tb`` and its row with the curve in ``OUT/trials/*.json``;
   ``OUT/summary.md`` / ``summary.csv`` per env, algo and backbone (final return: mean and 95% bootstrap CI over
   seeds, IQM with >= 4 seeds, FPS, steps and seconds to the return threshold, parameters, FLOPs, the largest
   acting/learning gap logged, the final feature rank), ``OUT/curves.png`` (mean and CI band against env steps and
   against training seconds) and ``OUT/diagnostics.png`` (the encoder diagnostics of the same trials:
   rlvision.diagnostics, also in each trial's TensorBoard run under ``encoder/``). Where the envs have a published
   normalisation (Procgen's R_min/R_max) and the sweep spans two or more, ``OUT/pooled.md`` / ``pooled.csv`` pool the
   normalised train and test returns per backbone over the envs: mean and IQM over all runs, each with a stratified
   bootstrap 95% CI (rliable's aggregate), for the backbones that have runs on every one of those envs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import yaml

from rlvision.commands import command_parser
from rlvision.runs import add_run_arguments
from rlvision.stats import markdown_table, pooled_over_envs, summarize, write_tables
from rlvision.sweep.grid import ENV_KEYS, GRID_KEYS, SETTINGS, check_trials, default_eval_every, grid, trial_file
from rlvision.sweep.plots import band, plot_curves, plot_diagnostics
from rlvision.sweep.runner import CHECKOUT, collect, run_sweep, trial

POOLED_NOTE = ("Normalised returns (R - R_min) / (R_max - R_min) of each run's last evaluation, pooled over the envs "
               "above; 95% CIs by stratified bootstrap (runs resampled within each env), IQM over all runs. A "
               "backbone without runs on every env gets no aggregate (missing).")

# the pieces live in rlvision.sweep (grid, runner, plots); these names stay importable from here
__all__ = ["main", "resolve", "check", "grid", "check_trials", "run_sweep", "trial", "trial_file", "collect",
           "default_eval_every", "plot_curves", "plot_diagnostics", "band", "GRID_KEYS", "SETTINGS", "ENV_KEYS",
           "CHECKOUT"]


def resolve(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """The trial records and the settings, from --config (YAML) with the command line over it."""
    spec = {}
    if args.config:
        with open(args.config) as f:
            spec = yaml.safe_load(f) or {}
        unknown = set(spec) - set(GRID_KEYS) - set(SETTINGS)
        if unknown:  # named before the command line fills in the rest
            raise ValueError(f"{args.config}: unknown keys {sorted(unknown)}; allowed: "
                             f"{list(GRID_KEYS) + list(SETTINGS)}")
    per_env = spec.get("envs") if isinstance(spec.get("envs"), dict) else {}
    for key in GRID_KEYS + tuple(SETTINGS):
        value = getattr(args, key, None)
        if value is not None:
            spec[key] = value
    if per_env and getattr(args, "envs", None):  # a subset of the config's envs keeps their settings (steps, ...)
        spec["envs"] = {e: per_env.get(e, {}) for e in (x.strip() for x in args.envs.split(",")) if e}
    return grid(spec, args.config or "the command line")


def check(trials: list[dict], parser: argparse.ArgumentParser) -> None:
    """:func:`rlvision.sweep.grid.check_trials` as a usage error (exit 2) before anything starts."""
    try:
        check_trials(trials)
    except (KeyError, ValueError) as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = command_parser("sweep", __doc__)
    parser.add_argument("--config", help="YAML file with the grid and settings (the options below override it; "
                                          "default: none, the grid from the options)")
    parser.add_argument("--envs", help="comma-separated env ids (default: from --config; envs the config sets "
                                        "steps etc. for keep those settings, so a part of its grid runs as in it)")
    parser.add_argument("--backbones", help="comma-separated, each with optional [k=v] options, as in rlvision "
                                             "compare (default: from --config)")
    parser.add_argument("--seeds", help="comma-separated ints (default 0)")
    parser.add_argument("--algos", help="comma-separated (default ppo)")
    parser.add_argument("--threshold", type=float,
                        help="return threshold for 'steps to threshold' (every env; default: none, no such column)")
    parser.add_argument("--stage", help="a preprocessing stage name[:weights] before every backbone (default: none)")
    add_run_arguments(parser)
    parser.add_argument("--cpus", type=int, help="CPUs (= torch threads) per trial (default 1)")
    parser.add_argument("--gpu", type=float, help="GPU fraction per trial, e.g. 0.25 (default 0: CPU)")
    parser.add_argument("--max-failures", type=int, help="retries of a failed trial (default 2)")
    parser.add_argument("--address", help="a running Ray cluster ('auto'); default: a local in-process Ray")
    parser.add_argument("--out", default=None, help="output folder (default runs/sweep-<time>); rerun to resume")
    parser.add_argument("--fresh", action="store_true", help="discard an earlier sweep in --out and start over")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: write the summary, tables and plots of the trials finished so far in "
                             "--out (a sweep that spans several sessions) and list the missing ones")
    args = parser.parse_args(argv)
    if args.report and args.fresh:
        parser.error("--report reads the finished trials in --out; --fresh would discard them")
    if args.report and not args.out:
        parser.error("--report needs --out: the folder of the sweep to report on")
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
    elif args.report:
        parser.error(f"{out} holds no sweep (no sweep.json): nothing to report; run the sweep first")
    errors = []
    if not args.report:
        os.makedirs(os.path.join(out, "trials"), exist_ok=True)
        with open(grid_file, "w") as f:
            json.dump(trials, f, indent=1)
        for t in trials:
            t["out"] = out
        errors = run_sweep(trials, settings, out, args.address)

    rows = collect(trials, out)
    thresholds = {t["env"]: t["threshold"] for t in trials}
    table = summarize(rows, thresholds) if rows else []
    if table:
        write_tables(table, os.path.join(out, "summary.md"), os.path.join(out, "summary.csv"))
        plot_curves(rows, os.path.join(out, "curves.png"))
        plot_diagnostics(rows, os.path.join(out, "diagnostics.png"))
        print("\n" + markdown_table(table) + "\n")
    pooled = pooled_over_envs(rows)
    if pooled:  # a benchmark's normalised returns over its games (Procgen), as rliable aggregates them
        write_tables(pooled, os.path.join(out, "pooled.md"), os.path.join(out, "pooled.csv"), note=POOLED_NOTE)
        print(markdown_table(pooled) + "\n")
    for error in errors:
        print(f"FAILED after retries: {error}")
    written = "summary.md, summary.csv, curves.png, diagnostics.png" if table else "no trial finished: no summary"
    written += ", pooled.md, pooled.csv" if pooled else ""
    print(f"{len(rows)}/{len(trials)} trials finished. Results in {out} ({written}); "
          f"curves per run: tensorboard --logdir {os.path.join(out, 'tb')}")
    if len(rows) < len(trials):  # a sweep with failed trials does not end as a success
        missing = [trial_file(t) for t in trials
                   if not os.path.exists(os.path.join(out, "trials", trial_file(t)))]
        what = "not finished yet (run the sweep without --report to go on)" if args.report else \
            "without a result (rerun the same command to retry them)"
        print(f"Trials {what}: " + ", ".join(missing), file=sys.stderr)
        if not args.report:
            raise SystemExit(1)
    return table


if __name__ == "__main__":
    main()
