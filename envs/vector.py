"""Any gymnasium ``VectorEnv`` behind SB3's ``VecEnv`` interface, and ale-py's C++ Atari vector env built on it.

SB3 expects from a VecEnv what DummyVecEnv + Monitor give it: a done env is reset in the same step (the returned
observation starts the next episode, the last one is in ``info["terminal_observation"]``), ``info["episode"]`` holds
the true return and length when an episode ends, and ``info["TimeLimit.truncated"]`` tells a time limit from a
terminal state. :class:`VectorEnvAdapter` makes that out of a gymnasium vector env running in
``AutoresetMode.SAME_STEP`` (gymnasium's Sync/AsyncVectorEnv and ale-py's AtariVectorEnv take it), with all array
work batched; only SB3's list of per-env info dicts is built in Python.

Atari semantics that SB3's AtariWrapper puts in wrappers live here as two options, so the returns SB3 logs are the
game's own: ``clip_reward`` (the agent learns from sign(reward), ``info["episode"]["r"]`` sums the raw rewards) and
``terminal_on_life_loss`` (a lost life ends the agent's episode, the game goes on; ``info["episode"]`` is written
only at game over, as Monitor below AtariWrapper does).
"""

from __future__ import annotations

import time
from typing import Any
from collections.abc import Iterable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices

_SKIPPED_INFO_KEYS = {"final_obs", "final_info", "_final_obs", "_final_info"}


