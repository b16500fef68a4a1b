"""Evaluation of an agent: mean return and success rate over whole episodes, once or periodically in training."""

from __future__ import annotations

import time
from typing import Any
from collections.abc import Callable

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv


def evaluate_agent(model: BaseAlgorithm, env: VecEnv, n_episodes: int = 20,
                   deterministic: bool = True) -> dict[str, Any]:
    """Run ``n_episodes`` episodes; returns mean/std return, mean length, success rate (from ``info["is_success"]``
    where the env reports it, else None) and ``deterministic``. Deterministic actions by default, as SB3's
    ``evaluate_policy``: the same model and env seed give the same result."""
    successes: list[bool] = []

    def record(local: dict[str, Any], _: dict[str, Any]) -> None:
        if local["done"] and "is_success" in local["info"]:
            successes.append(bool(local["info"]["is_success"]))

    returns, lengths = evaluate_policy(model, env, n_eval_episodes=n_episodes, deterministic=deterministic,
                                       return_episode_rewards=True, callback=record, warn=False)
    return dict(mean_return=float(np.mean(returns)), std_return=float(np.std(returns)),
                mean_length=float(np.mean(lengths)), episodes=len(returns),
                success_rate=float(np.mean(successes)) if successes else None, deterministic=deterministic)


class PeriodicEvaluation(BaseCallback):
    """Evaluate every ``every`` env steps (and at the start and end of training) on a separate env: a learning curve.

    Each point is a dict ``steps``, ``seconds`` (training wall-clock so far, evaluation time excluded: the x-axis of
    "return per unit of compute"), ``eval_return``, ``eval_return_std``, ``success_rate``; points go to
    ``self.curve``, to SB3's logger (``eval/mean_return``, ...: TensorBoard) and to ``on_point`` (e.g. Ray Tune's
    ``report``). With a ``test_env`` (e.g. Procgen's unseen levels) each point also has ``test_return``,
    ``test_return_std`` and ``test_success_rate`` from as many episodes there (``eval/test_mean_return``).
    """

    def __init__(self, eval_env: VecEnv, every: int, n_episodes: int = 10, deterministic: bool = False,
                 on_point: Callable[[dict[str, Any]], None] | None = None, test_env: VecEnv | None = None):
        super().__init__()
        self.test_env = test_env
        if every < 1 or n_episodes < 1:
            raise ValueError(f"every and n_episodes must be >= 1, got every={every}, n_episodes={n_episodes}.")
        self.eval_env, self.every, self.n_episodes, self.deterministic = eval_env, every, n_episodes, deterministic
        self.on_point = on_point
        self.curve: list[dict[str, Any]] = []
        self._next = 0
        self._start = 0.0
        self._eval_seconds = 0.0
        self._seconds_before = 0.0

    def train_seconds(self) -> float:
        """Training wall-clock so far (evaluation excluded; a resumed run's earlier segments included)."""
        return self._seconds_before + time.perf_counter() - self._start - self._eval_seconds

    def restore(self, curve: list[dict[str, Any]], train_seconds: float) -> None:
        """Go on from a checkpoint: the curve up to it and the training seconds it had; the next point is the next
        multiple of ``every`` (no extra point where training resumes)."""
        self.curve = [dict(point) for point in curve]
        self._seconds_before = float(train_seconds)

    def _evaluate(self) -> None:
        seconds = self.train_seconds()
        start = time.perf_counter()
        result = evaluate_agent(self.model, self.eval_env, self.n_episodes, self.deterministic)
        test = (evaluate_agent(self.model, self.test_env, self.n_episodes, self.deterministic)
                if self.test_env is not None else None)
        self._eval_seconds += time.perf_counter() - start
        point = dict(steps=int(self.num_timesteps), seconds=round(seconds, 3), eval_return=result["mean_return"],
                     eval_return_std=result["std_return"], success_rate=result["success_rate"])
        if test is not None:
            point.update(test_return=test["mean_return"], test_return_std=test["std_return"],
                         test_success_rate=test["success_rate"])
            self.logger.record("eval/test_mean_return", test["mean_return"])
        self.curve.append(point)
        self.logger.record("eval/mean_return", point["eval_return"])
        if point["success_rate"] is not None:
            self.logger.record("eval/success_rate", point["success_rate"])
        self.logger.record("eval/train_seconds", seconds)
        self.logger.dump(self.num_timesteps)
        self._next = (self.num_timesteps // self.every + 1) * self.every
        if self.on_point is not None:
            self.on_point(point)

    def _on_training_start(self) -> None:
        self._start, self._eval_seconds = time.perf_counter(), 0.0
        if self.curve:  # restored: the points up to the checkpoint are there
            self._next = (self.num_timesteps // self.every + 1) * self.every
        else:
            self._evaluate()

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._evaluate()
        return True

    def _on_training_end(self) -> None:
        if not self.curve or self.curve[-1]["steps"] != self.num_timesteps:
            self._evaluate()
