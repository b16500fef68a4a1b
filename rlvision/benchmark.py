"""The encoder alone, outside the RL loop: parameters, FLOPs, forward latency at the rollout batch,
forward+backward at the training batch, training memory (:func:`benchmark_backbones`), and :func:`count_flops`.
The RL loop itself is measured by :class:`rlvision.profiler.ThroughputProfiler`."""

from __future__ import annotations

import csv
import gc
import os
import statistics
from typing import Any
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from gymnasium import spaces
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .profiler import _Clock


@torch.no_grad()
def count_flops(module: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of one eval-mode forward of ``module(example)`` (torch.utils.flop_counter: 2 per multiply-add), counted
    on a CPU copy: the count does not depend on the device, and on CUDA the counter missed or repeated kernels
    of a module that had run there (seen on an H100: 0 or 3x)."""
    import copy

    twin = copy.deepcopy(module).cpu().eval()
    # autograd on: the plain forward, never an inference fast path (a folded copy, onnxruntime) that would be
    # traced or built inside the counter
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        twin(example.cpu())
    return counter.get_total_flops()


def _median_iqr(samples: Sequence[float]) -> tuple[float, float]:
    q1, q3 = np.percentile(samples, [25, 75])
    return statistics.median(samples), float(q3 - q1)


def _time_call(fn: Callable[[], Any], repeats: int, warmup: int, clock: _Clock,
               first: Callable[[], Any] | None = None) -> list[float]:
    """Run ``first`` (or ``fn``) once, ``warmup - 1`` more untimed calls, then time ``repeats`` calls."""
    (first or fn)()
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return times


class _SavedBytes:
    """Counts the bytes of the tensors autograd saves for backward while active (a context manager)."""

    def __init__(self):
        self.total = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.total += t.numel() * t.element_size()
        return t

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def _bench_one(model: nn.Module, name: str, input_shape: tuple[int, int, int], batch_sizes: tuple[int, int],
               repeats: int, warmup: int, dev: torch.device) -> dict[str, Any]:
    """One row of :func:`benchmark_backbones` for ``model``."""
    clock = _Clock(dev)
    rollout_batch, train_batch = batch_sizes
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, torch.rand(1, *input_shape, device=dev))
    x_roll = torch.rand(rollout_batch, *input_shape, device=dev)

    def rollout():
        with torch.inference_mode():
            model(x_roll)

    fwd = _time_call(rollout, repeats, warmup, clock)
    model.train()
    x_train = torch.rand(train_batch, *input_shape, device=dev)

    def train_step():
        model.zero_grad(set_to_none=True)
        model(x_train).sum().backward()

    saved = _SavedBytes()

    def counted_step():  # the first (warm-up) step also counts what autograd saves
        with saved:
            train_step()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    fwd_bwd = _time_call(train_step, repeats, max(warmup, 1), clock, first=counted_step)
    memory = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else saved.total + 4 * params * 4
    fwd_med, fwd_iqr = _median_iqr(fwd)
    fb_med, fb_iqr = _median_iqr(fwd_bwd)
    return dict(backbone=name, params=params, mflops=round(flops / 1e6, 1),
                fwd_ms=round(fwd_med * 1e3, 2), fwd_ms_iqr=round(fwd_iqr * 1e3, 2),
                fwd_bwd_ms=round(fb_med * 1e3, 1), fwd_bwd_ms_iqr=round(fb_iqr * 1e3, 1),
                train_memory_mb=round(memory / 2**20, 1), rollout_batch=rollout_batch, train_batch=train_batch,
                input_shape="x".join(map(str, input_shape)), threads=torch.get_num_threads())


def benchmark_backbones(names: Iterable[str], input_shape: tuple[int, int, int] = (4, 84, 84),
                        batch_sizes: tuple[int, int] = (8, 256), threads: int | None = None, repeats: int = 5,
                        warmup: int = 2, features_dim: int = 256, device: str = "cpu",
                        csv_path: str | None = None, tensorboard_dir: str | None = None,
                        progress: bool = True) -> list[dict[str, Any]]:
    """Benchmark each backbone as the RL encoder (``VisionExtractor``: backbone + pool + linear). ``names``: backbone
    names, or ``(name, options)`` pairs with the extractor's options (e.g. ``("impala_cnn", {"precision": "bf16"})``;
    the row's ``backbone`` is then ``name[k=v,...]``).

    Per backbone: ``params``; ``mflops`` per sample (torch.utils.flop_counter, one forward); ``fwd_ms`` (median) and
    ``fwd_ms_iqr`` at the rollout batch ``batch_sizes[0]`` in eval mode under ``torch.inference_mode``;
    ``fwd_bwd_ms`` and ``fwd_bwd_ms_iqr`` at the training batch ``batch_sizes[1]`` in train mode; ``train_memory_mb``
    = saved activations of that forward + 4x the parameters (weights, grads, Adam's two moments), or CUDA's peak
    allocation on a GPU. Rows go to ``csv_path`` and ``tensorboard_dir`` when given.
    """
    from .extractors import VisionExtractor

    entries = [(n, {}) if isinstance(n, str) else (n[0], dict(n[1])) for n in names]
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    space = spaces.Box(0, 255, input_shape, dtype=np.uint8)
    rows: list[dict[str, Any]] = []
    iterator: Iterable[tuple[str, dict]] = entries
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(entries, desc="benchmark", unit="backbone")
    try:
        for name, options in iterator:
            model = VisionExtractor(space, backbone=name, features_dim=features_dim, **options).to(dev)
            label = name + ("[" + ",".join(f"{k}={v}" for k, v in options.items()) + "]" if options else "")
            rows.append(_bench_one(model, label, input_shape, batch_sizes, repeats, warmup, dev))
            del model
            gc.collect()
    finally:
        torch.set_num_threads(old_threads)
    if csv_path and rows:
        os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if tensorboard_dir and rows:
        from torch.utils.tensorboard import SummaryWriter

        for row in rows:
            with SummaryWriter(os.path.join(tensorboard_dir, row["backbone"])) as writer:
                for key, value in row.items():
                    if isinstance(value, (int, float)):
                        writer.add_scalar(f"bench/{key}", value, 0)
    return rows
