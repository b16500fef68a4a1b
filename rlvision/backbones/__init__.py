"""Every backbone family; importing a module registers its variants."""

from . import baselines, conformer, cyclemlp, mobilenetv4, rest  # noqa: F401
