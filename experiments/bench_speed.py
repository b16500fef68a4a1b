"""Kept for old command lines: ``python experiments/bench_speed.py ...``
is ``rlvision bench-speed ...`` (rlvision.commands.bench_speed)."""
import sys

from rlvision.cli import main

if __name__ == "__main__":
    main(["bench-speed", *sys.argv[1:]])
