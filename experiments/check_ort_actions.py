"""Do rollouts on onnxruntime take the same actions as rollouts on torch? PPO on Pong x8 (native env),
mobilenetv4_nano_rl unless --backbone says otherwise, the same seed, once per rollout backend; the actions of every
rollout compared step by step.

    python experiments/check_ort_actions.py --steps 4096      (BENCHMARKS.md "Export and onnxruntime rollouts")

The first rollout runs before any update, on the plain path in both runs; every later one on the inference copy
(torch) or on onnxruntime. Exits 1 if any action differs.
"""

import argparse
import sys

from stable_baselines3.common.callbacks import BaseCallback

from rlvision.agents import make_agent
from rlvision.envs import make_env


class RolloutActions(BaseCallback):
    """Keeps a copy of each rollout's actions."""

    def __init__(self):
        super().__init__()
        self.rollouts = []

    def _on_rollout_end(self) -> None:
        self.rollouts.append(self.model.rollout_buffer.actions.copy())

    def _on_step(self) -> bool:
        return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4096, help="env steps per run (default 4096: 4 rollouts)")
    parser.add_argument("--backbone", default="mobilenetv4_nano_rl")
    args = parser.parse_args(argv)
    actions = {}
    for backend in ("torch", "onnxruntime"):
        env = make_env("ALE/Pong-v5", n_envs=8, seed=0)
        model = make_agent("ppo", env, backbone=args.backbone, seed=0,
                           backbone_kwargs=dict(rollout_backend=backend))
        callback = RolloutActions()
        model.learn(args.steps, callback=callback)
        actions[backend] = callback.rollouts
        env.close()
    same = [float((a == b).mean()) for a, b in zip(actions["torch"], actions["onnxruntime"], strict=False)]
    for i, share in enumerate(same):
        print(f"rollout {i}: {share:.1%} of actions identical")
    return 0 if all(share == 1.0 for share in same) else 1


if __name__ == "__main__":
    sys.exit(main())
