"""How much running_bn's statistics update costs in training (issue 21): one training step of the default encoder's
forward+backward, the old update (torch.var_mean over batch and pixels, then lerp) against today's (BatchNorm2d's
fused train-mode kernel on a detached input, output discarded), in one run, median of N repeats.

    python experiments/bench_running_bn.py [--batch 256] [--size 56] [--repeats 20] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from gymnasium import spaces

import rlvision
from rlvision.layers import RunningBatchNorm2d


def old_forward(self, x):
    """RunningBatchNorm2d's train forward before the change: statistics by torch.var_mean."""
    if not (self.training and self.track_running_stats):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
    mean, var = self.running_mean.clone(), self.running_var.clone()
    out = F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)
    with torch.no_grad():
        batch_var, batch_mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=True)
        self.running_mean.lerp_(batch_mean, self.momentum)
        self.running_var.lerp_(batch_var, self.momentum)
        self.num_batches_tracked.add_(1)
    return out


def step_ms(extractor, x, repeats):
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        extractor(x).square().mean().backward()
        if i >= 3:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    space = spaces.Box(0, 255, (3, args.size, args.size), dtype="uint8")
    extractor = rlvision.VisionExtractor(space, "mobilenetv4_nano_rl").train()
    x = torch.randint(0, 256, (args.batch, 3, args.size, args.size)).float()
    new_forward = RunningBatchNorm2d.forward
    rows = []
    for _ in range(2):  # alternate, so load changes hit both alike
        arms = (("torch.var_mean (before)", old_forward), ("fused batch_norm kernel (today)", new_forward))
        for name, forward in arms:
            RunningBatchNorm2d.forward = forward
            rows.append((name, step_ms(extractor, x, args.repeats)))
    RunningBatchNorm2d.forward = new_forward
    print(f"mobilenetv4_nano_rl, running_bn, forward+backward of a {args.batch}x3x{args.size}x{args.size} batch, "
          f"channels_last, {args.threads} threads")
    print("| statistics update | ms (median) |\n|---|---|")
    for name in dict(rows):
        print(f"| {name} | {statistics.median(ms for n, ms in rows if n == name):.1f} |")


if __name__ == "__main__":
    main()
