"""Kill or preempt `rlvision train` at random points, resume it each time, and check that nothing was lost or
logged twice.

    python experiments/fault_resume.py --schedules 20 --seed 0            # 20 random kill schedules (~10 minutes)
    python experiments/fault_resume.py --schedules 20 --modes sigterm,sigint --steps 6400   # preemption signals
    python experiments/fault_resume.py --kills "checkpoint,time;evaluation"  # these schedules (tests/test_resume.py)

A schedule is a list of kills; each kill is one of
- ``time``: SIGKILL after a random fraction of an uninterrupted run's duration (start-up included),
- ``checkpoint``: SIGKILL while a checkpoint is being written (its temporary folder exists),
- ``evaluation``: SIGKILL during the final evaluation (the final model is written, results.json is not),
- ``sigterm`` / ``sigint``: the signal (a scheduler's preemption, Ctrl-C) at a random time; the run must stop by
  itself within 120 s with status 128 + the signal's number and a message naming --resume (or finish, if the
  signal came too late), having written its checkpoint atomically.
After each kill the run goes on with ``--resume`` (or afresh, when no checkpoint was complete yet), as a user would;
the last attempt runs to the end. The result is compared with an uninterrupted run of the same config:
- every env step the uninterrupted run logged to CSV is in some kept CSV segment, with the same ``time/iterations``;
- TensorBoard holds each step of ``time/fps`` and ``train/value_loss`` exactly once, the same steps as the
  uninterrupted run;
- results.json says the full number of steps, and no temporary checkpoint folder is left.
Prints one row per schedule (where each kill landed, attempts, verdict) and exits 1 if any schedule failed.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

STEPS = 640  # 10 rollouts of 2 envs x 32 steps
CONFIG = dict(env="SyntheticPixel-v0", env_kwargs="{size: 36, grid: 3}", n_envs=2, algo="ppo", backbone="nature_cnn",
              steps=STEPS, checkpoint_every=64, eval_episodes=3, run_name="r",
              hyperparams="{n_steps: 32, batch_size: 32, n_epochs: 1}")
MODES = ("time", "checkpoint", "evaluation", "sigterm", "sigint")
SIGNALS = {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT}


def command(log_dir: str, resume: bool) -> list[str]:
    args = [arg for k, v in {**CONFIG, "log_dir": log_dir}.items() for arg in ("--set", f"{k}={v}")]
    return [sys.executable, "-m", "rlvision.cli", "train", *args, "--no-progress"] + (["--resume"] if resume else [])


def attempt(log_dir: str, kill: str | None, duration: float, rng: random.Random) -> str:
    """One run of `rlvision train`, killed as ``kill`` says; returns where the kill landed ("finished": it did not)."""
    run_dir = os.path.join(log_dir, "r")
    resume = bool(glob.glob(os.path.join(run_dir, "checkpoints", "step_*")))
    left_over = set(glob.glob(os.path.join(run_dir, "checkpoints", ".tmp-step_*")))  # by an earlier kill
    proc = subprocess.Popen(command(log_dir, resume), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    timed = kill in ("time", *SIGNALS)
    deadline = time.time() + (rng.uniform(0.3, 1.0) * duration if timed else 600)
    skip = rng.randint(0, 3)  # "checkpoint": let a few writes pass first
    seen: set[str] = set()
    while proc.poll() is None:
        if timed and time.time() >= deadline:
            break
        if kill == "checkpoint":
            writing = set(glob.glob(os.path.join(run_dir, "checkpoints", ".tmp-step_*"))) - left_over
            if writing - seen:
                seen |= writing
                if len(seen) > skip:
                    break
        if kill == "evaluation" and os.path.exists(os.path.join(run_dir, "model.zip")) \
                and not os.path.exists(os.path.join(run_dir, "results.json")):
            break
        time.sleep(0.0005)
    if proc.poll() is not None:
        if proc.returncode != 0:
            raise RuntimeError(f"rlvision train failed:\n{proc.stderr.read()[-3000:]}")
        return "finished"
    if kill in SIGNALS:  # a preemption: the run must stop by itself, its checkpoint written
        signum = SIGNALS[kill]
        proc.send_signal(signum)
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError(f"{kill}: the run did not stop within 120 s") from None
        if proc.returncode == 0:
            return f"{kill}: finished first"
        if proc.returncode == -signum or proc.returncode == 1 and "KeyboardInterrupt" in err:
            return f"{kill}: before training (Python's default handler)"
        if proc.returncode != 128 + signum or "--resume" not in err:
            raise RuntimeError(f"{kill}: exit status {proc.returncode}, stderr:\n{err[-2000:]}")
        if set(glob.glob(os.path.join(run_dir, "checkpoints", ".tmp-step_*"))) - left_over:
            raise RuntimeError(f"{kill}: a temporary checkpoint folder was left behind")
        return f"{kill}: stopped with a checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if set(glob.glob(os.path.join(run_dir, "checkpoints", ".tmp-step_*"))) - left_over:
        return "checkpoint write"
    if os.path.exists(os.path.join(run_dir, "model.zip")) and not os.path.exists(os.path.join(run_dir, "results.json")):
        return "evaluation"
    return "training"


def csv_rows(run_dir: str) -> list[dict[str, str]]:
    """SB3's rows, one per rollout (with time/iterations; the profiler's closing row of the last update's values
    is not one)."""
    rows = []
    for path in glob.glob(os.path.join(run_dir, "progress*.csv")):
        with open(path) as f:
            rows += [row for row in csv.DictReader(f) if row.get("time/iterations")]
    return rows


def tensorboard_steps(run_dir: str, tag: str) -> Counter:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps: Counter = Counter()
    for path in glob.glob(os.path.join(run_dir, "events.out.tfevents*")):
        acc = EventAccumulator(path)
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            steps.update(e.step for e in acc.Scalars(tag))
    return steps


def check(run_dir: str, reference: str) -> list[str]:
    """What differs from the uninterrupted run (empty: nothing)."""
    problems = []
    with open(os.path.join(run_dir, "results.json")) as f:
        if json.load(f)["steps"] != CONFIG["steps"]:
            problems.append("results.json: wrong step count")
    if glob.glob(os.path.join(run_dir, "checkpoints", ".tmp-step_*")):
        problems.append("a temporary checkpoint folder was left behind")
    want = {int(r["time/total_timesteps"]): r["time/iterations"] for r in csv_rows(reference)}
    got: dict[int, set[str]] = {}
    for row in csv_rows(run_dir):
        got.setdefault(int(row["time/total_timesteps"]), set()).add(row["time/iterations"])
    missing = sorted(set(want) - set(got))
    if missing:
        problems.append(f"CSV rows missing at steps {missing}")
    wrong = sorted(s for s in want if s in got and got[s] != {want[s]})
    if wrong:
        problems.append(f"time/iterations differs at steps {wrong}")
    for tag in ("time/fps", "train/value_loss"):
        expected, seen = tensorboard_steps(reference, tag), tensorboard_steps(run_dir, tag)
        if seen != expected:
            twice = sorted(s for s, n in seen.items() if n > 1)
            problems.append(f"TensorBoard {tag}: missing {sorted(set(expected) - set(seen))}, twice {twice}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", type=int, default=20, help="random kill schedules to run (default 20)")
    parser.add_argument("--kills", help='explicit schedules instead: "checkpoint,time;evaluation" (kinds: '
                                        f'{", ".join(MODES)}; schedules separated by ";")')
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"kinds the random schedules draw from (default {','.join(MODES)})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random schedules and kill times")
    parser.add_argument("--steps", type=int, default=STEPS,
                        help=f"env steps of the run (default {STEPS}; a checkpoint every tenth of them, at least 64). "
                             "Longer runs put more random signals inside training rather than start-up")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.steps < 64 or args.steps % 64:
        parser.error(f"--steps must be a multiple of 64 (2 envs x 32 steps per rollout), got {args.steps}")
    CONFIG.update(steps=args.steps, checkpoint_every=max(64, args.steps // 10 // 64 * 64))
    rng = random.Random(args.seed)
    if args.kills:
        schedules = [[k.strip() for k in s.split(",") if k.strip()] for s in args.kills.split(";")]
        unknown = {k for s in schedules for k in s} - set(MODES)
        if unknown:
            parser.error(f"unknown kill kinds {sorted(unknown)}; use {', '.join(MODES)}")
    else:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        if not modes or set(modes) - set(MODES):
            parser.error(f"--modes: choose among {', '.join(MODES)}")
        schedules = [[rng.choice(modes) for _ in range(rng.randint(1, 4))] for _ in range(args.schedules)]

    with tempfile.TemporaryDirectory(prefix="fault-resume-") as work:
        start = time.time()
        reference = os.path.join(work, "reference")
        attempt(reference, None, 0, rng)
        duration = time.time() - start
        print(f"uninterrupted run: {duration:.1f} s; {len(schedules)} schedules")
        print("| # | kills asked | landed in | attempts | result |\n|---|---|---|---|---|")
        results = []
        for i, schedule in enumerate(schedules):
            log_dir = os.path.join(work, f"s{i}")
            landed = [attempt(log_dir, kill, duration, rng) for kill in schedule]
            attempts = len(landed)
            while not os.path.exists(os.path.join(log_dir, "r", "results.json")):
                attempt(log_dir, None, duration, rng)
                attempts += 1
            problems = check(os.path.join(log_dir, "r"), os.path.join(reference, "r"))
            results.append(dict(kills=schedule, landed=landed, attempts=attempts, problems=problems))
            print(f"| {i} | {', '.join(schedule)} | {', '.join(landed)} | {attempts} | "
                  f"{'; '.join(problems) or 'ok'} |", flush=True)
    failed = [r for r in results if r["problems"]]
    landed = Counter(where for r in results for where in r["landed"])
    print(f"{len(results) - len(failed)}/{len(results)} schedules ok; kills landed: {dict(landed)}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
