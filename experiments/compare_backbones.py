"""Kept for old command lines: ``python experiments/compare_backbones.py ...``
is ``rlvision compare ...`` (rlvision.commands.compare)."""
import sys

from rlvision.cli import main

if __name__ == "__main__":
    main(["compare", *sys.argv[1:]])
