"""Evaluation of a trained agent: mean return and success rate over whole episodes."""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv


def evaluate_agent(model: BaseAlgorithm, env: VecEnv, n_episodes: int = 20,
                   deterministic: bool = False) -> dict[str, Any]:
    """Run ``n_episodes`` episodes; returns mean/std return, mean length and success rate (from
    ``info["is_success"]`` where the env reports it, else None)."""
    successes: list[bool] = []

    def record(local: dict[str, Any], _: dict[str, Any]) -> None:
        if local["done"] and "is_success" in local["info"]:
            successes.append(bool(local["info"]["is_success"]))

    returns, lengths = evaluate_policy(model, env, n_eval_episodes=n_episodes, deterministic=deterministic,
                                       return_episode_rewards=True, callback=record, warn=False)
    return dict(mean_return=float(np.mean(returns)), std_return=float(np.std(returns)),
                mean_length=float(np.mean(lengths)), episodes=len(returns),
                success_rate=float(np.mean(successes)) if successes else None)
