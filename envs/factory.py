"""``make_env``: one call for every image env rlvision supports, with the usual wrappers.

- ALE Atari (``ALE/Pong-v5``, ``PongNoFrameskip-v4``): by default ale-py's C++ ``AtariVectorEnv`` behind SB3's VecEnv
  (``backend="native"``, :func:`rlvision.envs.vector.make_native_atari`: 2x the Python path's steps/s on 2 cores, 8x
  on 16); ``backend="python"``: SB3's AtariWrapper (84x84 grey, frame skip 4, ...) and a 4-frame stack, where
  ``ALE/*-v5``, which already skips frames inside ALE, is made with ``frameskip=1``. Both give the same observations
  and training semantics (noop reset, max-pooled frame skip, life loss = done, clipped rewards, true returns in
  ``info["episode"]``); sticky actions follow the id (0.25 for v5, 0 for v4) in both.
- MiniGrid (``MiniGrid-*``): RGB partial observations (``RGBImgPartialObsWrapper``), image only.
- CarRacing (``CarRacing-v3``): 96x96 RGB; optional frame stack.
- The synthetic pixel env (``SyntheticPixel-v0``, ``SyntheticPixelContinuous-v0``).
- Procgen (``procgen/<game>``, 16 games): envpool's C++ batched env in-process (:mod:`rlvision.envs.procgen`), 64x64
  RGB; ``env_kwargs`` ``distribution_mode``, ``num_levels``, ``start_level``.

Any other family can also run in gymnasium's own vector envs (``vec_env_cls="gym_sync"`` or ``"gym_async"``) behind
the same adapter (:class:`rlvision.envs.vector.VectorEnvAdapter`).

Every env comes back as a VecEnv with channel-first uint8 observations (C, H, W) and a Monitor on each copy. Ids are
passed to gymnasium as ``module:EnvId`` (``ale_py:ALE/Pong-v5``, ...) so SubprocVecEnv workers register them too.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

import gymnasium as gym
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.preprocessing import is_image_space_channels_first
from stable_baselines3.common.vec_env import (DummyVecEnv, SubprocVecEnv, VecEnv, VecFrameStack, VecTransposeImage,
                                              is_vecenv_wrapped)

from rlvision.checks import check_int

from .vector import VectorEnvAdapter, make_native_atari
from .wrappers import VecLowRes

BACKENDS = ("native", "python")
VEC_ENV_CLASSES = ("dummy", "subproc", "gym_sync", "gym_async")


def env_family(env_id: str) -> str:
    """'atari', 'minigrid', 'carracing', 'synthetic', 'procgen' or 'gym' (any other registered id)."""
    if env_id.startswith("procgen/"):
        return "procgen"
    if env_id.startswith("ALE/") or env_id.endswith("NoFrameskip-v4"):
        return "atari"
    if env_id.startswith("MiniGrid-") or env_id.startswith("BabyAI-"):
        return "minigrid"
    if env_id.startswith("CarRacing"):
        return "carracing"
    if env_id.startswith("SyntheticPixel"):
        return "synthetic"
    return "gym"


# the package that registers each family's ids with gymnasium, and the extra that installs it
_FAMILY_PACKAGES = {"atari": ("ale_py", "atari"), "minigrid": ("minigrid", "minigrid"), "carracing": ("Box2D", "box2d")}


def check_env_id(env_id: str) -> None:
    """A ValueError naming the problem and the fix unless ``env_id`` is an id ``make_env`` can build: checked
    without building the env (the family's package is imported, which registers its ids), so entry points can refuse
    a typo before creating anything."""
    import difflib
    import importlib

    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env_id must be a registered gymnasium id (e.g. 'ALE/Pong-v5'), got {env_id!r}.")
    family = env_family(env_id)
    if family == "procgen":
        from .procgen import procgen_game

        procgen_game(env_id)  # the name only: envpool is imported when the env is made
        return
    if family == "synthetic":
        from .synthetic import SyntheticPixelEnv  # noqa: F401  (importing it registers the synthetic ids)
    elif family in _FAMILY_PACKAGES:
        package, extra = _FAMILY_PACKAGES[family]
        try:
            module = importlib.import_module(package)
        except ImportError as error:
            raise ValueError(f"{env_id!r} needs {package}: pip install 'rlvision[{extra}]'.") from error
        if family == "atari":
            gym.register_envs(module)
    module, _, name = env_id.rpartition(":")  # gymnasium's "package:EnvId" form imports the package first
    if module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"Env id {env_id!r}: cannot import {module!r} ({error}).") from error
    known = set(gym.registry)
    if name not in known:
        close = difflib.get_close_matches(env_id, known, n=3, cutoff=0.75)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown env id {env_id!r}.{hint} make_env takes any registered gymnasium id with image "
                         f"observations: ALE/*-v5 (rlvision[atari]), MiniGrid-* (rlvision[minigrid]), CarRacing-v3, "
                         f"SyntheticPixel-v0, SyntheticPixelContinuous-v0, procgen/<game> (rlvision[procgen]).")


def return_normalizer(env_id: str, env_kwargs: dict[str, Any] | None = None) -> Callable[[float], float] | None:
    """The family's published return normalisation for ``env_id``, as a function of a return, or None where the
    family has none (Procgen: the paper's per-game ``(R - R_min) / (R_max - R_min)`` for the distribution mode)."""
    if env_family(env_id) == "procgen":
        from .procgen import normalized_return, procgen_game

        game, mode = procgen_game(env_id), (env_kwargs or {}).get("distribution_mode", "easy")
        return lambda value: float(normalized_return(game, value, mode))
    return None


def _minigrid_wrapper(tile_size: int) -> Callable[[gym.Env], gym.Env]:
    from minigrid.wrappers import ImgObsWrapper, RGBImgPartialObsWrapper

    def wrap(env: gym.Env) -> gym.Env:
        return ImgObsWrapper(RGBImgPartialObsWrapper(env, tile_size=tile_size))

    return wrap


def _gym_vector_env(gym_id: str, n_envs: int, env_kwargs: dict[str, Any], wrapper, asynchronous: bool) -> VecEnv:
    """gymnasium's Sync/AsyncVectorEnv (same-step autoreset) behind SB3's VecEnv."""

    def make_one() -> gym.Env:
        env = gym.make(gym_id, **env_kwargs)
        return wrapper(env) if wrapper is not None else env

    cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    return VectorEnvAdapter(cls([make_one] * n_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP))


def make_env(env_id: str, n_envs: int = 1, seed: int | None = 0, frame_stack: int | None = None,
             env_kwargs: dict[str, Any] | None = None, vec_env_cls: type[VecEnv] | str | None = None,
             minigrid_tile_size: int = 8, low_res: int | None = None, low_res_interpolation: str = "area",
             backend: str = "native") -> VecEnv:
    """Build ``n_envs`` copies of ``env_id`` as one SB3 VecEnv with channel-first uint8 image observations.

    :param frame_stack: frames to stack along channels; default 4 for Atari, none otherwise.
    :param vec_env_cls: DummyVecEnv (default: on 2 cores SubprocVecEnv gains nothing and is slow to start),
        SubprocVecEnv, "dummy"/"subproc", or gymnasium's vector envs "gym_sync"/"gym_async" (not for Atari, whose
        native backend is already a vector env; pass ``backend="python"`` to pick a VecEnv class there).
    :param backend: Atari only: "native" (ale-py's C++ vector env, default) or "python" (SB3's wrappers).
    :param minigrid_tile_size: pixels per MiniGrid cell (8 gives 56x56 partial views).
    :param low_res: shrink observations by this factor (2 or 4) with ``low_res_interpolation``
        ("area", "bilinear", "bicubic", "nearest"), e.g. to pair with a super-resolution stage in the extractor.
    """
    check_env_id(env_id)
    check_int("n_envs", n_envs)
    check_int("frame_stack", frame_stack, minimum=0, allow_none=True)
    check_int("low_res", low_res, allow_none=True)
    check_int("minigrid_tile_size", minigrid_tile_size)
    if env_kwargs is not None and not isinstance(env_kwargs, dict):
        raise ValueError(f"env_kwargs must be a dict of keyword arguments for the env, got {env_kwargs!r}.")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if isinstance(vec_env_cls, str) and vec_env_cls not in VEC_ENV_CLASSES:
        raise ValueError(f"vec_env_cls must be a VecEnv class or one of {VEC_ENV_CLASSES}, got {vec_env_cls!r}.")
    gym_vector = vec_env_cls if vec_env_cls in ("gym_sync", "gym_async") else None
    if isinstance(vec_env_cls, str) and gym_vector is None:
        vec_env_cls = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}[vec_env_cls]
    vec_env_cls = vec_env_cls or DummyVecEnv
    env_kwargs = dict(env_kwargs or {})
    family = env_family(env_id)
    if family == "atari" and backend == "native" and (gym_vector or vec_env_cls is not DummyVecEnv):
        raise ValueError(f"vec_env_cls={vec_env_cls!r} applies to backend='python'; the native Atari backend is "
                         f"ale-py's own vector env (threads set with env_kwargs={{'num_threads': k}}).")

    if family == "procgen" and (gym_vector or vec_env_cls is not DummyVecEnv):
        raise ValueError(f"vec_env_cls={vec_env_cls!r} does not apply to Procgen: it runs in envpool's own batched "
                         f"env (threads set with env_kwargs={{'num_threads': k}}).")

    if family == "procgen":
        from .procgen import make_procgen

        env = make_procgen(env_id, n_envs, seed=seed, env_kwargs=env_kwargs)
    elif family == "atari" and backend == "native":
        import ale_py  # noqa: F401

        frame_stack = 4 if frame_stack is None else frame_stack
        env = make_native_atari(env_id, n_envs, frame_stack=max(frame_stack, 1), env_kwargs=env_kwargs)
        env.seed(seed)
        frame_stack = None  # stacked by the vector env
    elif family == "atari":
        import ale_py
        from stable_baselines3.common.env_util import make_atari_env

        gym.register_envs(ale_py)
        if env_id.startswith("ALE/"):
            env_kwargs.setdefault("frameskip", 1)  # AtariWrapper skips 4; ALE v5 would skip 4 more
            env_kwargs.setdefault("repeat_action_probability", 0.25)  # v5's sticky actions, as the native backend
        env = make_atari_env(f"ale_py:{env_id}", n_envs=n_envs, seed=seed, env_kwargs=env_kwargs,
                             vec_env_cls=vec_env_cls)
        frame_stack = 4 if frame_stack is None else frame_stack
    else:
        wrapper, gym_id = None, env_id
        if family == "minigrid":
            import minigrid  # noqa: F401  (registers the MiniGrid ids)

            wrapper, gym_id = _minigrid_wrapper(minigrid_tile_size), f"minigrid:{env_id}"
        elif family == "carracing":
            env_kwargs.setdefault("continuous", True)
        elif family == "synthetic":
            gym_id = f"{__package__}.synthetic:{env_id}"
        if gym_vector:
            env = _gym_vector_env(gym_id, n_envs, env_kwargs, wrapper, asynchronous=gym_vector == "gym_async")
            env.seed(seed)
        else:
            env = make_vec_env(gym_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs, wrapper_class=wrapper,
                               vec_env_cls=vec_env_cls)
    if frame_stack and frame_stack > 1:
        env = VecFrameStack(env, frame_stack, channels_order="last")
    shape = env.observation_space.shape
    if shape is None or len(shape) != 3:
        raise ValueError(f"{env_id} does not give image observations (observation space {env.observation_space}).")
    if not is_vecenv_wrapped(env, VecTransposeImage) and not is_image_space_channels_first(env.observation_space):
        env = VecTransposeImage(env)
    if low_res and low_res > 1:
        env = VecLowRes(env, low_res, low_res_interpolation)
    return env
