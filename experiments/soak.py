"""Soak test: a long `rlvision train` run, sampled every minute, must not grow in memory, descriptors or disk, nor slow
down (issue 34 item 4).

    python experiments/soak.py --backbone nature_cnn --steps 500000 --out runs/soak-nature_cnn
    python experiments/soak.py --backbone mobilenetv4_nano_rl --steps 200000 --out runs/soak-nano_rl
    python experiments/soak.py --steps 6000 --every 1 --checkpoint-every 1000 --out /tmp/soak   # the suite's form

The run is the real command (`rlvision train` in its own process) on the synthetic task, TensorBoard and CSV on,
a checkpoint every ``--checkpoint-every`` steps (three kept). Every ``--every`` seconds it samples the process's
resident memory (VmRSS) and open file descriptors (/proc), the run folder's disk use (checkpoints and TensorBoard
apart) and the env steps done (progress.csv), from which FPS. After the warm-up (until the checkpoint rotation
is full: the first sample with three checkpoints on disk, or as many as a short run makes) the targets are:

- RSS grows by at most 5% (from the first sample after warm-up to the largest later one);
- FPS of every later interval within 10% of the first interval's after warm-up (intervals of at least 30 s when the
  run is long enough; medians of the samples in each);
- open descriptors flat (at most 2 more than after warm-up);
- disk bounded: never more than 3 checkpoints, and TensorBoard's bytes per logged row over the second half of the
  run after warm-up within 20% of the first half's (growth linear in the points logged).

Writes ``soak.md`` (the samples and each target's verdict), ``soak.json`` and ``soak.png``; exits 1 if a target is
missed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time


def proc_status(pid: int) -> dict[str, float]:
    """Resident memory (MiB) and open descriptors of process ``pid`` (Linux /proc)."""
    rss = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return dict(rss_mb=rss, fds=len(os.listdir(f"/proc/{pid}/fd")))


def folder_bytes(path: str, part: str = "") -> int:
    total = 0
    for root, _, files in os.walk(os.path.join(path, part) if part else path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:  # a file renamed away between the listing and the size (a checkpoint being written)
                pass
    return total


def env_steps(run_dir: str) -> tuple[int, int]:
    """(env steps logged so far, rows logged) from progress.csv."""
    path = os.path.join(run_dir, "progress.csv")
    if not os.path.exists(path):
        return 0, 0
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [int(float(r["time/total_timesteps"])) for r in rows if r.get("time/total_timesteps")]
    return (max(steps) if steps else 0), len(rows)


def sample(pid: int, run_dir: str, start: float) -> dict:
    steps, rows = env_steps(run_dir)
    tensorboard = sum(os.path.getsize(os.path.join(run_dir, f)) for f in os.listdir(run_dir)
                      if f.startswith("events.out.tfevents"))
    checkpoints = os.path.join(run_dir, "checkpoints")
    n_checkpoints = len([d for d in os.listdir(checkpoints) if d.startswith("step_")]) if os.path.isdir(
        checkpoints) else 0
    checkpoints_mb = round(folder_bytes(checkpoints) / 2**20, 2) if os.path.isdir(checkpoints) else 0.0
    return dict(seconds=round(time.time() - start, 1), steps=steps, logged_rows=rows, **proc_status(pid),
                disk_mb=round(folder_bytes(run_dir) / 2**20, 2), checkpoints_mb=checkpoints_mb,
                tensorboard_kb=round(tensorboard / 1024, 1), checkpoints=n_checkpoints)


KEPT = 3  # checkpoints rlvision train keeps


def verdicts(samples: list[dict], min_interval: float) -> dict[str, dict]:
    """Each target with its figure and whether it is met (see the module docstring)."""
    # warm-up ends when the checkpoint rotation is full (KEPT checkpoints on disk, or as many as the run made): until
    # then each new checkpoint's save adds to the heap; after it, a save replaces one
    full = min(KEPT, max((s["checkpoints"] for s in samples), default=0))
    warm = next((i for i, s in enumerate(samples) if full and s["checkpoints"] >= full), None)
    if warm is None or len(samples) - warm < 3:
        return {"samples": dict(ok=False, figure=f"{len(samples)} samples, {warm} at warm-up: run longer")}
    after = samples[warm:]
    rss0 = after[0]["rss_mb"]
    rss_growth = (max(s["rss_mb"] for s in after) - rss0) / rss0
    fds = max(s["fds"] for s in after) - after[0]["fds"]
    # FPS per interval (consecutive samples grouped until min_interval has passed)
    intervals, begin = [], after[0]
    for s in after[1:]:
        if s["seconds"] - begin["seconds"] >= min_interval and s["steps"] > begin["steps"]:
            intervals.append((s["steps"] - begin["steps"]) / (s["seconds"] - begin["seconds"]))
            begin = s
    first = intervals[0] if intervals else float("nan")
    fps_worst = max((abs(f - first) / first for f in intervals), default=float("nan"))
    # TensorBoard: bytes per logged row over the second half of the run after warm-up against the first half (rows
    # differ: the encoder diagnostics log only on the rollouts their budget allows, so halves, not single rows)
    middle = after[len(after) // 2]

    def slope(a: dict, b: dict) -> float:
        return (b["tensorboard_kb"] - a["tensorboard_kb"]) / max(b["logged_rows"] - a["logged_rows"], 1)

    first_half, second_half = slope(after[0], middle), slope(middle, after[-1])
    overall = slope(after[0], after[-1])
    tb_drift = abs(second_half - first_half) / first_half if first_half > 0 else float("nan")
    return dict(
        rss=dict(ok=rss_growth <= 0.05, figure=f"{rss0:.0f} -> max {rss0 * (1 + rss_growth):.0f} MiB "
                                                f"(+{rss_growth:.1%}; target <= 5%)"),
        fps=dict(ok=len(intervals) >= 2 and fps_worst <= 0.10,
                 figure=f"{len(intervals)} intervals, first {first:.0f} FPS, worst {fps_worst:.1%} off (target "
                        f"<= 10%)"),
        descriptors=dict(ok=fds <= 2, figure=f"{after[0]['fds']} -> max {after[0]['fds'] + fds} (target: +2 at most)"),
        checkpoints=dict(ok=max(s["checkpoints"] for s in samples) <= KEPT,
                         figure=f"at most {max(s['checkpoints'] for s in samples)} kept (target {KEPT})"),
        tensorboard=dict(ok=tb_drift <= 0.20, figure=f"{overall:.2f} KiB per logged row after warm-up, drift "
                                                     f"{tb_drift:.1%} (target <= 20%)"),
    )


def plot(samples: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["seconds"] / 60 for s in samples]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    fps = [0.0] + [(b["steps"] - a["steps"]) / max(b["seconds"] - a["seconds"], 1e-9)
                   for a, b in zip(samples, samples[1:], strict=False)]
    for ax, (values, label) in zip(axes, [([s["rss_mb"] for s in samples], "RSS (MiB)"), (fps, "FPS (per sample)"),
                                          ([s["fds"] for s in samples], "open descriptors"),
                                          ([s["disk_mb"] for s in samples], "run folder (MiB)")], strict=True):
        ax.plot(t, values)
        ax.set(xlabel="minutes", title=label)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="nature_cnn", help="the encoder (default nature_cnn)")
    parser.add_argument("--steps", type=int, default=500_000, help="env steps (default 500,000)")
    parser.add_argument("--checkpoint-every", type=int, default=25_000, help="(default 25,000)")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples (default 60)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the run (default 1)")
    parser.add_argument("--out", default="runs/soak", help="output folder (default runs/soak)")
    parser.add_argument("--skip", default="", help="targets not judged, e.g. fps for a run too short to time "
                                                   "(default: none)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    log_dir = os.path.join(args.out, "train")
    import shutil

    shutil.rmtree(log_dir, ignore_errors=True)  # this script's own earlier run in --out
    config = dict(env="SyntheticPixel-v0", env_kwargs="{size: 48, grid: 6}", n_envs=8, backbone=args.backbone,
                  steps=args.steps, checkpoint_every=args.checkpoint_every, eval_episodes=0, log_dir=log_dir,
                  run_name="soak", threads=args.threads,
                  hyperparams="{n_steps: 64, batch_size: 128, n_epochs: 4, learning_rate: 0.0005}")
    command = [sys.executable, "-m", "rlvision.cli", "train", "--no-progress"]
    command += [a for k, v in config.items() for a in ("--set", f"{k}={v}")]
    run_dir = os.path.join(log_dir, "soak")
    start = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []
    try:
        while proc.poll() is None:
            time.sleep(args.every)
            if proc.poll() is None and os.path.isdir(run_dir):
                try:
                    samples.append(sample(proc.pid, run_dir, start))
                except (FileNotFoundError, ProcessLookupError):  # it ended between the poll and the sample
                    break
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    if proc.returncode != 0:
        print(err[-3000:], file=sys.stderr)
        return 1
    result = verdicts(samples, min_interval=min(30.0, max(args.every * 3, 1.0)))
    rows = "\n".join(f"| {s['seconds']} | {s['steps']:,} | {s['rss_mb']:.0f} | {s['fds']} | {s['disk_mb']} | "
                     f"{s['checkpoints_mb']} | {s['tensorboard_kb']} | {s['checkpoints']} |" for s in samples)
    text = (f"Soak: `rlvision train` with {args.backbone} on the synthetic task, {args.steps:,} steps, a checkpoint "
            f"every {args.checkpoint_every:,}, {args.threads} thread(s), a sample every {args.every:g} s, "
            f"{time.time() - start:.0f} s in all.\n\n"
            + "\n".join(f"- {k}: {'met' if v['ok'] else 'NOT met'}: {v['figure']}" for k, v in result.items())
            + "\n\n| s | steps | RSS MiB | fds | run folder MiB | checkpoints MiB | TensorBoard KiB | checkpoints |\n"
            + "|---|---|---|---|---|---|---|---|\n" + rows + "\n")
    with open(os.path.join(args.out, "soak.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "soak.json"), "w") as f:
        json.dump(dict(samples=samples, verdicts=result), f, indent=1)
    if samples:
        plot(samples, os.path.join(args.out, "soak.png"), f"soak: {args.backbone}, {args.steps:,} steps")
    print(text)
    skipped = {s.strip() for s in args.skip.split(",") if s.strip()}
    return 0 if all(v["ok"] for k, v in result.items() if k not in skipped) else 1


if __name__ == "__main__":
    sys.exit(main())
