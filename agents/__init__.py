"""Agent builders: an SB3 algorithm with an rlvision encoder, RL-Zoo-like image defaults and TensorBoard logging."""

from .evaluation import PeriodicEvaluation, evaluate_agent
from .factory import ALGOS, DEFAULTS, ReplayBufferTooLarge, algo_class, make_agent, replay_buffer_bytes

__all__ = ["PeriodicEvaluation", "evaluate_agent", "ALGOS", "DEFAULTS", "algo_class", "ReplayBufferTooLarge",
           "make_agent", "replay_buffer_bytes"]
