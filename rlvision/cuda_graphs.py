"""Capture once, replay many: one CUDA-graph cache for any module or step function (nothing here knows SB3).

A small network at RL batch sizes is bound by kernel launches, not arithmetic: a MobileNet forward launches ~100
kernels, its backward and Adam step several hundred more. A CUDA graph replays all of them as one launch.

:class:`CudaGraphCache` keeps one graph per input shape of ``fn(*inputs)``, with the warm-up, the capture and the
eager fallback in one place. Two settings of it serve rlvision:

- :func:`CudaGraphRunner`: ``module(x)`` under ``torch.inference_mode`` (rollouts; used by
  :class:`rlvision.inference_copy.InferenceCopy`): a pure function, so warm-up calls run inside the first call of a
  shape; one memory pool for all shapes.
- :func:`CudaGraphStep`: a whole training step (forward, backward, optimizer step) of one minibatch (used by
  :class:`rlvision.graphed_ppo.GraphedPPO`): the first ``warmup`` calls of a shape are real eager steps, then it is
  captured; a memory pool per shape.

Both read every tensor other than their inputs where it lives when captured: update parameters, optimizer state and
hyperparameters in place (``copy_``, ``fill_``), or call ``reset()`` after replacing one. :meth:`CudaGraphCache.replay`
is the hook rlvision.profiler times (hooks inside a captured function do not run in a replay); an algorithm lists
its caches in ``cuda_graph_caches()``.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any
from collections.abc import Callable

import torch
from torch import nn


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def capture(fn: Callable[[], Any], device: torch.device, pool=None, inference: bool = False
            ) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Capture ``fn()`` in a new CUDA graph on ``device``: (graph, fn's output, static: overwritten by each replay).

    Capturing records kernels without running them. If it fails (an op that synchronises with the host, or one
    that cannot be captured), the error is raised after the CUDA RNG is put back as it was: a capture that fails
    part-way leaves the generator marked as capturing, and every later random op (SB3's action sampling) would fail.
    """
    graph = torch.cuda.CUDAGraph()
    generator = torch.cuda.default_generators[_device_index(device)]
    rng_state = generator.clone_state()
    try:
        with torch.inference_mode() if inference else contextlib.nullcontext(), torch.cuda.graph(graph, pool=pool):
            out = fn()
    except Exception:
        generator.graphsafe_set_state(rng_state)
        torch.cuda.synchronize(device)
        raise
    return graph, out


@contextlib.contextmanager
def side_stream(device: torch.device):
    """Run the block on a fresh CUDA stream ordered after (and before) the current one: warm-up calls before a
    capture belong there (cuDNN picks its algorithms, optimizers create their state)."""
    current = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        yield
    current.wait_stream(stream)


def _shape_key(tensors) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device, t.is_contiguous(memory_format=torch.channels_last))
                 for t in tensors)


