"""What each encoder costs in the RL loop (issue 31), and what rlvision's speed path buys (issue 6), measured side by
side in one process.

    rlvision bench-speed --backbones nature_cnn,mobilenetv4_nano,mobilenetv4_nano_rl,mnv4_conv_small

0. The RL loop's two regimes (:mod:`rlvision.loop_cost`), for every ``--loop-backbones`` entry at every
   ``--sides`` frame side, on the CPU and on CUDA when torch sees a GPU: the rollout forward (batch 8, eval mode,
   inside SB3's PPO policy) and the update step (batch 256: forward, backward, gradient clipping, fused Adam). Per
   regime: aten calls, milliseconds, FLOPs, achieved GFLOP/s; compute per 1,024 env steps (128 rollout forwards +
   16 update steps) and its ratio to the first entry; a fitted split of each time into per-call overhead and
   arithmetic (one fit per device). The backbones are timed in alternation, round by round.
1. Rollout forward at batch 8: the encoder in plain eval mode (contiguous weights, ``torch.no_grad``, what SB3 does
   with any extractor) against rlvision's inference path (the extractor's InferenceCopy: BatchNorm folded,
   channels_last, ``torch.inference_mode``). The two are timed in alternation, call by call, so machine drift hits
   both alike; medians. Also: the largest output difference and whether a random linear policy head picks the same
   action from both on every observation.
   On CUDA (``--device cuda``) a third column: the inference copy replayed from a CUDA graph (the default there),
   next to the copy run eagerly.
2. Forward+backward at batch 256 (train mode) for each formulation of the training model: plain (NCHW),
   channels_last, ``torch.compile``, both; alternated the same way. Compile time is reported apart.
   On CUDA the whole minibatch update (forward, backward, fused Adam step) in each formulation: eager (TF32),
   bf16 autocast, ``torch.compile`` (default, ``reduce-overhead``, ``max-autotune-no-cudagraphs``) and one CUDA
   graph of the whole update (capturable Adam).
Prints markdown tables and writes them to ``<out>/speed.md``. Times on CUDA synchronise before reading the clock.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch
from gymnasium import spaces

import rlvision
from rlvision.cuda_graphs import CudaGraphStep
from rlvision.stats import markdown_table
from rlvision.commands import command_parser


# the small backbones (the RL presets and the encoders of their size), the reference first
LOOP_BACKBONES = ("nature_cnn", "impala_cnn", "mobilenetv4_nano_rl", "mobilenetv4_small_rl", "mnv4_conv_small",
                  "rest_rl", "cyclemlp_rl", "conformer_rl")
LOOP_COLUMNS = ("backbone", "side", "rollout_calls", "rollout_ms", "update_calls", "update_ms", "update_gflop",
                "update_gflops", "per_1024_ms", "per_1024_vs_first", "update_calls_vs_first", "rollout_overhead_ms",
                "update_overhead_ms", "update_arithmetic_ms")


def loop_table(backbones: list[str], sides: list[int], channels: int, rounds: int) -> str:
    """The RL-loop table (rlvision.loop_cost) on the CPU, and on CUDA when present, as markdown."""
    from rlvision.loop_cost import fit_overhead, measure

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    text = ""
    for device in devices:
        rows = measure(backbones, sides, channels=channels, device=device, rounds=rounds)
        per_call_us, gflops = fit_overhead(rows)
        where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
        text += (f"RL loop, PPO's two regimes inside SB3's policy ({where}; {channels}-channel frames; medians of "
                 f"{rounds} alternating rounds). per_1024_ms = 128 rollout forwards (batch 8) + 16 update steps "
                 f"(batch 256); ratios to {backbones[0]} at the same side. Fit: {per_call_us:.1f} us per aten call "
                 f"+ {gflops:.1f} GFLOP/s.\n\n"
                 f"{markdown_table([{k: r.row()[k] for k in LOOP_COLUMNS} for r in rows])}\n\n")
    return text


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def alternate(fns: dict[str, callable], rounds: int) -> dict[str, float]:
    """Median milliseconds per call of each function, calling them in turn ``rounds`` times after one warm-up."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def rollout_row(name: str, space: spaces.Box, batch: int, rounds: int, device: str = "cpu",
                onnxruntime: bool = False) -> dict:
    """Plain eval forward vs the inference path for one encoder, same weights, same observations (and, with
    ``onnxruntime``, the inference copy on onnxruntime: ``rollout_backend="onnxruntime"``)."""
    cuda = device.startswith("cuda")
    plain = rlvision.VisionExtractor(space, name, channels_last=False, inference_copy=False).to(device)
    with torch.no_grad():  # give BatchNorm non-trivial running statistics, as after some training
        plain.train()(torch.rand(64, *space.shape, device=device))
    variants = {"fast": rlvision.VisionExtractor(space, name, cuda_graph=False)}
    if cuda:
        variants["graph"] = rlvision.VisionExtractor(space, name, cuda_graph=True)
    elif onnxruntime:
        variants["ort"] = rlvision.VisionExtractor(space, name, rollout_backend="onnxruntime")
    for model in variants.values():
        model.load_state_dict(plain.state_dict())
        model.to(device).train().eval()
    plain.eval()
    obs = torch.rand(batch, *space.shape, device=device)
    head = torch.randn(plain.features_dim, 6, device=device)  # a random 6-action linear policy head
    with torch.no_grad():
        if "ort" in variants:  # export once and make the first session before the clock runs
            variants["ort"](obs)
        times = alternate({"plain": lambda: plain(obs), **{k: (lambda m=m: m(obs)) for k, m in variants.items()}},
                          rounds)
        checks = torch.rand(256, *space.shape, device=device)
        a = plain(checks)
        b = variants["graph" if cuda else "fast"](checks)
    fast = variants["fast"]
    row = dict(backbone=name, device=device, plain_eval_ms=round(times["plain"], 3),
               inference_path_ms=round(times["fast"], 3), ratio=round(times["fast"] / times["plain"], 2))
    if cuda:
        row.update(cuda_graph_ms=round(times["graph"], 3), graph_ratio=round(times["graph"] / times["plain"], 3),
                   graph_error=variants["graph"].rollout.copy.graph_error or "")
    if "ort" in variants:
        ort = variants["ort"]
        with torch.no_grad():
            c = ort(checks)
            ort.rollout.copy.mark_stale()  # as after an update: re-sync, then a new session with the new weights
            resync = timed(lambda: ort(obs))
        row.update(onnxruntime_ms=round(times["ort"], 3), ort_ratio=round(times["ort"] / times["plain"], 2),
                   ort_max_abs_diff=f"{(a - c).abs().max().item():.1e}",
                   ort_same_actions=f"{((a @ head).argmax(1) == (c @ head).argmax(1)).float().mean().item():.3f}",
                   ort_resync_ms=round(1000 * resync, 1),
                   ort_export_s=round(ort.rollout.copy.runner.seconds["export"], 1),
                   ort_graph="cache" if ort.rollout.copy.runner.cache_hits else "exported")
    row.update(max_abs_diff=f"{(a - b).abs().max().item():.1e}",
               same_actions=f"{((a @ head).argmax(1) == (b @ head).argmax(1)).float().mean().item():.3f}",
               folded_bn=len(fast.rollout.copy.folds), resync_ms=round(1000 * timed(fast.rollout.copy.sync), 2))
    return row


def timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def training_rows(name: str, space: spaces.Box, batch: int, rounds: int, compile_too: bool) -> list[dict]:
    """Forward+backward of the training model in each formulation; the same weights and batch for all."""
    variants = {"plain": dict(channels_last=False), "channels_last": dict(channels_last=True),
                "channels_last+augment_shift4": dict(channels_last=True, augment_shift=4)}
    if compile_too:
        variants.update({"compile": dict(channels_last=False, compile=True),
                         "channels_last+compile": dict(channels_last=True, compile=True)})
    x = torch.rand(batch, *space.shape)
    models, steps, first_call = {}, {}, {}
    for label, kwargs in variants.items():
        model = rlvision.VisionExtractor(space, name, inference_copy=False, **kwargs).train()
        if models:
            model.load_state_dict(next(iter(models.values())).state_dict())
        models[label] = model

        def step(model=model):
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
        steps[label] = step
        first_call[label] = timed(step)  # includes compilation for the compiled variants
    times = alternate(steps, rounds)
    base = times["plain"]
    return [dict(backbone=name, formulation=label, fwd_bwd_ms=round(ms, 1), speedup=round(base / ms, 2),
                 first_call_s=round(first_call[label], 1)) for label, ms in times.items()]


def gpu_update_rows(name: str, space: spaces.Box, batch: int, rounds: int, compile_too: bool,
                    device: str = "cuda") -> list[dict]:
    """The whole minibatch update on CUDA (forward, a scalar loss, backward, fused Adam step) per formulation."""
    x = torch.rand(batch, *space.shape, device=device)
    reference = rlvision.VisionExtractor(space, name, inference_copy=False).to(device)
    variants = {"eager_tf32": {}, "bf16_autocast": dict(bf16=True), "cuda_graph": dict(graph=True)}
    if compile_too:
        variants.update({"compile_default": dict(compile="default"),
                         "compile_reduce_overhead": dict(compile="reduce-overhead"),
                         "compile_max_autotune_no_cudagraphs": dict(compile="max-autotune-no-cudagraphs")})
    steps, first_call, errors = {}, {}, {}
    for label, opts in variants.items():
        try:
            steps[label], first_call[label] = _gpu_update(space, name, reference, x, device, opts)
        except Exception as error:  # noqa: BLE001  (one formulation failing must not lose the others' figures)
            errors[label] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
            print(f"{name} {label} failed: {errors[label]}", flush=True)
    times = alternate(steps, rounds)
    base = times["eager_tf32"]
    rows = [dict(backbone=name, device=device, formulation=label, update_ms=round(ms, 2),
                 speedup=round(base / ms, 2), first_call_s=round(first_call[label], 1))
            for label, ms in times.items()]
    return rows + [dict(backbone=name, device=device, formulation=label, error=e) for label, e in errors.items()]


