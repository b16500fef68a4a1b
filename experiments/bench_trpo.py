"""One TRPO update of 512 samples (Pong, 8 envs x 64 steps, 4x84x84 frames), one torch thread: rlvision.trpo.TRPO
against sb3-contrib's TRPO, for nature_cnn and mobilenetv4_nano_rl; the median of 3 updates after a warm-up one.

    python experiments/bench_trpo.py            (BENCHMARKS.md "TRPO"; sb3-contrib's nano_rl update, 468 s, is
                                                 left out unless --contrib-nano)
"""

import argparse
import statistics
import time

import torch
from sb3_contrib import TRPO as ContribTRPO  # noqa: N811 (an acronym class, not a constant)

import rlvision
from rlvision.envs import make_env
from rlvision.stats import markdown_table
from rlvision.trpo import TRPO


def update_seconds(cls, backbone: str, repeats: int = 3) -> float:
    env = make_env("ALE/Pong-v5", n_envs=8, seed=0)
    model = cls("CnnPolicy", env, n_steps=64, batch_size=128, seed=0, device="cpu",
                policy_kwargs=rlvision.policy_kwargs(backbone, algo="trpo"))
    model.learn(512)  # one rollout and a warm-up update; the timed updates reuse that rollout
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.train()
        times.append(time.perf_counter() - start)
    env.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contrib-nano", action="store_true", help="also time sb3-contrib's update for nano_rl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for label, cls in (("rlvision.trpo.TRPO", TRPO), ("sb3-contrib TRPO", ContribTRPO)):
        for backbone in ("nature_cnn", "mobilenetv4_nano_rl"):
            if cls is ContribTRPO and backbone != "nature_cnn" and not args.contrib_nano:
                continue
            rows.append(dict(trpo=label, backbone=backbone, update_seconds=round(update_seconds(cls, backbone), 2)))
            print(rows[-1], flush=True)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
