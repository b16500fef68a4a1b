"""One table of the RL algorithms rlvision serves: SB3's, sb3-contrib's and rlvision's GraphedPPO.

Every other module reads this table (the extractor's ``policy_kwargs``, ``make_agent``, DrQ-v2's policies, the RL
Zoo writer): an algorithm is added by adding a row. Nothing here imports SB3 or sb3-contrib; ``cls_path`` is
imported only when the algorithm is used (:func:`rlvision.agents.algo_class`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ENCODER_SHARING = ("separate", "actor", "critic")  # SAC-style: two encoders, SB3's shared mode, DrQ-v2's


@dataclass(frozen=True)
class Algorithm:
    """What rlvision needs to know of one algorithm.

    :param name: the lowercased class name (``make_agent``'s ``algo``).
    :param cls_path: ``"module:Class"``.
    :param on_policy: rollout buffer (True) or replay buffer (False).
    :param encoders: ``"shared"`` (one extractor for actor and critic), ``"separate"`` (one each; SAC-style
        algorithms also take ``encoder_sharing``) or ``"single"`` (one Q network, no ``share_features_extractor``).
    :param actions: ``"any"``, ``"box"`` (continuous only) or ``"discrete"``.
    :param policy: the image policy; ``dict_policy``: the one for Dict observations (None: not supported).
    :param optimizer: ``"adam"`` or ``"rmsprop"`` (SB3's A2C); ``adam_defaults``: the Adam settings the algorithm
        uses, kept when rlvision switches Adam to ``fused=True``.
    :param drqv2_base: ``("module", "PolicyClass")`` of the actor-critic policy DrQ-v2's sharing subclasses (None:
        DrQ-v2 does not apply).
    :param zoo_name: RL Zoo's name of the algorithm (None: not in Zoo).
    :param extra_policy_kwargs: policy kwargs rlvision adds (RecurrentPPO: RL Zoo's Atari LSTM settings).
    """

    name: str
    cls_path: str
    on_policy: bool
    encoders: str
    actions: str = "any"
    policy: str = "CnnPolicy"
    dict_policy: str | None = "MultiInputPolicy"
    optimizer: str = "adam"
    adam_defaults: dict[str, Any] = field(default_factory=dict)
    drqv2_base: tuple[str, str] | None = None
    zoo_name: str | None = None
    extra_policy_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def sharing_modes(self) -> tuple[str, ...]:
        """The ``encoder_sharing`` values the algorithm takes (SAC-style actor-critics only)."""
        return ENCODER_SHARING if self.drqv2_base is not None else ()

    def policy_for(self, dict_observations: bool) -> str:
        """The policy name for image (or Dict) observations; a ValueError when Dict observations are unsupported."""
        if not dict_observations:
            return self.policy
        if self.dict_policy is None:
            raise ValueError(f"{self.cls_path.split(':')[1]} has no policy for Dict observations; use an image-only "
                             f"env or one of {sorted(a.name for a in ALGORITHMS.values() if a.dict_policy)}.")
        return self.dict_policy


_PPO_ADAM = dict(eps=1e-5)  # SB3's PPO family and TRPO
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("ppo", "stable_baselines3:PPO", True, "shared", adam_defaults=_PPO_ADAM, zoo_name="ppo"),
    # SB3's PPO whose update replays CUDA graphs on a GPU (rlvision.graphed_ppo)
    Algorithm("graphedppo", "rlvision.graphed_ppo:GraphedPPO", True, "shared", adam_defaults=_PPO_ADAM),
    Algorithm("a2c", "stable_baselines3:A2C", True, "shared", optimizer="rmsprop", zoo_name="a2c"),
    Algorithm("recurrentppo", "sb3_contrib:RecurrentPPO", True, "shared", policy="CnnLstmPolicy",
              dict_policy="MultiInputLstmPolicy", adam_defaults=_PPO_ADAM, zoo_name="ppo_lstm",
              extra_policy_kwargs=dict(lstm_hidden_size=128, enable_critic_lstm=False)),
    Algorithm("maskableppo", "sb3_contrib:MaskablePPO", True, "shared", actions="discrete", adam_defaults=_PPO_ADAM),
    # its KL step would otherwise also move the value function's encoder, and its critic update drops the gradients
    # of shared parameters
    # rlvision.trpo.TRPO: sb3-contrib's, its actor gradients gathered in one autograd call (~45x faster, nano_rl)
    Algorithm("trpo", "rlvision.trpo:TRPO", True, "separate", adam_defaults=_PPO_ADAM, zoo_name="trpo"),
    Algorithm("sac", "stable_baselines3:SAC", False, "separate", actions="box",
              drqv2_base=("stable_baselines3.sac.policies", "SACPolicy"), zoo_name="sac"),
    Algorithm("td3", "stable_baselines3:TD3", False, "separate", actions="box",
              drqv2_base=("stable_baselines3.td3.policies", "TD3Policy"), zoo_name="td3"),
    Algorithm("tqc", "sb3_contrib:TQC", False, "separate", actions="box",
              drqv2_base=("sb3_contrib.tqc.policies", "TQCPolicy"), zoo_name="tqc"),
    # sb3-contrib has only MlpPolicy for CrossQ; it takes our extractor like any other
    Algorithm("crossq", "sb3_contrib:CrossQ", False, "separate", actions="box", policy="MlpPolicy",
              dict_policy=None, adam_defaults=dict(betas=(0.5, 0.999)),
              drqv2_base=("sb3_contrib.crossq.policies", "CrossQPolicy"), zoo_name="crossq"),
    Algorithm("dqn", "stable_baselines3:DQN", False, "single", actions="discrete", zoo_name="dqn"),
    Algorithm("qrdqn", "sb3_contrib:QRDQN", False, "single", actions="discrete", zoo_name="qrdqn"),
)}


def algorithm(name: str) -> Algorithm:
    """The row of ``name`` (case-insensitive); an unknown name raises a ValueError with close matches."""
    from .registry import lookup

    return lookup(ALGORITHMS, name.lower() if isinstance(name, str) else name, "algo")
