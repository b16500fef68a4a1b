"""Kept for old command lines: ``python experiments/train_sr.py ...``
is ``rlvision train-sr ...`` (rlvision.commands.train_sr)."""
import sys

from rlvision.cli import main

if __name__ == "__main__":
    main(["train-sr", *sys.argv[1:]])
