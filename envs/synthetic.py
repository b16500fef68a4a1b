"""A fast synthetic pixel environment (numpy only): move a green square onto a red one.

The world is a ``grid`` x ``grid`` board drawn at ``size`` x ``size`` pixels. Discrete variant: 4 actions (up, down,
left, right) move one cell. Continuous variant: a 2-D action in [-1, 1] moves up to one cell along each axis.
Reward: +1 when the agent reaches the goal (episode ends, ``info["is_success"] = True``), plus a small shaping term
``shaping * (d_before - d_after)`` of the distance in cells, minus ``step_cost`` per step. Episodes are truncated
after ``max_steps`` (default ``3 * grid``). The task needs spatial information, so it tells a position-blind encoder
from a working one, yet PPO with a small CNN solves it in a few tens of thousands of steps.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

_MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.float64)  # up, down, left, right (row, col)


class SyntheticPixelEnv(gym.Env):
    """Channel-last uint8 observations (size, size, channels); channels 1 (grey levels) or 3 (colours)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(self, size: int = 64, grid: int = 5, continuous: bool = False, channels: int = 3,
                 max_steps: int | None = None, shaping: float = 0.1, step_cost: float = 0.01,
                 render_mode: str | None = None):
        if grid < 2 or size < grid:
            raise ValueError(f"need grid >= 2 and size >= grid, got size={size}, grid={grid}.")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}.")
        self.size, self.grid, self.continuous, self.channels = size, grid, continuous, channels
        self.max_steps = max_steps or 3 * grid
        self.shaping, self.step_cost, self.render_mode = shaping, step_cost, render_mode
        self.observation_space = spaces.Box(0, 255, (size, size, channels), dtype=np.uint8)
        self.action_space = (spaces.Box(-1.0, 1.0, (2,), dtype=np.float32) if continuous else spaces.Discrete(4))
        self._edges = np.linspace(0, size, grid + 1).round().astype(int)  # pixel edges of the cells
        self._obs = np.zeros(self.observation_space.shape, dtype=np.uint8)
        self._agent = np.zeros(2)
        self._goal = np.zeros(2)
        self._steps = 0

    def _distance(self) -> float:
        return float(np.abs(self._agent - self._goal).sum())

    def _reached(self) -> bool:
        return bool(np.all(np.abs(self._agent - self._goal) < 0.5))

    def _paint(self, cell: np.ndarray, colour: tuple[int, int, int]) -> None:
        r, c = np.clip(np.rint(cell).astype(int), 0, self.grid - 1)
        block = self._obs[self._edges[r]:self._edges[r + 1], self._edges[c]:self._edges[c + 1]]
        block[...] = colour if self.channels == 3 else max(colour)

    def _render_obs(self) -> np.ndarray:
        self._obs.fill(0)
        self._paint(self._goal, (255, 0, 0) if self.channels == 3 else (255, 255, 255))
        self._paint(self._agent, (0, 255, 0) if self.channels == 3 else (128, 128, 128))
        return self._obs.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        cells = self.np_random.choice(self.grid * self.grid, size=2, replace=False)
        self._agent = np.array(divmod(int(cells[0]), self.grid), dtype=np.float64)
        self._goal = np.array(divmod(int(cells[1]), self.grid), dtype=np.float64)
        self._steps = 0
        return self._render_obs(), {}

    def step(self, action):
        before = self._distance()
        if self.continuous:
            move = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        else:
            move = _MOVES[int(action)]
        self._agent = np.clip(self._agent + move, 0, self.grid - 1)
        self._steps += 1
        success = self._reached()
        reward = self.shaping * (before - self._distance()) - self.step_cost + (1.0 if success else 0.0)
        truncated = not success and self._steps >= self.max_steps
        return self._render_obs(), float(reward), success, truncated, {"is_success": success}

    def action_masks(self) -> np.ndarray:
        """(4,) bool: the moves that stay on the board (discrete variant), for sb3-contrib's MaskablePPO, which
        calls it through the VecEnv (``env_method("action_masks")``); a move into the edge is masked."""
        if self.continuous:
            raise AttributeError("the continuous variant has no discrete actions to mask")
        target = self._agent + _MOVES
        return np.all((target >= 0) & (target <= self.grid - 1), axis=1)

    def render(self):
        obs = self._render_obs()
        return obs if self.channels == 3 else np.repeat(obs, 3, axis=2)


gym.register("SyntheticPixel-v0", entry_point=SyntheticPixelEnv)
gym.register("SyntheticPixelContinuous-v0", entry_point=SyntheticPixelEnv, kwargs={"continuous": True})
