"""Procgen (Cobbe et al. 2020) through envpool's C++ batched env, as an SB3 VecEnv.

    env = make_env("procgen/starpilot", n_envs=64, env_kwargs=dict(num_levels=200))   # train levels [0, 200)
    test = make_env("procgen/starpilot", n_envs=64, env_kwargs=procgen_test_kwargs(dict(num_levels=200)))

Ids are ``procgen/<game>`` for the 16 games in :data:`GAMES`. ``env_kwargs``:

- ``distribution_mode``: ``"easy"`` (default, the paper's CPU-friendly setting) or ``"hard"``;
- ``num_levels``: how many distinct levels (0, the default: every level); ``start_level``: the first level seed;
  the levels played are ``start_level + k`` for ``k`` in ``[0, num_levels)``;
- anything else goes to ``envpool.make`` (e.g. ``num_threads``, ``use_sequential_levels``).

Frames are 64x64 RGB, channel-first uint8 ``(3, 64, 64)``; 15 discrete actions. Envs run in-process (envpool's own
threads, no subprocesses). envpool resets a finished env on the *next* step (and ignores that step's action); SB3
wants the reset in the same step, so :class:`EnvpoolSameStep` resets the finished envs at once by id and hands the
last frame over as ``final_obs``. :class:`rlvision.envs.vector.VectorEnvAdapter` then writes SB3's Monitor
conventions (``info["episode"]``, ``terminal_observation``, ``TimeLimit.truncated``).

Installation: envpool (``pip install 'rlvision[procgen]'``, which ``make setup`` does) needs the Qt5 runtime
(``libQt5Core.so.5``, ``libQt5Gui.so.5``). Either the system's (``apt-get install libqt5gui5``) or the
``PyQt5-Qt5`` wheel's, which rlvision loads itself before importing envpool, so no root is needed.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from .vector import VectorEnvAdapter

GAMES = ("bigfish", "bossfight", "caveflyer", "chaser", "climber", "coinrun", "dodgeball", "fruitbot", "heist",
         "jumper", "leaper", "maze", "miner", "ninja", "plunder", "starpilot")
DISTRIBUTION_MODES = ("easy", "hard")

# (R_min, R_max) per game and mode: Cobbe et al. 2020, "Leveraging Procedural Generation to Benchmark Reinforcement
# Learning", appendix table of normalization constants. Normalised return = (R - R_min) / (R_max - R_min).
RETURN_RANGES = {
    "easy": {"coinrun": (5, 10), "starpilot": (2.5, 64), "caveflyer": (3.5, 12), "dodgeball": (1.5, 19),
             "fruitbot": (-1.5, 32.4), "chaser": (0.5, 13), "miner": (1.5, 13), "jumper": (3, 10), "leaper": (3, 10),
             "maze": (5, 10), "bigfish": (1, 40), "heist": (3.5, 10), "climber": (2, 12.6), "plunder": (4.5, 30),
             "ninja": (3.5, 10), "bossfight": (0.5, 13)},
    "hard": {"coinrun": (5, 10), "starpilot": (1.5, 35), "caveflyer": (2, 13.4), "dodgeball": (1.5, 19),
             "fruitbot": (-0.5, 27.2), "chaser": (0.5, 14.2), "miner": (1.5, 20), "jumper": (1, 10),
             "leaper": (1.5, 10), "maze": (4, 10), "bigfish": (0, 40), "heist": (2, 10), "climber": (1, 12.6),
             "plunder": (3, 30), "ninja": (2, 10), "bossfight": (0.5, 13)},
}

INSTALL_HINT = ("Procgen needs envpool and the Qt5 runtime: pip install 'rlvision[procgen]' (envpool and the "
                "PyQt5-Qt5 wheel; `make setup` does it), or with root: apt-get install libqt5gui5.")


def procgen_game(env_id: str) -> str:
    """'procgen/starpilot' -> 'starpilot'; a ValueError naming the games for anything else."""
    game = env_id.removeprefix("procgen/")
    if not env_id.startswith("procgen/") or game not in GAMES:
        import difflib

        close = difflib.get_close_matches(game, GAMES, 1)
        hint = f" Did you mean 'procgen/{close[0]}'?" if close else ""
        raise ValueError(f"Unknown Procgen id {env_id!r}.{hint} The ids are procgen/<game> for the games "
                         f"{', '.join(GAMES)}.")
    return game


def normalized_return(game: str, episode_return: float | np.ndarray, distribution_mode: str = "easy"):
    """The paper's normalised return: ``(R - R_min) / (R_max - R_min)`` with its constants for the game and mode."""
    low, high = RETURN_RANGES[distribution_mode][game]
    return (np.asarray(episode_return, dtype=np.float64) - low) / (high - low)


