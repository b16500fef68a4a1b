"""Encoder-only benchmark of registered backbones at one resolution, printed as a table and saved.

    rlvision bench --input 4x84x84 --batches 8,256 --threads 2
    rlvision bench --backbones nature_cnn,mobilenetv4_nano,mnv4_conv_small
    rlvision bench --input 3x64x64 --batches 64,512 --threads 1 --backbones 'impala_cnn,impala_cnn[precision=bf16]'

Per backbone (as the RL encoder: backbone + pool + linear): parameters, MFLOPs per sample, forward latency at the
rollout batch (eval, inference mode) and forward+backward at the training batch (train mode), median and IQR over
repeats after warm-up, and training memory. Writes ``<out>/bench.md``, ``bench.csv`` and TensorBoard scalars.
"""

from __future__ import annotations

import os

import rlvision
from rlvision.stats import markdown_table
from rlvision.benchmark import benchmark_backbones
from rlvision.commands import command_parser
from rlvision.runs import check_entry, parse_backbones

# Too slow or too big for a default sweep at a 256 batch on 2 cores / 24 GiB; ask for them by name (with a smaller
# --batches training batch: the ImageNet-sized variants need several GB of activations per 32 frames at 84 px).
HEAVY = {"mobilenetv4_medium", "mobilenetv4_large", "mobilenetv4_hybrid_large", "mnv4_conv_large", "mnv4_hybrid_large",
         "rest_base", "rest_large", "cyclemlp_b3", "cyclemlp_b4", "cyclemlp_b5", "conformer_small", "conformer_base"}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = command_parser("bench", __doc__)
    parser.add_argument("--backbones", default=None,
                        help="comma-separated, each with optional [k=v] encoder options as in rlvision compare "
                             "(e.g. impala_cnn[precision=bf16]); default: all but the heaviest")
    parser.add_argument("--input", default="4x84x84", help="CxHxW")
    parser.add_argument("--batches", default="8,256", help="rollout batch,training batch")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5,
                        help='timed repeats per measurement; the median is reported (default 5)')
    parser.add_argument("--warmup", type=int, default=2, help='untimed calls before measuring (default 2)')
    parser.add_argument("--device", default="cpu", help='cpu or cuda (default cpu)')
    parser.add_argument("--out", default="runs/bench-backbones",
                        help="folder for bench.md, bench.csv and the TensorBoard scalars")
    args = parser.parse_args(argv)
    entries = (parse_backbones(args.backbones) if args.backbones
               else [(n, {}) for n in rlvision.list_backbones() if n not in HEAVY])
    for name, options in entries:
        try:
            check_entry(name, options, "ppo", allow_algo_option=False)
        except ValueError as error:
            parser.error(str(error))
    shape = tuple(int(v) for v in args.input.lower().split("x"))
    batches = tuple(int(v) for v in args.batches.split(","))
    os.makedirs(args.out, exist_ok=True)
    rows = benchmark_backbones(entries, shape, batches, threads=args.threads, repeats=args.repeats,
                               warmup=args.warmup, device=args.device, csv_path=os.path.join(args.out, "bench.csv"),
                               tensorboard_dir=args.out)
    table = markdown_table(rows)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"Saved {args.out}/bench.md, bench.csv; tensorboard --logdir {args.out}")
    return rows


if __name__ == "__main__":
    main()
