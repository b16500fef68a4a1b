"""Kept for old command lines: ``python experiments/train.py ...``
is ``rlvision train ...`` (rlvision.commands.train)."""
import sys

from rlvision.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