def procgen_test_kwargs(train_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Env kwargs for evaluating on levels the training never saw: the levels after the training range
    (``start_level + num_levels`` on, a million of them). With ``num_levels=0`` (every level) there is no held-out
    set: a ValueError says so."""
    kwargs = dict(train_kwargs or {})
    num_levels = int(kwargs.get("num_levels", 0))
    if num_levels <= 0:
        raise ValueError("Training on every level (num_levels=0) leaves no unseen levels to test on; train on a "
                         "finite set, e.g. env_kwargs={'num_levels': 200} (the paper's protocol).")
    kwargs["start_level"] = int(kwargs.get("start_level", 0)) + num_levels
    kwargs["num_levels"] = 1_000_000
    return kwargs


def _preload_qt() -> None:
    """Without a system Qt5 (``ctypes.util.find_library`` finds no ``Qt5Gui``), load the PyQt5-Qt5 wheel's
    libQt5Core/libQt5Gui with RTLD_GLOBAL, so envpool's Procgen library resolves them from this process; envpool
    looks for them once, when ``envpool.procgen`` is first imported."""
    import ctypes.util

    if ctypes.util.find_library("Qt5Gui"):
        return
    spec = importlib.util.find_spec("PyQt5")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        libs = os.path.join(root, "Qt5", "lib")
        paths = [glob.glob(os.path.join(libs, f"libQt5{name}.so.5")) for name in ("Core", "Gui")]
        if all(paths):
            for found in paths:
                ctypes.CDLL(found[0], mode=ctypes.RTLD_GLOBAL)
            return


def import_envpool():
    """envpool with its Procgen library loaded, or an ImportError that names the packages and the command."""
    _preload_qt()
    try:
        import envpool
        import envpool.procgen.procgen_envpool  # noqa: F401  (the C++ library: fails without Qt5)
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    return envpool


class EnvpoolSameStep(VectorEnv):
    """envpool's Procgen env as a gymnasium VectorEnv that resets finished envs in the same step
    (``AutoresetMode.SAME_STEP``): their last frame goes to ``info["final_obs"]`` (mask ``info["_final_obs"]``), the
    returned frame starts the next episode.

    :param game: one of :data:`GAMES`.
    :param num_envs: parallel envs (envpool's batch).
    :param seed: env ``i`` is seeded ``seed + i`` (its level draws and its dynamics).
    :param distribution_mode: "easy" or "hard".
    :param num_levels: number of distinct levels (0: all); :param start_level: the first level seed.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, game: str, num_envs: int, seed: int = 0, distribution_mode: str = "easy", num_levels: int = 0,
                 start_level: int = 0, **envpool_kwargs: Any):
        if game not in GAMES:
            raise ValueError(f"game must be one of {GAMES}, got {game!r}.")
        if distribution_mode not in DISTRIBUTION_MODES:
            raise ValueError(f"distribution_mode must be one of {DISTRIBUTION_MODES}, got {distribution_mode!r}.")
        for name, value in (("num_levels", num_levels), ("start_level", start_level)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}.")
        self.game, self.distribution_mode = game, distribution_mode
        self.num_levels, self.start_level = int(num_levels), int(start_level)
        self._envpool_kwargs = envpool_kwargs
        self.num_envs = int(num_envs)
        self._pool = self._make(seed)
        space = self._pool.observation_space
        self.single_observation_space = gym.spaces.Box(0, 255, space.shape, np.uint8)
        self.single_action_space = gym.spaces.Discrete(int(self._pool.action_space.n))
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self._all = np.arange(self.num_envs, dtype=np.int32)

    def _make(self, seed: int):
        envpool = import_envpool()
        task = f"{self.game.capitalize()}{self.distribution_mode.capitalize()}-v0"
        return envpool.make(task, env_type="gymnasium", num_envs=self.num_envs, seed=int(seed),
                            num_levels=self.num_levels, start_level=self.start_level, **self._envpool_kwargs)

    def reset(self, *, seed: int | list | np.ndarray | None = None, options: dict | None = None):
        """Reset every env. A seed (an int, or SB3's per-env list whose first entry is the base) rebuilds the pool
        with that base seed: envpool seeds its envs once, when it is made."""
        if seed is not None:
            base = int(seed if np.isscalar(seed) else seed[0])
            self._pool.close()
            self._pool = self._make(base)
        obs, info = self._pool.reset()
        return obs, self._info(info)

    def step(self, actions):
        obs, reward, terminated, truncated, info = self._pool.step(np.asarray(actions), self._all)
        info = self._info(info)
        done = np.logical_or(terminated, truncated)
        if done.any():
            ids = np.flatnonzero(done).astype(np.int32)
            final_obs = obs
            first, reset_info = self._pool.reset(ids)
            order = np.asarray(reset_info["env_id"])
            obs = obs.copy()
            obs[order] = first
            info["final_obs"], info["_final_obs"] = final_obs, done
            # the reset's info describes the new level and how the last one ended
            for key, value in self._info(reset_info).items():
                info[key] = np.array(info[key], copy=True)
                info[key][order] = value
            info["is_success"] = info["prev_level_complete"].astype(bool)
            info["_is_success"] = done
        return obs, reward, terminated, truncated, info

    @staticmethod
    def _info(info: dict) -> dict:
        """envpool's info without its bookkeeping: ``level_seed`` (the level being played), ``prev_level_seed``,
        ``prev_level_complete`` (1 when the last level was completed)."""
        return {k: np.asarray(v) for k, v in info.items() if k in ("level_seed", "prev_level_seed",
                                                                    "prev_level_complete")}

    def close_extras(self, **kwargs) -> None:
        self._pool.close()


def make_procgen(env_id: str, n_envs: int, seed: int | None = 0, env_kwargs: dict[str, Any] | None = None
                 ) -> VectorEnvAdapter:
    """``procgen/<game>`` as an SB3 VecEnv (:class:`EnvpoolSameStep` behind :class:`VectorEnvAdapter`)."""
    game = procgen_game(env_id)
    seed = int(np.random.randint(2**31 - 1)) if seed is None else int(seed)
    env = VectorEnvAdapter(EnvpoolSameStep(game, n_envs, seed=seed, **dict(env_kwargs or {})))
    env.procgen_game = game
    return env
