"""One table of the RL algorithms rlvision serves: SB3's, sb3-contrib's and rlvision's GraphedPPO and TRPO.

Every other module reads this table (the extractor's ``policy_kwargs``, ``make_agent`` and its defaults, DrQ-v2's
policies, the RL Zoo writer, the exporter, the encoder diagnostics): an algorithm is added by adding a row, and no
module outside it branches on an algorithm's name. Nothing here imports SB3 or sb3-contrib; ``cls_path`` is
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
    :param defaults: ``make_agent``'s hyperparameters for image observations (RL Zoo's Atari settings where it has
        them, else the nearest SB3 algorithm's), over which a user's hyperparameters go.
    :param head: how the policy turns features into actions (:mod:`rlvision.policies`): ``"distribution"`` (SB3's
        action distribution and a state value), ``"squashed_gaussian"``, ``"deterministic"``, ``"q"``, ``"quantile"``.
    :param recurrent: the policy carries an LSTM state (exports take it in and out).
    :param masked: the policy takes action masks (MaskablePPO's ``action_masks``).
    :param exportable: ``rlvision export`` writes its policy to a file.
    :param action_noise_std: Gaussian exploration noise (fraction of the action range) ``make_agent`` adds when
        none is given (RL Zoo's TD3), or None.
    :param policy_hint: text of its policy class's path in the ``data`` of a zip SB3 saved, by which
        ``rlvision export`` tells the algorithm of a file (sb3-contrib's hints first, then SB3's, then the generic
        ``ActorCritic``), or None.
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
    defaults: dict[str, Any] = field(default_factory=dict)
    head: str = "distribution"
    recurrent: bool = False
    masked: bool = False
    exportable: bool = True
    action_noise_std: float | None = None
    policy_hint: str | None = None

    def load_class(self) -> type:
        """The algorithm's class, imported now (sb3-contrib's: an ImportError that says how to install it)."""
        import importlib

        module, name = self.cls_path.split(":")
        try:
            return getattr(importlib.import_module(module), name)
        except ImportError as error:
            raise ImportError(f"{name} is in sb3-contrib: pip install 'rlvision[contrib]' (or sb3-contrib).") \
                from error

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
# make_agent's defaults for image observations: RL Zoo's Atari settings
_PPO = dict(n_steps=128, n_epochs=4, batch_size=256, learning_rate=2.5e-4, clip_range=0.1, vf_coef=0.5, ent_coef=0.01)
_DQN = dict(buffer_size=100_000, learning_rate=1e-4, batch_size=32, learning_starts=100_000,
            target_update_interval=1000, train_freq=4, gradient_steps=1, exploration_fraction=0.1,
            exploration_final_eps=0.01)
_SAC = dict(buffer_size=50_000, learning_rate=3e-4, batch_size=256, learning_starts=1000, train_freq=1,
            gradient_steps=1)
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("ppo", "stable_baselines3:PPO", True, "shared", adam_defaults=_PPO_ADAM, zoo_name="ppo",
              defaults=_PPO, policy_hint="ActorCritic"),
    # SB3's PPO whose update replays CUDA graphs on a GPU (rlvision.graphed_ppo)
    Algorithm("graphedppo", "rlvision.graphed_ppo:GraphedPPO", True, "shared", adam_defaults=_PPO_ADAM,
              defaults=_PPO),
    Algorithm("a2c", "stable_baselines3:A2C", True, "shared", optimizer="rmsprop", zoo_name="a2c",
              defaults=dict(n_steps=5, learning_rate=7e-4, vf_coef=0.25, ent_coef=0.01)),
    # sb3-contrib: RL Zoo's Atari settings where it has them (RecurrentPPO, QR-DQN), else the nearest SB3 algorithm's
    Algorithm("recurrentppo", "sb3_contrib:RecurrentPPO", True, "shared", policy="CnnLstmPolicy",
              dict_policy="MultiInputLstmPolicy", adam_defaults=_PPO_ADAM, zoo_name="ppo_lstm",
              extra_policy_kwargs=dict(lstm_hidden_size=128, enable_critic_lstm=False), defaults=_PPO, recurrent=True,
              policy_hint="sb3_contrib.common.recurrent"),
    Algorithm("maskableppo", "sb3_contrib:MaskablePPO", True, "shared", actions="discrete", adam_defaults=_PPO_ADAM,
              defaults=_PPO, masked=True, policy_hint="sb3_contrib.common.maskable"),
    # its KL step would otherwise also move the value function's encoder, and its critic update drops the gradients
    # of shared parameters
    # rlvision.trpo.TRPO: sb3-contrib's, its actor gradients gathered in one autograd call (~45x faster, nano_rl)
    Algorithm("trpo", "rlvision.trpo:TRPO", True, "separate", adam_defaults=_PPO_ADAM, zoo_name="trpo",
              defaults=dict(n_steps=128, batch_size=256, learning_rate=1e-3)),
    # SAC's entropy coefficient starts at 0.01: SB3's 1.0 paid the agent to avoid the goal (BENCHMARKS.md)
    Algorithm("sac", "stable_baselines3:SAC", False, "separate", actions="box",
              drqv2_base=("stable_baselines3.sac.policies", "SACPolicy"), zoo_name="sac",
              defaults=dict(_SAC, ent_coef="auto_0.01"), head="squashed_gaussian",
              policy_hint="stable_baselines3.sac"),
    Algorithm("td3", "stable_baselines3:TD3", False, "separate", actions="box",
              drqv2_base=("stable_baselines3.td3.policies", "TD3Policy"), zoo_name="td3",
              defaults=dict(_SAC, learning_rate=1e-3), head="deterministic", action_noise_std=0.1,
              policy_hint="stable_baselines3.td3"),
    Algorithm("tqc", "sb3_contrib:TQC", False, "separate", actions="box",
              drqv2_base=("sb3_contrib.tqc.policies", "TQCPolicy"), zoo_name="tqc",
              defaults=dict(_SAC, ent_coef="auto_0.01"), head="squashed_gaussian", policy_hint="sb3_contrib.tqc"),
    # sb3-contrib has only MlpPolicy for CrossQ; it takes our extractor like any other
    Algorithm("crossq", "sb3_contrib:CrossQ", False, "separate", actions="box", policy="MlpPolicy",
              dict_policy=None, adam_defaults=dict(betas=(0.5, 0.999)),
              drqv2_base=("sb3_contrib.crossq.policies", "CrossQPolicy"), zoo_name="crossq",
              defaults=dict(_SAC, learning_rate=1e-3), head="squashed_gaussian", policy_hint="sb3_contrib.crossq"),
    Algorithm("dqn", "stable_baselines3:DQN", False, "single", actions="discrete", zoo_name="dqn", defaults=_DQN,
              head="q", policy_hint="stable_baselines3.dqn"),
    Algorithm("qrdqn", "sb3_contrib:QRDQN", False, "single", actions="discrete", zoo_name="qrdqn",
              defaults=dict(_DQN, exploration_fraction=0.025), head="quantile", policy_hint="sb3_contrib.qrdqn"),
)}


def algorithm(name: str) -> Algorithm:
    """The row of ``name`` (case-insensitive); an unknown name raises a ValueError with close matches."""
    from .registry import lookup

    return lookup(ALGORITHMS, name.lower() if isinstance(name, str) else name, "algo")