def unbatch_info(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Gymnasium's batched info (``info[k][i]``, present where the mask ``info["_k"][i]`` is true, if there is one)
    -> SB3's list of ``n`` per-env dicts. Nested dicts are unbatched the same way."""
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in info.items():
        if key in _SKIPPED_INFO_KEYS or key.startswith("_"):
            continue
        mask = info.get("_" + key)
        per_env = unbatch_info(value, n) if isinstance(value, dict) else value
        for i in range(n):
            if mask is None or mask[i]:
                out[i][key] = per_env[i]
    return out


class VectorEnvAdapter(VecEnv):
    """An SB3 VecEnv over a gymnasium ``VectorEnv`` created with ``autoreset_mode=AutoresetMode.SAME_STEP``.

    :param env: the vector env (num_envs copies; batched observation space (n, ...)).
    :param clip_reward: return sign(reward) to the agent; episode statistics keep the raw rewards.
    :param terminal_on_life_loss: report ``done`` when ``info["lives"]`` drops (the env must report lives); the game
        continues from the current frame, which is both the terminal observation and the next first one.
    :param frames_per_step: unit of ``info["episode"]["l"]``: 4 for a frame-skipping Atari env counts frames, as
        SB3's Monitor (which sits below AtariWrapper's frame skip) does.
    """

    def __init__(self, env: VectorEnv, clip_reward: bool = False, terminal_on_life_loss: bool = False,
                 frames_per_step: int = 1):
        mode = env.metadata.get("autoreset_mode", getattr(env, "autoreset_mode", None))
        if mode is not None and AutoresetMode(mode) != AutoresetMode.SAME_STEP:
            raise ValueError(f"VectorEnvAdapter needs a vector env that resets in the same step (SB3's convention); "
                             f"got autoreset_mode={AutoresetMode(mode)}. Create it with "
                             f"autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP.")
        self.env = env
        self.clip_reward = clip_reward
        self.terminal_on_life_loss = terminal_on_life_loss
        self.frames_per_step = frames_per_step
        n = env.num_envs
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(n, dtype=np.float64)
        self._lengths = np.zeros(n, dtype=np.int64)
        self._starts = np.full(n, time.time())
        self._lives: np.ndarray | None = None
        self._t0 = time.time()
        super().__init__(n, env.single_observation_space, env.single_action_space)

    # --- SB3 VecEnv API -------------------------------------------------------------------------------------------
    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        """Seeds env i with ``seed + i`` at the next reset (SB3's rule), and the action space with ``seed``."""
        seeds = super().seed(seed)
        self.action_space.seed(seeds[0])
        return seeds

    def reset(self):
        seeds = None
        if any(s is not None for s in self._seeds):
            seeds = [int(s) if s is not None else int(np.random.randint(2**31 - 1)) for s in self._seeds]
            if "ale_py" in type(self.env).__module__:  # ale-py takes an array, gymnasium a list
                seeds = np.array(seeds, dtype=np.int64)
        options = self._options[0] if self._options and self._options[0] else None
        obs, info = self.env.reset(seed=seeds, options=options)
        self._reset_seeds()
        self._reset_options()
        self._returns[:] = 0
        self._lengths[:] = 0
        self._starts[:] = time.time()
        self._lives = np.asarray(info["lives"]).copy() if "lives" in info else None
        self.reset_infos = unbatch_info(info, self.num_envs)
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.env.step(self._actions)
        rewards = np.asarray(rewards, dtype=np.float64)
        game_over = np.logical_or(terminated, truncated)
        self._returns += rewards
        self._lengths += 1
        infos = unbatch_info(info, self.num_envs)
        dones = game_over.copy()
        life_lost = np.zeros_like(dones)
        if self.terminal_on_life_loss:
            if "lives" not in info:
                raise ValueError("terminal_on_life_loss needs an env that reports info['lives'].")
            lives = np.asarray(info["lives"])
            if self._lives is not None:
                life_lost = (lives < self._lives) & ~game_over
                dones |= life_lost
            self._lives = lives.copy()
        if dones.any():
            final_obs = info.get("final_obs")
            final_info = info.get("final_info")  # gymnasium: the last step's info of envs that ended (is_success)
            final_infos = unbatch_info(final_info, self.num_envs) if isinstance(final_info, dict) else None
            now = time.time()
            for i in np.flatnonzero(dones):
                if game_over[i]:
                    infos[i]["terminal_observation"] = final_obs[i]
                    infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                    infos[i]["episode"] = {"r": float(self._returns[i]),
                                           "l": int(self._lengths[i]) * self.frames_per_step,
                                           "t": round(now - self._t0, 6)}
                    if final_infos is not None:
                        infos[i].update({k: v for k, v in final_infos[i].items() if k not in infos[i]})
                    self._returns[i] = 0.0
                    self._lengths[i] = 0
                else:  # a life lost: the game goes on from this frame
                    infos[i]["terminal_observation"] = obs[i]
                    infos[i]["TimeLimit.truncated"] = False
        agent_rewards = np.sign(rewards) if self.clip_reward else rewards
        return obs, agent_rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self.env, attr_name)  # AttributeError if absent, as SB3 expects
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        result = getattr(self.env, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """True for Monitor (this adapter writes Monitor's ``info["episode"]``), False for anything else."""
        return [issubclass(wrapper_class, Monitor) for _ in self._get_indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.env.render() if getattr(self.env, "render_mode", None) == "rgb_array" else None
        return list(frames) if frames is not None else [None] * self.num_envs

    def _get_indices(self, indices: VecEnvIndices) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else indices


# --- ale-py's C++ vector env ---------------------------------------------------------------------------------------

def atari_game(env_id: str) -> str:
    """'ALE/Pong-v5' / 'PongNoFrameskip-v4' / 'ALE/MontezumaRevenge-v5' -> 'pong' / 'montezuma_revenge'."""
    name = env_id.removeprefix("ALE/").split("-")[0].removesuffix("NoFrameskip")
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


def make_native_atari(env_id: str, n_envs: int, frame_stack: int = 4, env_kwargs: dict[str, Any] | None = None,
                      terminal_on_life_loss: bool = True, clip_reward: bool = True) -> VectorEnvAdapter:
    """``n_envs`` copies of an Atari game in ale-py's ``AtariVectorEnv`` (C++ threads), with SB3's AtariWrapper
    semantics: noop reset (up to 30), frame skip 4 with max-pooling of the last two frames, 84x84 greyscale, FIRE on
    reset where the game needs it, a ``frame_stack`` stack, and (in the adapter) reward clipping and a terminal
    signal on life loss for training. Sticky actions follow the id: 0.25 for ``ALE/*-v5``, 0 for
    ``*NoFrameskip-v4`` (``env_kwargs={"repeat_action_probability": p}`` overrides). Episodes are truncated at
    108,000 frames (v5) or 400,000 (v4), as gymnasium registers them. Observations: (n, frame_stack, 84, 84) uint8.

    One difference from the Python wrappers: after a lost life the game goes on from the current frame (no extra
    no-op step, and FIRE only at a true reset).
    """
    from ale_py.vector_env import AtariVectorEnv

    kwargs = dict(env_kwargs or {})
    v5 = env_id.startswith("ALE/")
    kwargs.setdefault("repeat_action_probability", 0.25 if v5 else 0.0)
    kwargs.setdefault("max_num_frames_per_episode", 108_000 if v5 else 400_000)
    kwargs.pop("frameskip", None)  # the vector env skips 4 frames itself
    env = AtariVectorEnv(game=atari_game(env_id), num_envs=n_envs, stack_num=frame_stack, frameskip=4,
                         noop_max=30, maxpool=True, grayscale=True, img_height=84, img_width=84,
                         use_fire_reset=True, episodic_life=False, reward_clipping=False,
                         autoreset_mode=AutoresetMode.SAME_STEP, **kwargs)
    return VectorEnvAdapter(env, clip_reward=clip_reward, terminal_on_life_loss=terminal_on_life_loss,
                            frames_per_step=4)
