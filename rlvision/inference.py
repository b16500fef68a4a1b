"""The old import path of :mod:`rlvision.inference_copy` (renamed so the name says the job); kept for code that
imports ``rlvision.inference``."""

from .inference_copy import InferenceCopy, foldable_pairs

__all__ = ["InferenceCopy", "foldable_pairs"]