def _gpu_update(space, name, reference, x, device, opts):
    """One formulation of the minibatch update: (the function to time, seconds of its first call). The CUDA-graph
    formulation is rlvision's one graph cache for training steps (:func:`rlvision.cuda_graphs.CudaGraphStep`, as
    GraphedPPO uses it): eager warm-up steps, then one capture, then replays; its "first call" covers all of them."""
    model = rlvision.VisionExtractor(space, name, inference_copy=False).to(device).train()
    model.load_state_dict(reference.state_dict())
    graphed = bool(opts.get("graph"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True, capturable=graphed)
    forward = torch.compile(model, mode=opts["compile"]) if "compile" in opts else model

    bf16 = bool(opts.get("bf16"))

    def update(batch, forward=forward, optimizer=optimizer, bf16=bf16):
        optimizer.zero_grad(set_to_none=True)  # gradients written at the same addresses on every replay
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = forward(batch).float().square().mean()
        loss.backward()
        optimizer.step()

    if not graphed:
        return (lambda: update(x)), timed(lambda: update(x))  # the first call includes compilation, if any
    graph_step = CudaGraphStep(update, warmup=3)
    first = timed(lambda: [graph_step(x) for _ in range(graph_step.warmup + 1)])  # warm-up steps and the capture
    if graph_step.error is not None:
        raise RuntimeError(graph_step.error)
    return (lambda: graph_step(x)), first


def main(argv: list[str] | None = None) -> None:
    parser = command_parser("bench-speed", __doc__)
    parser.add_argument("--loop-backbones", default=",".join(LOOP_BACKBONES),
                        help="backbones for the RL-loop table ('' to skip it); the first is the reference of the "
                             f"ratios (default {','.join(LOOP_BACKBONES)})")
    parser.add_argument("--sides", default="56,84", help="frame sides of the RL-loop table (default 56,84)")
    parser.add_argument("--loop-channels", type=int, default=3,
                        help="frame channels of the RL-loop table (default 3: RGB, as MiniGrid)")
    parser.add_argument("--loop-rounds", type=int, default=7,
                        help="alternating timed rounds of the RL-loop table (default 7)")
    parser.add_argument("--backbones", default="nature_cnn,mobilenetv4_nano,mobilenetv4_nano_rl,mobilenetv4_small_rl,"
                                               "mnv4_conv_small", help="backbones for the rollout-forward table")
    parser.add_argument("--train-backbones", default="nature_cnn,mobilenetv4_nano_rl,mnv4_conv_small",
                        help="backbones for the forward+backward table ('' to skip it)")
    parser.add_argument("--input", default="4x84x84", help="CxHxW")
    parser.add_argument("--rollout-batch", type=int, default=8, help='batch of the rollout forward (default 8)')
    parser.add_argument("--train-batch", type=int, default=256, help='minibatch of the training step (default 256)')
    parser.add_argument("--rounds", type=int, default=60, help="alternations for the rollout table")
    parser.add_argument("--train-rounds", type=int, default=5,
                        help="alternating timed rounds of the training step (default 5)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile formulations")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--onnxruntime", action="store_true",
                        help="CPU: also the inference copy on onnxruntime (rollout_backend='onnxruntime'; needs "
                             "rlvision[export]), with its re-sync cost after an update and its export time")
    parser.add_argument("--out", default="runs/bench-speed", help='folder for the tables')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.input.lower().split("x"))
    space = spaces.Box(0, 255, shape, np.uint8)
    torch.manual_seed(0)

    text = ""
    loop = [b for b in args.loop_backbones.split(",") if b]
    if loop:
        text += loop_table(loop, [int(v) for v in args.sides.split(",")], args.loop_channels, args.loop_rounds)
        print(text, flush=True)

    rollout = []
    for name in filter(None, args.backbones.split(",")):
        rollout.append(rollout_row(name, space, args.rollout_batch, args.rounds, args.device, args.onnxruntime))
        print(rollout[-1], flush=True)
    training = []
    for name in filter(None, args.train_backbones.split(",")):
        if args.device.startswith("cuda"):
            training += gpu_update_rows(name, space, args.train_batch, args.train_rounds, not args.no_compile,
                                        args.device)
        else:
            training += training_rows(name, space, args.train_batch, args.train_rounds, not args.no_compile)
        print(training[-1], flush=True)

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    text += (f"Rollout forward, batch {args.rollout_batch}, input {args.input}, {where} "
             f"(median of {args.rounds} alternating calls):\n\n{markdown_table(rollout)}\n")
    if training:
        what = "Minibatch update (fwd+bwd+Adam)" if args.device.startswith("cuda") else "Forward+backward"
        text += (f"\n{what}, batch {args.train_batch}, train mode (median of {args.train_rounds} "
                 f"alternating calls):\n\n{markdown_table(training)}\n")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "speed.md"), "w") as f:
        f.write(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
