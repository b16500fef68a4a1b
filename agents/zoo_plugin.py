"""RL Zoo plugin: ``--gym-packages rlvision.agents.zoo_plugin`` registers rlvision's envs and algorithms in Zoo.

Zoo imports every ``--gym-packages`` module after parsing its arguments and before it builds the model; importing
this one registers rlvision's envs (as ``rlvision.envs`` does) and writes rlvision's algorithm classes into Zoo's
``ALGOS`` table, so ``--algo trpo`` trains :class:`rlvision.trpo.TRPO` (sb3-contrib's TRPO with its actor gradients
gathered in one autograd call: same results, about 45x faster with MobileNet-v4) and ``--algo graphedppo`` is
:class:`rlvision.graphed_ppo.GraphedPPO`. Models saved this way also load with sb3-contrib's ``TRPO`` / SB3's ``PPO``.

    python -m rl_zoo3.train --algo trpo --env SyntheticPixel-v0 --gym-packages rlvision.agents.zoo_plugin -conf trpo.yml
"""

from __future__ import annotations

import rlvision.envs  # noqa: F401  (registers the envs, as --gym-packages rlvision.envs would)
from rlvision.algorithms import ALGORITHMS

from .factory import algo_class


def register_algorithms() -> dict[str, type]:
    """Put rlvision's class of every algorithm Zoo knows (by Zoo's name) and rlvision's own algorithms (GraphedPPO,
    by its own name) into ``rl_zoo3``'s ALGOS table; returns what was written."""
    from rl_zoo3.utils import ALGOS

    ours = {row.zoo_name or name: algo_class(name) for name, row in ALGORITHMS.items()
            if row.zoo_name in ALGOS or row.cls_path.startswith("rlvision.")}
    ALGOS.update(ours)
    return ours


register_algorithms()
