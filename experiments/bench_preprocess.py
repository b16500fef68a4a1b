"""Kept for old command lines: ``python experiments/bench_preprocess.py ...``
is ``rlvision bench-preprocess ...`` (rlvision.commands.bench_preprocess)."""
import sys

from rlvision.cli import main

if __name__ == "__main__":
    main(["bench-preprocess", *sys.argv[1:]])
