"""How much can a faster rollout encoder speed up PPO? One PPO loop (Pong x8, native env) per arm in one process,
rollouts and updates timed separately and alternated between the arms, medians over the rounds:

- ``torch``: the inference copy on torch (the default rollout path);
- ``onnxruntime``: the same copy on onnxruntime (``rollout_backend="onnxruntime"``);
- ``free encoder``: the torch arm with the encoder's rollout forward replaced by a constant, so its rollout is the
  env, SB3's Python and the heads only. Its loop time bounds what any rollout backend can reach:
  ``ceiling = torch loop / free-encoder loop``.

    RLVISION_CACHE_DIR=runs/ort-cache python experiments/ort_loop_split.py --rounds 6
        (BENCHMARKS.md "Export and onnxruntime rollouts")

The updates are the same code in all arms (the onnxruntime arm's also makes a new session for the new weights).
"""

import argparse
import statistics
import time
import warnings

import torch
from stable_baselines3.common.callbacks import CallbackList

from rlvision.agents import make_agent
from rlvision.envs import make_env


def build(backbone: str, backend: str, seed: int):
    env = make_env("ALE/Pong-v5", n_envs=8, seed=seed)
    model = make_agent("ppo", env, backbone=backbone, seed=seed,
                       policy_kwargs=dict(features_extractor_kwargs=dict(rollout_backend=backend)))
    model.learn(2 * model.n_steps * env.num_envs)  # past the first update: the rollout speed path is on
    callback = CallbackList([])
    callback.init_callback(model)
    return model, callback


def free_encoder(model) -> None:
    """Replace the extractor's forward with a constant in rollouts only (eval mode, no autograd: where the speed path
    acts); the update still trains the real encoder."""
    extractor = model.policy.features_extractor
    forward = extractor.forward
    zeros = torch.zeros(1, extractor.features_dim)

    def constant(observations):
        if not extractor.training and not torch.is_grad_enabled():
            return zeros.expand(len(observations), -1)
        return forward(observations)

    extractor.forward = constant


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenetv4_nano_rl")
    parser.add_argument("--rounds", type=int, default=6, help="rollout+update rounds per arm (default 6)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    arms = {"torch": build(args.backbone, "torch", args.seed),
            "onnxruntime": build(args.backbone, "onnxruntime", args.seed),
            "free encoder": build(args.backbone, "torch", args.seed)}
    free_encoder(arms["free encoder"][0])
    times = {name: dict(rollout=[], update=[]) for name in arms}
    for _ in range(args.rounds):
        for name, (model, callback) in arms.items():
            start = time.perf_counter()
            model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
            middle = time.perf_counter()
            model.train()
            times[name]["rollout"].append(middle - start)
            times[name]["update"].append(time.perf_counter() - middle)
    steps = arms["torch"][0].n_steps * arms["torch"][0].env.num_envs
    loops = {name: statistics.median(r + u for r, u in zip(t["rollout"], t["update"], strict=True))
             for name, t in times.items()}
    print(f"{args.backbone}, PPO on Pong x8, {steps} steps per rollout, {args.threads} thread(s), "
          f"medians of {args.rounds} rounds\n")
    print("| arm | rollout s | update s | loop s | rollout share | FPS | vs torch |")
    print("|---|---|---|---|---|---|---|")
    for name, t in times.items():
        rollout, update = statistics.median(t["rollout"]), statistics.median(t["update"])
        print(f"| {name} | {rollout:.3f} | {update:.3f} | {loops[name]:.3f} | {rollout / (rollout + update):.1%} | "
              f"{steps / loops[name]:.1f} | {loops['torch'] / loops[name]:.3f} |")
    print(f"\nceiling for any rollout backend (torch loop / free-encoder loop): "
          f"{loops['torch'] / loops['free encoder']:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
