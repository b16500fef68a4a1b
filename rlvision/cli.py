"""The ``rlvision`` command: one thin parser per job over the library (installed by pip as a console script).

    rlvision train ppo_synthetic --set steps=20000
    rlvision compare --env ALE/Pong-v5 --backbones nature_cnn,mobilenetv4_nano_rl --steps 4096
    rlvision sweep --config experiments/configs/sweep_learning_v2_doorkey.yaml --out runs/learning-v2-doorkey
    rlvision bench --input 4x84x84
    rlvision COMMAND --help

Each command is a module of :mod:`rlvision.commands` (or :mod:`rlvision.agents.zoo`) with ``main(argv)``; it is
imported only when run, so ``rlvision --help`` starts fast and a command's optional dependencies (Ray, matplotlib)
are needed only by that command.
"""

from __future__ import annotations

import importlib
import os
import sys

# command -> (module with main(argv), one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("rlvision.commands.train", "one run from a YAML config: checkpoints, --resume, TensorBoard, evaluation"),
    "compare": ("rlvision.commands.compare", "several backbones on one env, profiled side by side (FPS, phases)"),
    "sweep": ("rlvision.commands.sweep", "a grid of envs x backbones x seeds x algos on Ray Tune, with CIs"),
    "bench": ("rlvision.commands.bench_backbones", "encoders alone: parameters, FLOPs, latency, training memory"),
    "bench-speed": ("rlvision.commands.bench_speed", "the RL loop's cost per encoder, and the speed path"),
    "design": ("rlvision.commands.design", "design MobileNet-v4 presets on this device: loop cost vs a learning proxy"),
    "bench-preprocess": ("rlvision.commands.bench_preprocess", "super-resolution stages: latency, fused vs not"),
    "train-sr": ("rlvision.commands.train_sr", "train a super-resolution stage on frames of an env"),
    "zoo": ("rlvision.agents.zoo", "write an RL Zoo hyperparameter file that uses an rlvision encoder"),
    "export": ("rlvision.commands.export", "a trained policy as an ONNX / TorchScript / ExecuTorch file, checked"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return ("usage: rlvision COMMAND [options]   (rlvision COMMAND --help for its options)\n\n"
            "Modern vision backbones as Stable-Baselines3 encoders: train, compare, sweep, benchmark.\n\ncommands:\n"
            + "\n".join(lines))


def main(argv: list[str] | None = None):
    """Run ``rlvision COMMAND ...``; returns what the command's ``main`` returns."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return None
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"rlvision: unknown command {command!r}{hint}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(COMMANDS[command][0])
    saved, sys.argv = sys.argv, [f"rlvision {command}", *rest]  # argparse's prog: "rlvision compare"
    try:
        return module.main(rest)
    except (ValueError, FileNotFoundError) as error:  # a user's error: one message, exit code 2, no traceback
        if os.environ.get("RLVISION_TRACEBACK"):
            raise
        print(f"rlvision {command}: error: {error}\n(RLVISION_TRACEBACK=1 shows where it was raised)",
              file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        sys.argv = saved


def console() -> int:
    """The installed ``rlvision`` command: exit status 0 unless the command returns an int status (a command's
    ``main`` may return its results, e.g. ``sweep``'s table, which must not become exit status 1)."""
    result = main()
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    main()
