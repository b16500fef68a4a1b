"""Latency of preprocessing stages next to the backbones they feed, in one run.

    rlvision bench-preprocess --frames 8 --side 42 --scale 2 --channels 1

Per stage: parameters, MFLOPs per frame, forward latency on a batch of low-res frames in eval mode under
``torch.inference_mode``, unfused and reparameterized (median and IQR over repeats, after warm-up). For reference, the
forward latency of each backbone (as the RL encoder) on the same batch at the upscaled resolution, 4 stacked frames.
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np
import torch
from gymnasium import spaces

import rlvision
from rlvision.stats import markdown_table
from rlvision.benchmark import count_flops
from rlvision.commands import command_parser


def latency_ms(fn, repeats: int, warmup: int) -> tuple[float, float]:
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    q1, med, q3 = np.percentile(times, [25, 50, 75]) * 1e3
    return round(float(med), 2), round(float(q3 - q1), 2)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = command_parser("bench-preprocess", __doc__)
    parser.add_argument("--stages", default="bicubic,flexnet_rl,transformer_sr_rl,flexnet",
                        help='comma-separated preprocessing stages to time')
    parser.add_argument("--backbones", default="nature_cnn,mobilenetv4_nano",
                        help='comma-separated backbones timed next to them')
    parser.add_argument("--frames", type=int, default=8, help="batch of frames")
    parser.add_argument("--side", type=int, default=42, help="low-res side")
    parser.add_argument("--scale", type=int, default=2, help='upscaling factor of the stages (default 2)')
    parser.add_argument("--channels", type=int, default=1, help="channels per frame: 1 grey, 3 RGB")
    parser.add_argument("--repeats", type=int, default=20, help='timed repeats; the median is reported (default 20)')
    parser.add_argument("--warmup", type=int, default=3, help='untimed calls before measuring (default 3)')
    parser.add_argument("--out", default="runs/bench-preprocess", help='folder for summary.md / summary.csv')
    args = parser.parse_args(argv)
    x = torch.rand(args.frames, args.channels, args.side, args.side)
    rows = []
    for name in args.stages.split(","):
        stage = rlvision.create_preprocess(name, scale=args.scale, channels=args.channels).eval()
        row = dict(module=name, params=rlvision.count_parameters(stage),
                   mflops_per_frame=round(count_flops(stage, x[:1]) / 1e6, 1))
        row["ms"], row["ms_iqr"] = latency_ms(lambda stage=stage: stage(x), args.repeats, args.warmup)
        fused = copy.deepcopy(stage).reparameterize()
        row["ms_reparam"], row["ms_reparam_iqr"] = latency_ms(lambda fused=fused: fused(x), args.repeats,
                                                              args.warmup)
        with torch.no_grad():
            row["max_abs_diff"] = float((fused(x) - stage(x)).abs().max())
        rows.append(row)
    side = args.side * args.scale
    obs = torch.rand(args.frames, 4 * args.channels, side, side)
    for name in args.backbones.split(","):
        ext = rlvision.VisionExtractor(spaces.Box(0, 255, obs.shape[1:], dtype=np.uint8), backbone=name).eval()
        row = dict(module=f"{name} (encoder, {tuple(obs.shape[1:])})", params=rlvision.count_parameters(ext),
                   mflops_per_frame=round(count_flops(ext, obs[:1]) / 1e6, 1))
        row["ms"], row["ms_iqr"] = latency_ms(lambda ext=ext: ext(obs), args.repeats, args.warmup)
        rows.append(row)
    table = markdown_table(rows)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(table + "\n")
    print(f"Batch of {args.frames} frames {args.channels}x{args.side}x{args.side}, x{args.scale}, "
          f"{torch.get_num_threads()} threads\n\n{table}")
    return rows


if __name__ == "__main__":
    main()
