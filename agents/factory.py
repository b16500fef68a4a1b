"""``make_agent(algo, env, backbone=...)``: SB3's PPO, A2C, DQN, SAC, TD3 and sb3-contrib's RecurrentPPO,
MaskablePPO, TRPO, QR-DQN, TQC, CrossQ, and rlvision's GraphedPPO (SB3's PPO with CUDA-graph updates:
rlvision.graphed_ppo), on
image observations, named by lowercased class name.

Defaults follow RL Zoo's Atari / image-env settings (hyperparams/*.yml); anything passed as a keyword overrides them.
Replay-buffer algorithms check the buffer's memory for the observation shape before SB3 allocates it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from gymnasium import spaces

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecEnv

from rlvision import drqv2_policy, policy_kwargs as vision_policy_kwargs
from rlvision.algorithms import ALGORITHMS, algorithm
from rlvision.checks import check_int, check_keywords, check_range, init_keywords
from rlvision.extractors import DEFAULT_BACKBONE, check_encoder_sharing

# name -> "module:Class", read from rlvision.algorithms; sb3-contrib's are imported only when asked for (extra:
# rlvision[contrib])
ALGOS: dict[str, str] = {name: row.cls_path for name, row in ALGORITHMS.items()}
CONTINUOUS = tuple(name for name, row in ALGORITHMS.items() if row.actions == "box")
DISCRETE = tuple(name for name, row in ALGORITHMS.items() if row.actions == "discrete")


def algo_class(algo: str) -> type[BaseAlgorithm]:
    """The SB3 / sb3-contrib class of ``algo`` (a key of ALGOS)."""
    return algorithm(algo).load_class()


def policy_name(algo: str, observation_space: spaces.Space) -> str:
    """The algorithm's image policy: CnnPolicy / MultiInputPolicy (RecurrentPPO: Cnn/MultiInputLstmPolicy; CrossQ
    has only MlpPolicy, which takes our extractor like any other); rlvision.algorithms holds them."""
    return algorithm(algo).policy_for(isinstance(observation_space, spaces.Dict))

# RL Zoo's Atari settings for PPO/A2C/DQN; SAC/TD3 follow its image (CarRacing-style) settings, with a buffer sized
# for 2-core / 24 GiB machines. SAC's and TQC's entropy coefficient starts at 0.01, not SB3's 1.0: with returns of
# order 1 and an episode that ends on success, a large entropy bonus per step pays the agent to avoid the goal, and
# SAC from pixels never learned the synthetic task (BENCHMARKS.md "SAC from pixels"); it is still tuned ("auto").
# make_agent's hyperparameters per algorithm: the algorithm table's defaults (a copy each: a caller may edit them)
DEFAULTS: dict[str, dict[str, Any]] = {name: dict(row.defaults) for name, row in ALGORITHMS.items()}


class ReplayBufferTooLargeError(MemoryError):
    """The replay buffer would not fit in the memory available."""


ReplayBufferTooLarge = ReplayBufferTooLargeError  # the name before issue 33 (ruff N818), kept for old imports


def replay_buffer_bytes(observation_space: spaces.Space, buffer_size: int, optimize_memory_usage: bool = False) -> int:
    """Bytes SB3's replay buffer holds for observations: ``buffer_size`` transitions of obs (and next_obs unless
    ``optimize_memory_usage``). Dict spaces sum over keys. Actions and rewards are negligible next to images."""
    subspaces = observation_space.spaces.values() if isinstance(observation_space, spaces.Dict) else [observation_space]
    per_obs = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in subspaces)
    return buffer_size * per_obs * (1 if optimize_memory_usage else 2)


def available_memory_bytes() -> int:
    """MemAvailable of this machine (Linux /proc/meminfo; psutil where present)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return 1 << 62  # unknown: do not refuse


