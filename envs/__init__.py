"""Image-observation environments for rlvision: ``make_env`` returns an SB3 VecEnv with channel-first images."""

import rlvision as _package

if getattr(_package, "__file__", None) is None:  # a folder named rlvision without __init__.py came first on sys.path
    raise ImportError(f"'rlvision' resolved to {list(getattr(_package, '__path__', []))}, a folder without "
                      f"__init__.py (e.g. an empty 'rlvision' directory in the current directory) that shadows the "
                      f"installed package; run from another directory, or rename or remove that folder.")

from . import synthetic  # noqa: F401  (registers SyntheticPixel-v0 and SyntheticPixelContinuous-v0)
from .factory import check_env_id, env_family, make_env, return_normalizer
from .synthetic import SyntheticPixelEnv
from .vector import VectorEnvAdapter, make_native_atari
from .wrappers import VecLowRes, downscale

__all__ = ["SyntheticPixelEnv", "VectorEnvAdapter", "make_native_atari", "VecLowRes", "downscale", "env_family",
           "make_env", "check_env_id", "return_normalizer"]
