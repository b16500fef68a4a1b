"""Train one agent from a YAML config: env, algo, backbone, hyperparameters, steps, seed.

    python experiments/train.py experiments/configs/ppo_synthetic.yaml
    python experiments/train.py experiments/configs/ppo_pong.yaml --set backbone=mnv4_conv_small --set steps=200000

Writes TensorBoard logs, periodic checkpoints, the final model and an evaluation summary under
``<log_dir>/<run_name>/``, with a progress bar while it trains.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import yaml
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.logger import configure as configure_logger

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from agents import evaluate_agent, make_agent  # noqa: E402
from envs import make_env  # noqa: E402

DEFAULT_CONFIG = dict(env="SyntheticPixel-v0", env_kwargs={}, n_envs=8, frame_stack=None, algo="ppo",
                      backbone="mobilenetv4_nano", backbone_kwargs={}, features_dim=256, hyperparams={},
                      steps=50_000, seed=0, eval_episodes=20, checkpoint_every=25_000, log_dir="runs/train",
                      run_name=None, threads=None, device="auto")


def load_config(path: str | None, overrides: list[str]) -> dict:
    """The YAML file over DEFAULT_CONFIG, then ``key=value`` overrides (values parsed as YAML)."""
    config = dict(DEFAULT_CONFIG)
    if path:
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        unknown = set(loaded) - set(DEFAULT_CONFIG)
        if unknown:
            raise SystemExit(f"Unknown config keys {sorted(unknown)} in {path}; known: {sorted(DEFAULT_CONFIG)}")
        config.update(loaded)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULT_CONFIG:
            raise SystemExit(f"--set wants key=value with key in {sorted(DEFAULT_CONFIG)}, got {item!r}")
        config[key] = yaml.safe_load(value)
    return config


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="YAML config (see experiments/configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))

    run_name = cfg["run_name"] or f"{cfg['algo']}_{cfg['backbone']}_{cfg['env'].replace('/', '-')}_s{cfg['seed']}"
    run_dir = os.path.join(cfg["log_dir"], run_name)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        yaml.safe_dump(cfg, f)

    # 1. Environments: training copies and one separate evaluation copy.
    env = make_env(cfg["env"], n_envs=cfg["n_envs"], seed=cfg["seed"], frame_stack=cfg["frame_stack"],
                   env_kwargs=cfg["env_kwargs"])
    eval_env = make_env(cfg["env"], n_envs=1, seed=cfg["seed"] + 10_000, frame_stack=cfg["frame_stack"],
                        env_kwargs=cfg["env_kwargs"])

    # 2. The agent, with the rlvision encoder, logging to TensorBoard under run_dir.
    model = make_agent(cfg["algo"], env, backbone=cfg["backbone"], features_dim=cfg["features_dim"],
                       backbone_kwargs=cfg["backbone_kwargs"], seed=cfg["seed"], device=cfg["device"],
                       **cfg["hyperparams"])
    model.set_logger(configure_logger(run_dir, ["tensorboard", "csv"]))  # TensorBoard + progress.csv in run_dir
    print(f"{cfg['algo'].upper()} + {cfg['backbone']} on {cfg['env']} {env.observation_space.shape}: "
          f"{sum(p.numel() for p in model.policy.parameters()):,} policy parameters -> {run_dir}")

    # 3. Train, with checkpoints every `checkpoint_every` steps.
    checkpoints = CheckpointCallback(max(cfg["checkpoint_every"] // cfg["n_envs"], 1),
                                     os.path.join(run_dir, "checkpoints"), name_prefix="model")
    start = time.perf_counter()
    try:
        model.learn(cfg["steps"], callback=checkpoints, progress_bar=not args.no_progress)
    except KeyboardInterrupt:
        print("Interrupted: saving and evaluating what was trained so far.")
    elapsed = time.perf_counter() - start
    model.save(os.path.join(run_dir, "model.zip"))

    # 4. Final evaluation on the separate env.
    result = dict(run_dir=run_dir, steps=int(model.num_timesteps), seconds=round(elapsed, 1),
                  fps=round(model.num_timesteps / max(elapsed, 1e-9), 1))
    if cfg["eval_episodes"]:
        result.update(evaluate_agent(model, eval_env, cfg["eval_episodes"]))
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(f"TensorBoard: tensorboard --logdir {cfg['log_dir']}")
    env.close()
    eval_env.close()
    return result


if __name__ == "__main__":
    main()
