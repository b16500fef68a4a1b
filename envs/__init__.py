"""Image-observation environments for rlvision: ``make_env`` returns an SB3 VecEnv with channel-first images."""

from . import synthetic  # noqa: F401  (registers SyntheticPixel-v0 and SyntheticPixelContinuous-v0)
from .factory import env_family, make_env
from .synthetic import SyntheticPixelEnv

__all__ = ["SyntheticPixelEnv", "env_family", "make_env"]
