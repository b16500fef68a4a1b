"""Train the same agent with several backbones under the throughput profiler and compare them side by side.

    python experiments/compare_backbones.py --env ALE/Pong-v5 --backbones nature_cnn,mobilenetv4_nano --steps 4096

1. Measure the env alone (random actions on the same vec env): the ceiling the rollout phase can approach.
2. For each backbone: same env, seed, algorithm and hyperparameters; a ThroughputProfiler splits the wall time into
   env stepping, rollout forward, training forward, backward, optimizer step and the rest. Each backbone gets its
   own TensorBoard run under ``<logdir>/<backbone>`` (TensorBoard overlays them) with its hparams.
3. Optionally (``--measure-overhead``) train alternating chunks with and without the profiler to measure its cost.
4. Print a table (FPS, phase shares, params, FLOPs, final return) and save it as summary.md / summary.csv plus a
   PNG of time per 1000 steps by phase. Ctrl-C stops training and still writes the table of what finished.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time

import numpy as np
import torch
import yaml
from stable_baselines3.common.logger import configure as configure_logger
from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rlvision  # noqa: E402
from rlvision.agents import ALGOS, PeriodicEvaluation, evaluate_agent, make_agent  # noqa: E402
from rlvision.envs import make_env  # noqa: E402
from rlvision.checks import accepted_keywords, check_keywords  # noqa: E402
from rlvision.encode import VecEncode  # noqa: E402
from rlvision.extractors import EXTRACTOR_KEYWORDS  # noqa: E402
from rlvision.benchmark import count_flops  # noqa: E402
from rlvision.diagnostics import EncoderDiagnostics  # noqa: E402
from rlvision.profiler import PHASES, ThroughputProfiler  # noqa: E402


# bracket options that configure the run rather than the extractor: a frozen encoder run once per env step
# (rlvision.encode), SAC-style encoder sharing ("separate" | "actor" | "critic" = DrQ-v2, rlvision.drq), and the
# algorithm of this entry instead of --algo (e.g. 'nature_cnn[algo=graphedppo]' next to 'nature_cnn')
RUN_OPTIONS = ("encode_once", "encoder_sharing", "algo")
# the encoder diagnostics (rlvision.diagnostics) that go into the table (the full history: the row's "diagnostics")
DIAGNOSTIC_COLUMNS = ("features_srank", "features_dormant", "grad_share")


def make(args: argparse.Namespace, n_envs: int, seed: int):
    return make_env(args.env, n_envs=n_envs, seed=seed, env_kwargs=args.env_kwargs, low_res=args.low_res,
                    backend=args.backend)


def parse_backbones(text: str) -> list[tuple[str, dict]]:
    """``"nature_cnn,mobilenetv4_nano_rl[norm=gn,channels_last=false]"`` -> [(name, extractor kwargs), ...]."""
    specs = []
    for name, options in re.findall(r"\s*([^,\[\s]+)(?:\[([^\]]*)\])?\s*(?:,|$)", text):
        kwargs = {}
        for item in filter(None, (o.strip() for o in options.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"Backbone option {item!r} in {text!r} is not key=value.")
            kwargs[key.strip()] = yaml.safe_load(value)
        specs.append((name, kwargs))
    return specs


def encoder_kwargs(args: argparse.Namespace, stage: str | None, options: dict | None = None) -> dict:
    """backbone_kwargs for make_agent: the backbone's options plus the preprocessing stage ``name[:weights]``."""
    kwargs = dict(options or {})
    if stage and stage != "none":
        name, _, weights = stage.partition(":")
        kwargs.update(preprocess=name, preprocess_kwargs=dict(scale=args.preprocess_scale),
                      preprocess_weights=weights or None)
    return kwargs


