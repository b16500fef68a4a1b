"""Image-observation environments for rlvision: ``make_env`` returns an SB3 VecEnv with channel-first images."""

from . import synthetic  # noqa: F401  (registers SyntheticPixel-v0 and SyntheticPixelContinuous-v0)
from .factory import env_family, make_env
from .synthetic import SyntheticPixelEnv
from .vector import VectorEnvAdapter, make_native_atari
from .wrappers import VecLowRes, downscale

__all__ = ["SyntheticPixelEnv", "VectorEnvAdapter", "make_native_atari", "VecLowRes", "downscale", "env_family",
           "make_env"]
