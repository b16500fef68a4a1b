"""Kept for old command lines: ``python experiments/sweep.py ...``
is ``rlvision sweep ...`` (rlvision.commands.sweep)."""
import sys

from rlvision.cli import main

if __name__ == "__main__":
    main(["sweep", *sys.argv[1:]])
