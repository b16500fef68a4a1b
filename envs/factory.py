"""``make_env``: one call for every image env rlvision supports, with the usual wrappers.

- ALE Atari (``ALE/Pong-v5``, ``PongNoFrameskip-v4``): SB3's AtariWrapper (84x84 grey, frame skip 4, ...) and a
  4-frame stack. ``ALE/*-v5`` already skips frames inside ALE, so it is made with ``frameskip=1`` here.
- MiniGrid (``MiniGrid-*``): RGB partial observations (``RGBImgPartialObsWrapper``), image only.
- CarRacing (``CarRacing-v3``): 96x96 RGB; optional frame stack.
- The synthetic pixel env (``SyntheticPixel-v0``, ``SyntheticPixelContinuous-v0``).

Every env comes back as a VecEnv with channel-first uint8 observations (C, H, W) and a Monitor on each copy. Ids are
passed to gymnasium as ``module:EnvId`` (``ale_py:ALE/Pong-v5``, ...) so SubprocVecEnv workers register them too.
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import (DummyVecEnv, SubprocVecEnv, VecEnv, VecFrameStack, VecTransposeImage,
                                              is_vecenv_wrapped)

from .wrappers import VecLowRes


def env_family(env_id: str) -> str:
    """'atari', 'minigrid', 'carracing', 'synthetic' or 'gym' (any other registered id)."""
    if env_id.startswith("ALE/") or env_id.endswith("NoFrameskip-v4"):
        return "atari"
    if env_id.startswith("MiniGrid-") or env_id.startswith("BabyAI-"):
        return "minigrid"
    if env_id.startswith("CarRacing"):
        return "carracing"
    if env_id.startswith("SyntheticPixel"):
        return "synthetic"
    return "gym"


def _minigrid_wrapper(tile_size: int) -> Callable[[gym.Env], gym.Env]:
    from minigrid.wrappers import ImgObsWrapper, RGBImgPartialObsWrapper

    def wrap(env: gym.Env) -> gym.Env:
        return ImgObsWrapper(RGBImgPartialObsWrapper(env, tile_size=tile_size))

    return wrap


def make_env(env_id: str, n_envs: int = 1, seed: int | None = 0, frame_stack: int | None = None,
             env_kwargs: dict[str, Any] | None = None, vec_env_cls: type[VecEnv] | str | None = None,
             minigrid_tile_size: int = 8, low_res: int | None = None, low_res_interpolation: str = "area") -> VecEnv:
    """Build ``n_envs`` copies of ``env_id`` as one SB3 VecEnv with channel-first uint8 image observations.

    :param frame_stack: frames to stack along channels; default 4 for Atari, none otherwise.
    :param vec_env_cls: DummyVecEnv (default: on 2 cores SubprocVecEnv gains nothing and is slow to start),
        SubprocVecEnv, or "dummy"/"subproc".
    :param minigrid_tile_size: pixels per MiniGrid cell (8 gives 56x56 partial views).
    :param low_res: shrink observations by this factor (2 or 4) with ``low_res_interpolation``
        ("area", "bilinear", "bicubic", "nearest"), e.g. to pair with a super-resolution stage in the extractor.
    """
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}.")
    if isinstance(vec_env_cls, str):
        table = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv}
        if vec_env_cls not in table:
            raise ValueError(f"vec_env_cls must be one of {list(table)}, got {vec_env_cls!r}.")
        vec_env_cls = table[vec_env_cls]
    vec_env_cls = vec_env_cls or DummyVecEnv
    env_kwargs = dict(env_kwargs or {})
    family = env_family(env_id)

    if family == "atari":
        import ale_py
        from stable_baselines3.common.env_util import make_atari_env

        gym.register_envs(ale_py)
        if env_id.startswith("ALE/"):
            env_kwargs.setdefault("frameskip", 1)  # AtariWrapper skips 4; ALE v5 would skip 4 more
            env_kwargs.setdefault("repeat_action_probability", 0.0)
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
        env = make_vec_env(gym_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs, wrapper_class=wrapper,
                           vec_env_cls=vec_env_cls)
    if frame_stack and frame_stack > 1:
        env = VecFrameStack(env, frame_stack, channels_order="last")
    shape = env.observation_space.shape
    if shape is None or len(shape) != 3:
        raise ValueError(f"{env_id} does not give image observations (observation space {env.observation_space}).")
    if not is_vecenv_wrapped(env, VecTransposeImage):
        env = VecTransposeImage(env)
    if low_res and low_res > 1:
        env = VecLowRes(env, low_res, low_res_interpolation)
    return env