def check_replay_buffer(algo: str, env: VecEnv, hyperparams: dict[str, Any], memory_fraction: float) -> None:
    size = hyperparams["buffer_size"]
    optimize = hyperparams.get("optimize_memory_usage", False)
    need = replay_buffer_bytes(env.observation_space, size, optimize)
    avail = available_memory_bytes()
    if need > memory_fraction * avail:
        fits = int(size * memory_fraction * avail / need)
        tips = [f"buffer_size={fits:,} (fits)"]
        if not optimize:  # every replay-buffer algorithm of SB3 and sb3-contrib takes it
            tips.append("optimize_memory_usage=True, replay_buffer_kwargs=dict(handle_timeout_termination=False) "
                        "(halves it)")
        tips.append("a low-resolution or greyscale observation")
        raise ReplayBufferTooLargeError(
            f"{algo.upper()} replay buffer of {size:,} x {env.observation_space.shape} {env.observation_space.dtype} "
            f"observations needs {need / 2**30:.1f} GiB, more than {memory_fraction:.0%} of the "
            f"{avail / 2**30:.1f} GiB available. Use " + ", or ".join(tips) + ".")


SCHEDULED = ("learning_rate", "clip_range", "clip_range_vf")


def resolve_schedules(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """RL Zoo's schedule strings: ``learning_rate: lin_5e-4`` (also ``clip_range``, ``clip_range_vf``) anneals
    linearly from 5e-4 at the start of ``learn`` to 0 at its end (SB3's LinearSchedule; saved with the model).
    Other values pass through; a malformed string is a ValueError naming the key."""
    out = dict(hyperparams)
    for key in SCHEDULED:
        value = out.get(key)
        if not isinstance(value, str):
            continue
        kind, _, number = value.partition("_")
        try:
            start = float(number)
        except ValueError:
            start = None
        if kind != "lin" or start is None or start <= 0:
            raise ValueError(f"{key}={value!r}: expected a number or a linear schedule 'lin_<start>' "
                             f"(e.g. 'lin_5e-4': from 5e-4 down to 0 over the run).")
        out[key] = LinearSchedule(start, 0.0, 1.0)
    return out


def check_hyperparams(algo: str, hyperparams: dict[str, Any]) -> None:
    """A ValueError naming each unknown hyperparameter of ``algo`` with the closest match (and, for
    ``policy_kwargs``, each unknown policy keyword) or a malformed schedule string, before anything is built."""
    cls = algo_class(algo)
    accepted = init_keywords(cls)
    if accepted is not None:
        accepted = [k for k in accepted if k not in ("self", "policy", "env", "_init_setup_model")]
    check_keywords(hyperparams, accepted, f"make_agent({algo!r}) hyperparameters")
    resolve_schedules(hyperparams)  # a malformed schedule string
    user_policy_kwargs = hyperparams.get("policy_kwargs") or {}
    policy_cls = getattr(cls, "policy_aliases", {}).get(algorithm(algo).policy)
    policy_accepted = init_keywords(policy_cls) if policy_cls is not None else None
    if policy_accepted is not None:
        policy_accepted = [k for k in policy_accepted if k not in ("self", "observation_space", "action_space",
                                                                   "lr_schedule")]
        check_keywords(user_policy_kwargs, policy_accepted,
                       f"make_agent({algo!r}) policy_kwargs ({policy_cls.__name__})")


def make_agent(algo: str, env: VecEnv, backbone: str = DEFAULT_BACKBONE, features_dim: int = 256,
               backbone_kwargs: dict[str, Any] | None = None, tensorboard_log: str | None = None,
               seed: int | None = None, verbose: int = 0, device: str = "auto", memory_fraction: float = 0.8,
               pretrained: str | None = None, freeze_backbone: bool = False, encoder_sharing: str | None = None,
               **hyperparams: Any) -> BaseAlgorithm:
    """An SB3 or sb3-contrib ``algo`` (a key of ALGOS) on ``env`` with the rlvision ``backbone`` as encoder.

    :param backbone_kwargs: passed to the backbone builder (and ``pool``/``normalized_image`` to the extractor).
    :param memory_fraction: replay-buffer algorithms refuse (ReplayBufferTooLargeError) a buffer needing more than this
        fraction of available memory.
    :param pretrained: a timm MobileNetV4 checkpoint for an ``mnv4_*`` backbone (README: "Pretrained encoders");
        ``freeze_backbone=True`` keeps it frozen (see also ``rlvision.encode.VecEncode`` for PPO).
    :param encoder_sharing: SAC, TD3, TQC, CrossQ: "separate" (default: actor and critic encoders), "actor" (SB3's
        shared mode, trained by the actor loss) or "critic" (DrQ-v2: shared, trained by the critic loss;
        :mod:`rlvision.drq`).
    :param hyperparams: override DEFAULTS[algo]; ``policy_kwargs`` entries are merged over the encoder's;
        ``learning_rate``/``clip_range`` may be RL Zoo's ``"lin_<start>"`` (annealed to 0, :func:`resolve_schedules`).
    """
    algo = algo.lower() if isinstance(algo, str) else algo
    cls = algo_class(algo)
    check_int("features_dim", features_dim)
    check_range("memory_fraction", memory_fraction, 0.0, 1.0, low_open=True)
    check_hyperparams(algo, hyperparams)
    if algo in CONTINUOUS and not isinstance(env.action_space, spaces.Box):
        raise ValueError(f"{cls.__name__} needs a continuous (Box) action space, got {env.action_space}; use PPO, "
                         f"A2C or DQN, or a continuous env (e.g. SyntheticPixelContinuous-v0, CarRacing-v3).")
    if algo in DISCRETE and not isinstance(env.action_space, spaces.Discrete):
        raise ValueError(f"{cls.__name__} needs a Discrete action space, got {env.action_space}; use SAC/TD3/PPO "
                         f"instead.")
    if encoder_sharing is not None:
        check_encoder_sharing(algo, encoder_sharing)
    backbone_kwargs = dict(backbone_kwargs or {})
    if pretrained is not None:
        backbone_kwargs["pretrained"] = pretrained
    if freeze_backbone:
        backbone_kwargs["freeze_backbone"] = True
    params = resolve_schedules({**DEFAULTS[algo], **hyperparams})
    user_policy_kwargs = params.pop("policy_kwargs", None) or {}
    space = env.observation_space
    if isinstance(space, spaces.Box) and len(space.shape) == 1:  # features already (rlvision.encode.VecEncode)
        pk = {k: v for k, v in vision_policy_kwargs("nature_cnn", algo=algo).items()
              if k in ("optimizer_kwargs", "share_features_extractor")}
        pk.update(user_policy_kwargs)
        policy = "MlpLstmPolicy" if algorithm(algo).recurrent else "MlpPolicy"
        return cls(policy, env, policy_kwargs=pk, tensorboard_log=tensorboard_log, seed=seed, verbose=verbose,
                   device=device, **params)
    pk = vision_policy_kwargs(backbone, algo=algo, features_dim=features_dim, encoder_sharing=encoder_sharing,
                              observation_space=env.observation_space, **(backbone_kwargs or {}))
    if algorithm(algo).optimizer == "rmsprop":  # SB3's A2C: RL Zoo's TF-like RMSprop
        pk["optimizer_class"] = RMSpropTFLike
        pk["optimizer_kwargs"] = dict(eps=1e-5)
    pk.update(user_policy_kwargs)
    noise_std = algorithm(algo).action_noise_std  # RL Zoo's TD3 exploration noise
    if noise_std is not None and "action_noise" not in params:
        n = env.action_space.shape[0]
        params["action_noise"] = NormalActionNoise(np.zeros(n), noise_std * np.ones(n))
    if "buffer_size" in params:
        check_replay_buffer(algo, env, params, memory_fraction)
    policy = drqv2_policy(algo) if encoder_sharing == "critic" else policy_name(algo, env.observation_space)
    if tensorboard_log:
        os.makedirs(tensorboard_log, exist_ok=True)
    return cls(policy, env, policy_kwargs=pk, tensorboard_log=tensorboard_log, seed=seed, verbose=verbose,
                       device=device, **params)
