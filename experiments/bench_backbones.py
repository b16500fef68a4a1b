"""Kept for old command lines: ``python experiments/bench_backbones.py ...``
is ``rlvision bench ...`` (rlvision.commands.bench_backbones)."""
import sys

from rlvision.cli import main

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]])
