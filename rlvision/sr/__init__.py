"""Super-resolution stages (registered in rlvision.preprocess on import)."""

from . import flexnet, transformer_sr  # noqa: F401
