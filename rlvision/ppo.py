"""The old import path of :mod:`rlvision.graphed_ppo` (renamed so the name says the job); kept for code that imports
``rlvision.ppo``."""

from .graphed_ppo import GraphedPPO

__all__ = ["GraphedPPO"]
