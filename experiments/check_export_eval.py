"""Does the exported policy score what the SB3 model scores? SB3's evaluate_policy on Pong (native env, seeded)
with a PPO mobilenetv4_nano_rl model and with its ONNX export (rlvision.export.OnnxPolicy), the same episodes.

    python experiments/check_export_eval.py --train-steps 4096 --episodes 2   (BENCHMARKS.md "Export ...")

Exits 1 if the episode returns or lengths differ.
"""

import argparse
import os
import sys
import tempfile

from stable_baselines3.common.evaluation import evaluate_policy

from rlvision.agents import make_agent
from rlvision.envs import make_env
from rlvision.export import OnnxPolicy, export_policy


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=4096, help="PPO steps before exporting (default 4096)")
    parser.add_argument("--episodes", type=int, default=2, help="evaluation episodes (default 2)")
    parser.add_argument("--backbone", default="mobilenetv4_nano_rl")
    args = parser.parse_args(argv)
    model = make_agent("ppo", make_env("ALE/Pong-v5", n_envs=8, seed=0), backbone=args.backbone, seed=0)
    model.learn(args.train_steps)
    returns = {}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "policy.onnx")
        export_policy(model, path)
        for name, policy in (("SB3 model", model), ("ONNX file", OnnxPolicy(path))):
            env = make_env("ALE/Pong-v5", n_envs=1, seed=123)  # the same seeded episodes for both
            returns[name] = evaluate_policy(policy, env, n_eval_episodes=args.episodes, deterministic=True,
                                            return_episode_rewards=True)  # (returns, lengths) per episode
            env.close()
    for name, (values, lengths) in returns.items():
        print(f"{name}: episode returns {values} (mean {sum(values) / len(values):.2f}), lengths {lengths}")
    return 0 if returns["SB3 model"] == returns["ONNX file"] else 1


if __name__ == "__main__":
    sys.exit(main())