def env_only_sps(args: argparse.Namespace, steps: int = 2000) -> float:
    """Env steps per second of the vec env alone, random actions."""
    env = make(args, args.n_envs, args.seed)
    env.reset()
    actions = [np.stack([env.action_space.sample() for _ in range(env.num_envs)]) for _ in range(16)]
    n = max(steps // env.num_envs, 1)
    start = time.perf_counter()
    for i in range(n):
        env.step(actions[i % 16])
    sps = n * env.num_envs / (time.perf_counter() - start)
    env.close()
    return sps


def run_one(args: argparse.Namespace, backbone: str, stage: str | None = None, options: dict | None = None,
            on_point=None) -> dict:
    """Train ``backbone`` (with extractor ``options``, after ``stage``) for ``args.steps`` steps under the profiler;
    return its table row. With ``args.eval_every``, evaluate every so many steps (``args.eval_episodes`` episodes):
    the row gets the learning ``curve`` and each point also goes to ``on_point`` (experiments/sweep.py: Ray Tune)."""
    label = backbone + ("[" + ",".join(f"{k}={v}" for k, v in options.items()) + "]" if options else "")
    label += "" if not stage or stage == "none" else f"+{stage.partition(':')[0]}"
    if args.threads:  # again here: a run in its own process starts with torch's default
        torch.set_num_threads(args.threads)
    options = dict(options or {})
    encode_once = options.pop("encode_once", False)
    sharing = {"encoder_sharing": options.pop("encoder_sharing")} if "encoder_sharing" in options else {}
    algo = options.pop("algo", args.algo)
    env = make(args, args.n_envs, args.seed)
    obs = torch.as_tensor(env.observation_space.sample()[None], dtype=torch.float32) / 255
    if encode_once:
        env = VecEncode(env, backbone, device=args.device, **options)
    model = make_agent(algo, env, backbone=backbone, seed=args.seed, device=args.device,
                       backbone_kwargs=encoder_kwargs(args, stage, options), **sharing, **args.hyperparams)
    model.set_logger(configure_logger(os.path.join(args.logdir, label), ["tensorboard"]))  # no "_1" suffix
    # the encoder whose size is reported: the policy's first (SAC-style policies: the actor's; DQN: the Q network's)
    encoder = env.encoder if encode_once else next(
        m for m in model.policy.modules() if isinstance(m, (rlvision.VisionExtractor, rlvision.VisionCombinedExtractor)))
    obs = obs.to(model.device)
    profiler = ThroughputProfiler()
    diagnostics = EncoderDiagnostics()  # encoder/ in TensorBoard: acting/learning gap, srank, dormant units, ...
    callbacks, evaluation = [profiler, diagnostics], None
    if getattr(args, "eval_every", None):
        eval_env = make(args, min(args.eval_episodes, 8), args.seed + 10_000)
        if encode_once:
            eval_env = VecEncode(eval_env, backbone, device=args.device, **options)
        evaluation = PeriodicEvaluation(eval_env, args.eval_every, args.eval_episodes, on_point=on_point)
        callbacks.append(evaluation)
    start = time.perf_counter()
    model.learn(args.steps, callback=callbacks, progress_bar=not args.no_progress)
    seconds = time.perf_counter() - start
    s = profiler.summary()
    row = dict(backbone=label, params=sum(p.numel() for p in encoder.parameters()),
               mflops=round(count_flops(encoder, obs) / 1e6, 1), steps=model.num_timesteps,
               seconds=round(seconds, 1), fps=round(model.num_timesteps / seconds, 1))
    if model.ep_info_buffer:  # SB3's rollout/ep_rew_mean at the end of training (last 100 episodes)
        row.update(ep_rew_mean=round(float(np.mean([e["r"] for e in model.ep_info_buffer])), 2),
                   episodes=len(model.ep_info_buffer))
    row.update({p: round(s[f"{p}_share"], 3) for p in PHASES})
    row.update(rollout_sps=round(s["rollout_sps"], 1), train_samples_per_s=round(s["train_samples_per_s"], 1),
               peak_memory_mb=round(s["peak_memory_mb"]))
    if "cuda_peak_memory_mb" in s:
        row["cuda_peak_memory_mb"] = round(s["cuda_peak_memory_mb"])
    if diagnostics.history:  # the last report, and the largest acting/learning gap seen
        last = diagnostics.history[-1]
        row.update({f"encoder_{k}": round(v, 4) for k, v in last.items() if k in DIAGNOSTIC_COLUMNS})
        for key in ("action_kl", "value_rel_diff"):
            values = [h[key] for h in diagnostics.history if key in h]
            if values:
                row[f"max_{key}"] = float(f"{max(values):.3g}")
        row["diagnostics_share"] = round(diagnostics.spent / seconds, 4)  # of training time (budget: 2%)
        row["diagnostics"] = diagnostics.history
    if evaluation is not None:
        last = evaluation.curve[-1]
        row.update(eval_return=round(last["eval_return"], 3), success_rate=last["success_rate"],
                   curve=evaluation.curve)
        evaluation.eval_env.close()
    elif args.eval_episodes:
        eval_env = make(args, 1, args.seed + 10_000)
        if encode_once:
            eval_env = VecEncode(eval_env, backbone, device=args.device, **options)
        result = evaluate_agent(model, eval_env, args.eval_episodes)
        row.update(eval_return=round(result["mean_return"], 3), success_rate=result["success_rate"])
        eval_env.close()
    if args.measure_overhead and not encode_once:
        row.update(measure_overhead(args, backbone, stage, options, algo=algo))
    env.close()
    with SummaryWriter(os.path.join(args.logdir, label)) as writer:
        writer.add_hparams({"backbone": label, "preprocess": stage or "none", "algo": algo, "env": args.env, "steps": args.steps,
                            "n_envs": args.n_envs, "seed": args.seed},
                           {f"summary/{k}": float(v) for k, v in row.items()
                            if isinstance(v, (int, float)) and k != "steps"}, run_name=".")
    return row


def run_isolated(args: argparse.Namespace, backbone: str, stage: str | None, options: dict | None) -> dict:
    """:func:`run_one` in a fresh process, so its peak memory (``peak_memory_mb``: the process's peak resident
    memory, imports included) is this run's alone and not inflated by what earlier runs left cached."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_one, args, backbone, stage, options).result()


def measure_overhead(args: argparse.Namespace, backbone: str, stage: str | None, options: dict | None = None,
                     chunks: int = 4, algo: str | None = None) -> dict:
    """FPS with and without the profiler, training one model in alternating chunks so machine drift cancels."""
    env = make(args, args.n_envs, args.seed)
    model = make_agent(algo or args.algo, env, backbone=backbone, seed=args.seed, device=args.device,
                       backbone_kwargs=encoder_kwargs(args, stage, options), **args.hyperparams)
    model.set_logger(configure_logger(None, []))
    chunk = max(args.steps // chunks, getattr(model, "n_steps", 1) * args.n_envs)
    seconds = {True: 0.0, False: 0.0}
    steps = {True: 0, False: 0}
    model.learn(chunk)  # warm-up, not counted
    for i in range(2 * chunks):
        with_profiler = i % 2 == 0
        before, start = model.num_timesteps, time.perf_counter()
        model.learn(chunk, callback=ThroughputProfiler() if with_profiler else None, reset_num_timesteps=False)
        seconds[with_profiler] += time.perf_counter() - start
        steps[with_profiler] += model.num_timesteps - before
    env.close()
    fps_with, fps_without = steps[True] / seconds[True], steps[False] / seconds[False]
    return dict(fps_profiled=round(fps_with, 1), fps_unprofiled=round(fps_without, 1),
                profiler_overhead=round(1 - fps_with / fps_without, 4))


def markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


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
    for y, (total, row) in enumerate(zip(left, rows)):
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
    table = markdown_table(rows)
    low = f", observations shrunk x{args.low_res}" if args.low_res else ""
    note = f"Env alone ({args.env}{low}, {args.n_envs} envs, random actions): {ceiling:.0f} steps/s."
    with open(os.path.join(args.logdir, "summary.md"), "w") as f:
        f.write(table + "\n\n" + note + "\n")
    with open(os.path.join(args.logdir, "summary.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    plot_phases(rows, os.path.join(args.logdir, "phases.png"),
                f"{args.algo.upper()} on {args.env}, {args.n_envs} envs, {args.steps} steps")
    return table + "\n\n" + note


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="ALE/Pong-v5")
    parser.add_argument("--env-kwargs", type=yaml.safe_load, default={}, help="YAML dict, e.g. '{size: 48}'")
    parser.add_argument("--backbones", default="nature_cnn,mobilenetv4_nano_rl",
                        help="comma-separated names, each with optional extractor/backbone options in brackets, e.g. "
                             "'nature_cnn[channels_last=false,inference_copy=false],mobilenetv4_nano_rl[norm=gn]', "
                             "'mnv4_conv_small[pretrained=model.safetensors,freeze_backbone=true]', or "
                             "'mnv4_conv_small[pretrained=model.safetensors,encode_once=true]' (frozen encoder "
                             "computed once per env step, MlpPolicy on its features); for SAC/TD3/TQC/CrossQ "
                             "'nature_cnn[encoder_sharing=critic,augment_shift=4]' (DrQ-v2)")
    parser.add_argument("--preprocess", default="none",
                        help="comma-separated stages name[:weights] run before each backbone, e.g. "
                             "'bicubic,flexnet_rl:runs/sr/flexnet_rl-x2-SyntheticPixel-v0/weights.pt'")
    parser.add_argument("--preprocess-scale", type=int, default=2)
    parser.add_argument("--low-res", type=int, default=None, help="shrink observations by this factor")
    parser.add_argument("--backend", default="native", choices=["native", "python"],
                        help="Atari: ale-py's C++ vector env (native) or SB3's Python wrappers")
    parser.add_argument("--device", default="auto", help="torch device for the agent (auto: cuda if available)")
    parser.add_argument("--algo", default="ppo")
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hyperparams", type=yaml.safe_load, default={}, help="YAML dict over agents.DEFAULTS")
    parser.add_argument("--eval-episodes", type=int, default=0, help="episodes of the final (or each) evaluation")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="also evaluate every so many env steps (a learning curve; needs --eval-episodes)")
    parser.add_argument("--measure-overhead", action="store_true", help="also time training without the profiler")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--logdir", default=None, help="default: runs/compare-<env>-<time>")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--same-process", dest="process_per_run", action="store_false",
                        help="run every backbone in this process (faster start; peak_memory_mb then includes what "
                             "earlier runs left cached)")
    args = parser.parse_args(argv)
    backbones = parse_backbones(args.backbones)
    stages = [p.strip() for p in args.preprocess.split(",") if p.strip()]
    for option in ("steps", "n_envs"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    if args.eval_episodes < 0:
        parser.error(f"--eval-episodes must be >= 0, got {args.eval_episodes}")
    if args.eval_every is not None and (args.eval_every < 1 or not args.eval_episodes):
        parser.error("--eval-every must be >= 1 and needs --eval-episodes >= 1")
    if args.algo not in ALGOS:
        parser.error(f"--algo {args.algo!r} is not one of {sorted(ALGOS)}")
    for name, options in backbones:  # unknown names and options fail now, not after an hour of training
        try:
            check_keywords(options, accepted_keywords(rlvision.backbone_info(name).builder),
                           f"--backbones entry {name!r}", extra=EXTRACTOR_KEYWORDS + RUN_OPTIONS)
            if options.get("algo", args.algo) not in ALGOS:
                raise ValueError(f"--backbones entry {name!r}: unknown algo {options['algo']!r}; choose one of "
                                 f"{sorted(ALGOS)}")
        except ValueError as error:
            parser.error(str(error))
    for stage in stages:
        if stage != "none":
            rlvision.preprocess_info(stage.partition(":")[0])
    if args.threads:
        torch.set_num_threads(args.threads)
    args.logdir = args.logdir or os.path.join("runs", f"compare-{args.env.replace('/', '-')}-{time.strftime('%m%d-%H%M%S')}")
    os.makedirs(args.logdir, exist_ok=True)

    ceiling = env_only_sps(args)
    print(f"Env alone: {ceiling:.0f} steps/s")
    rows: list[dict] = []
    curves: dict[str, list[dict]] = {}
    try:
        for name, options in backbones:
            for stage in stages:
                print(f"== {name} {options or ''} ({stage}): {options.get('algo', args.algo).upper()} on {args.env}, {args.steps} steps, "
                      f"{args.n_envs} envs", flush=True)
                rows.append(run_isolated(args, name, stage, options) if args.process_per_run
                            else run_one(args, name, stage, options))
                rows[-1].pop("diagnostics", None)
                curve = rows[-1].pop("curve", None)
                if curve:
                    curves[rows[-1]["backbone"]] = curve
                print(json.dumps(rows[-1]), flush=True)
    except KeyboardInterrupt:
        print("Interrupted: writing the table of the runs that finished.")
    if rows:
        print("\n" + save_outputs(rows, args, ceiling) + "\n")
    if curves:
        with open(os.path.join(args.logdir, "curves.json"), "w") as f:
            json.dump(curves, f)
    print(f"Runs in {args.logdir} (summary.md, summary.csv, phases.png). Compare: tensorboard --logdir {args.logdir}")
    return rows


if __name__ == "__main__":
    main()