class CudaGraphCache:
    """``fn(*inputs)`` replayed from a CUDA graph captured per input shape (shape, dtype, device, memory format).

    :param fn: the function; everything it reads besides ``inputs`` must persist and change only in place.
    :param warmup: eager calls before a shape is captured (cuDNN picks its algorithms, optimizers create their state).
    :param pure: ``fn`` has no side effects, so the warm-up calls run inside the first call of a shape (rollout
        forwards); otherwise each warm-up is a real call whose result is returned (training steps), and ``warmup``
        must be >= 1.
    :param inference: warm up and capture under ``torch.inference_mode``.
    :param share_pool: one memory pool for every shape (their outputs may then share memory: use each before the
        next call, as a rollout does); otherwise a pool per shape.
    :param max_shapes: graphs kept (the oldest is dropped beyond it).
    :param capture_context: entered around each capture (e.g. a context that turns off host-side argument checks).
    :param name: what the fallback warning calls the function.

    The returned tensors are the graph's static outputs, overwritten by the next replay of that shape. Off CUDA,
    when not ``enabled``, or once a capture failed (warned once, with the reason), ``fn`` simply runs eagerly: the
    same results. ``captures`` counts captures; ``error`` holds the failure.
    """

    def __init__(self, fn: Callable[..., Any], warmup: int = 2, pure: bool = False, inference: bool = False,
                 share_pool: bool = False, max_shapes: int = 8, enabled: bool = True,
                 capture_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 name: str = "function"):
        if warmup < (0 if pure else 1):
            raise ValueError(f"warmup must be >= {0 if pure else 1} (optimizer state is created in an eager step), "
                             f"got {warmup}.")
        self.fn, self.warmup, self.pure, self.inference = fn, warmup, pure, inference
        self.share_pool, self.max_shapes, self.enabled = share_pool, max_shapes, enabled
        self.capture_context, self.name = capture_context, name
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], Any]] = {}
        self.calls: dict[tuple, int] = {}
        self.pool = None
        self.captures = 0
        self.error: str | None = None

    def reset(self) -> None:
        """Drop every graph (after the tensors ``fn`` reads were replaced rather than updated in place)."""
        self.graphs.clear()
        self.calls.clear()
        self.pool = None

    def _mode(self):
        return torch.inference_mode() if self.inference else contextlib.nullcontext()

    def __call__(self, *inputs: torch.Tensor) -> Any:
        if not self.enabled or self.error is not None or not inputs or not all(t.is_cuda for t in inputs):
            return self.fn(*inputs)
        key = _shape_key(inputs)
        entry = self.graphs.get(key)
        if entry is None:
            if not self.pure:
                calls = self.calls[key] = self.calls.get(key, 0) + 1
                if calls <= self.warmup:
                    with side_stream(inputs[0].device):
                        return self.fn(*inputs)
            static = [t.clone() for t in inputs]
            try:
                if self.pure:
                    with side_stream(inputs[0].device), self._mode():
                        for _ in range(self.warmup):
                            self.fn(*static)
                with self.capture_context():
                    graph, out = capture(lambda: self.fn(*static), inputs[0].device,
                                         self.pool if self.share_pool else None, inference=self.inference)
            except Exception as error:  # noqa: BLE001  (any capture failure: run eagerly from now on)
                self.error = f"{type(error).__name__}: {error}"
                self.reset()
                warnings.warn(f"CUDA graph capture failed ({self.name}), it runs eagerly: {self.error}",
                              RuntimeWarning, stacklevel=2)
                return self.fn(*inputs)
            if self.share_pool and self.pool is None:
                self.pool = graph.pool()
            if len(self.graphs) >= self.max_shapes:
                self.graphs.pop(next(iter(self.graphs)))
            entry = self.graphs[key] = graph, static, out
            self.captures += 1
        return self.replay(entry, inputs)

    def replay(self, entry: tuple, inputs: tuple[torch.Tensor, ...]) -> Any:
        """Copy ``inputs`` into the captured graph ``entry``'s static inputs and replay it (its own method, so that
        rlvision.profiler can time replays: hooks inside ``fn`` do not run in a replay)."""
        graph, static, out = entry
        for dst, src in zip(static, inputs, strict=False):
            dst.copy_(src)
        graph.replay()
        return out


def CudaGraphRunner(module: nn.Module, max_shapes: int = 8, warmup: int = 2) -> CudaGraphCache:  # noqa: N802
    """The cache for a module's forward under ``torch.inference_mode`` (rollouts): warm-up inside the first call of
    a shape, one memory pool for all shapes. ``module``'s forward must be a pure function of its input."""
    return CudaGraphCache(module, warmup=warmup, pure=True, inference=True, share_pool=True, max_shapes=max_shapes,
                          name="inference copy")


def CudaGraphStep(step: Callable[..., Any], warmup: int = 3, enabled: bool = True,  # noqa: N802
                  capture_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                  ) -> CudaGraphCache:
    """The cache for a training step (forward, backward, optimizer step) of one minibatch.

    What ``step`` must do to be capturable: set gradients to None before backward
    (``optimizer.zero_grad(set_to_none=True)``: the captured backward then writes them at the same addresses on every
    replay); read everything but its inputs from tensors that persist and change only in place (parameters, optimizer
    state with ``torch.optim.Adam(capturable=True)``, hyperparameters as 0-d tensors updated with ``fill_``); not
    synchronise with the host (no ``.item()``, no data-dependent Python branches)."""
    return CudaGraphCache(step, warmup=warmup, pure=False, enabled=enabled, capture_context=capture_context,
                          name="training step")
