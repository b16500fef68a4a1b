"""Train the same agent with several backbones under the throughput profiler and compare them side by side.

    rlvision compare --env ALE/Pong-v5 --backbones nature_cnn,mobilenetv4_nano --steps 4096

1. Measure the env alone (random actions on the same vec env): the ceiling the rollout phase can approach.
2. For each backbone (one :class:`rlvision.runs.RunSpec` each, run by :func:`rlvision.runs.run`): same env, seed,
   algorithm and hyperparameters; a ThroughputProfiler splits the wall time into
   env stepping, rollout forward, training forward, backward, optimizer step and the rest. Each backbone gets its
   own TensorBoard run under ``<logdir>/<backbone>`` (TensorBoard overlays them) with its hparams.
3. Optionally (``--measure-overhead``) train alternating chunks with and without the profiler to measure its cost.
4. Print a table (FPS, phase shares, params, FLOPs; the final return with --eval-episodes > 0, which is 0 by
   default) and save it as summary.md / summary.csv plus a PNG of time per 1000 steps by phase. Ctrl-C stops
   training and still writes the table of what finished.

Each comparison gets its own --logdir (default: runs/compare-<env>-<time>): a folder that already holds a
comparison is refused (--overwrite replaces it), so TensorBoard never overlays two runs of one backbone as one.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from rlvision.agents.factory import check_hyperparams
from rlvision.algorithms import ALGORITHMS
from rlvision.envs import check_env_id
from rlvision.profiler import PHASES
from rlvision.extractors import DEFAULT_BACKBONE
from rlvision.runs import (RUN_SETTINGS, RunSpec, add_run_arguments, check_entry, check_stage, check_values, default_of,
                           env_only_sps, field_help, parse_backbones, run, run_isolated, run_settings)
from rlvision.stats import write_tables
from rlvision.commands import command_parser


def plot_phases(rows: list[dict], path: str, title: str) -> None:
    """Horizontal stacked bars: seconds per 1000 env steps by phase, FPS written at the end of each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    names = [r["backbone"] for r in rows]
    left = np.zeros(len(rows))
    for phase in PHASES:
        width = np.array([1000 / r["fps"] * r[phase] for r in rows])
        ax.barh(names, width, left=left, label=phase)
        left += width
    for y, (total, row) in enumerate(zip(left, rows, strict=False)):
        ax.text(total, y, f" {row['fps']:.0f} FPS", va="center")
    ax.set_xlabel("seconds per 1000 env steps")
    ax.set_title(title)
    ax.invert_yaxis()
    ax.set_xlim(0, left.max() * 1.2)
    ax.legend(ncol=3, fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_outputs(rows: list[dict], args: argparse.Namespace, ceiling: float) -> str:
    low = f", observations shrunk x{args.low_res}" if args.low_res else ""
    note = f"Env alone ({args.env}{low}, {args.n_envs} envs, random actions): {ceiling:.0f} steps/s."
    text = write_tables(rows, os.path.join(args.logdir, "summary.md"), os.path.join(args.logdir, "summary.csv"), note)
    plot_phases(rows, os.path.join(args.logdir, "phases.png"),
                f"{args.algo.upper()} on {args.env}, {args.n_envs} envs, {args.steps} steps")
    return text


def spec_of(args: argparse.Namespace, name: str, options: dict, stage: str | None) -> RunSpec:
    """The RunSpec of one entry of the comparison: the run settings from the flags (RunSpec's defaults where none
    was given), the entry's backbone, options and stage."""
    return RunSpec(env=args.env, backbone=name, options=dict(options), algo=args.algo, seed=args.seed, stage=stage,
                   logdir=args.logdir, progress=not args.no_progress, measure_overhead=args.measure_overhead,
                   **run_settings(args))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = command_parser("compare", __doc__)
    parser.add_argument("--env", default=default_of("env"), help=field_help("env"))
    parser.add_argument("--backbones", default=f"nature_cnn,{DEFAULT_BACKBONE}",
                        help="comma-separated names, each with optional extractor/backbone options in brackets, e.g. "
                             "'nature_cnn[channels_last=false,inference_copy=false],mobilenetv4_nano_rl[norm=gn]', "
                             "'mnv4_conv_small[pretrained=model.safetensors,freeze_backbone=true]', or "
                             "'mnv4_conv_small[pretrained=model.safetensors,encode_once=true]' (frozen encoder "
                             "computed once per env step, MlpPolicy on its features); for SAC/TD3/TQC/CrossQ "
                             "'nature_cnn[encoder_sharing=critic,augment_shift=4]' (DrQ-v2)")
    parser.add_argument("--preprocess", default="none",
                        help="comma-separated stages name[:weights] run before each backbone, e.g. "
                             "'bicubic,flexnet_rl:runs/sr/flexnet_rl-x2-SyntheticPixel-v0/weights.pt'")
    parser.add_argument("--algo", default=default_of("algo"), help=f"algorithm: {', '.join(ALGORITHMS)}")
    parser.add_argument("--seed", type=int, default=default_of("seed"), help="seed of every run")
    add_run_arguments(parser)
    parser.add_argument("--measure-overhead", action="store_true", help="also time training without the profiler")
    parser.add_argument("--logdir", default=None, help="default: runs/compare-<env>-<time>")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier comparison in --logdir (default: refuse a folder that holds one)")
    parser.add_argument("--same-process", dest="process_per_run", action="store_false",
                        help="run every backbone in this process (faster start; peak_memory_mb then includes what "
                             "earlier runs left cached)")
    args = parser.parse_args(argv)
    backbones = parse_backbones(args.backbones)
    stages = [p.strip() for p in args.preprocess.split(",") if p.strip()]
    try:
        check_values(run_settings(args), flags=True)
        settings = RunSpec(**run_settings(args))  # every setting with its default filled in
        if settings.eval_every is not None and not settings.eval_episodes:
            raise ValueError("--eval-every needs --eval-episodes >= 1")
    except ValueError as error:
        parser.error(str(error))
    for key in RUN_SETTINGS:  # the flags not given take RunSpec's defaults
        setattr(args, key, getattr(settings, key))
    for name, options in backbones:  # unknown names, options, algos, hyperparameters fail now, not after training
        try:
            check_entry(name, options, args.algo)
            check_hyperparams(options.get("algo", args.algo), args.hyperparams)
        except ValueError as error:
            parser.error(f"--backbones / --algo / --hyperparams: {error}")
    try:
        check_env_id(args.env)
        for stage in stages:  # damaged weight files fail now, not after the entries before them have trained
            check_stage(stage)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    stamp = time.strftime('%m%d-%H%M%S')
    args.logdir = args.logdir or os.path.join("runs", f"compare-{args.env.replace('/', '-')}-{stamp}")
    if os.path.isdir(args.logdir) and os.listdir(args.logdir):
        if not args.overwrite:
            parser.error(f"{args.logdir} already holds a comparison (its runs would be overlaid in TensorBoard): "
                         f"pass another --logdir, or --overwrite to replace it.")
        import shutil

        shutil.rmtree(args.logdir)
    os.makedirs(args.logdir, exist_ok=True)

    specs = [spec_of(args, name, options, stage) for name, options in backbones for stage in stages]
    ceiling = env_only_sps(specs[0])
    print(f"Env alone: {ceiling:.0f} steps/s")
    rows: list[dict] = []
    curves: dict[str, list[dict]] = {}
    try:
        for spec in specs:
            algo = spec.options.get("algo", spec.algo).upper()
            print(f"== {spec.backbone} {spec.options or ''} ({spec.stage}): {algo} on {spec.env}, {spec.steps} steps, "
                  f"{spec.n_envs} envs", flush=True)
            rows.append((run_isolated(spec) if args.process_per_run else run(spec)).row)
            rows[-1].pop("diagnostics", None)
            curve = rows[-1].pop("curve", None)
            if curve:
                curves[rows[-1]["backbone"]] = curve
            print(json.dumps(rows[-1]), flush=True)
    except KeyboardInterrupt:
        print("Interrupted: writing the table of the runs that finished.")
        failure = None
    except Exception as error:  # noqa: BLE001  (one entry failed: keep what the others measured, then report it)
        failure = error
        print(f"{spec.label} failed ({type(error).__name__}: {error}); writing the table of the runs that finished.")
    else:
        failure = None
    if rows:
        print("\n" + save_outputs(rows, args, ceiling) + "\n")
    if curves:
        with open(os.path.join(args.logdir, "curves.json"), "w") as f:
            json.dump(curves, f)
    written = [f for f in ("summary.md", "summary.csv", "phases.png", "curves.json")
               if os.path.exists(os.path.join(args.logdir, f))]
    print(f"Runs in {args.logdir} ({', '.join(written) or 'no run finished: no table'}). Compare: tensorboard "
          f"--logdir {args.logdir}")
    if failure is not None:
        raise failure
    return rows


if __name__ == "__main__":
    main()
