"""Agent builders: an SB3 algorithm with an rlvision encoder, RL-Zoo-like image defaults and TensorBoard logging."""

from .evaluation import evaluate_agent
from .factory import ALGOS, DEFAULTS, ReplayBufferTooLarge, make_agent, replay_buffer_bytes

__all__ = ["evaluate_agent", "ALGOS", "DEFAULTS", "ReplayBufferTooLarge", "make_agent", "replay_buffer_bytes"]
