"""Agent builders: an SB3 algorithm with an rlvision encoder, RL-Zoo-like image defaults and TensorBoard logging."""

import rlvision as _package

if getattr(_package, "__file__", None) is None:  # a folder named rlvision without __init__.py came first on sys.path
    raise ImportError(f"'rlvision' resolved to {list(getattr(_package, '__path__', []))}, a folder without "
                      f"__init__.py (e.g. an empty 'rlvision' directory in the current directory) that shadows the "
                      f"installed package; run from another directory, or rename or remove that folder.")

from .evaluation import PeriodicEvaluation, evaluate_agent
from .factory import (ALGOS, DEFAULTS, ReplayBufferTooLarge, ReplayBufferTooLargeError, algo_class, make_agent,
                      replay_buffer_bytes, resolve_schedules)

__all__ = ["PeriodicEvaluation", "evaluate_agent", "ALGOS", "DEFAULTS", "algo_class", "ReplayBufferTooLargeError",
           "ReplayBufferTooLarge",
           "make_agent", "replay_buffer_bytes", "resolve_schedules"]
