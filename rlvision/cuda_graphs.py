"""Capture once, replay many: CUDA graphs for any module or step function (nothing here knows SB3).

A small network at RL batch sizes is bound by kernel launches, not arithmetic: a MobileNet forward launches ~100
kernels, its backward and Adam step several hundred more. A CUDA graph replays all of them as one launch.

- :class:`CudaGraphRunner`: ``module(x)`` under ``torch.inference_mode``, one graph per input shape (rollouts;
  used by :class:`rlvision.inference.InferenceCopy`).
- :class:`CudaGraphStep`: a whole training step (forward, backward, optimizer step) of one minibatch, one graph per
  input shape (used by :class:`rlvision.ppo.GraphedPPO`).

Both read every tensor other than their inputs where it lives when captured: update parameters, optimizer state and
hyperparameters in place (``copy_``, ``fill_``), or call ``reset()`` after replacing one.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable

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


class CudaGraphRunner:
    """Replay ``module(x)`` from a CUDA graph captured for each input shape, under ``torch.inference_mode``.

    The graph reads the module's parameters and buffers where they are: change them only in place (``copy_``) and
    every graph stays valid; after replacing a tensor or moving the module, call :meth:`reset`. The returned tensor
    is the graph's static output, overwritten by the next replay of that shape: clone it to keep it. At most
    ``max_shapes`` shapes are kept (then the oldest is dropped). All graphs share one memory pool.
    If capturing fails (an op that cannot be captured, e.g. one that synchronises with the host), the runner
    raises the capture error once; callers fall back to eager execution (see :class:`InferenceCopy`).

    :param module: any module; its forward must be a pure function of ``x`` and its tensors.
    :param warmup: eager calls on a side stream before capture (cuDNN picks its algorithms there).
    """

    def __init__(self, module: nn.Module, max_shapes: int = 8, warmup: int = 2):
        self.module, self.max_shapes, self.warmup = module, max_shapes, warmup
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.pool = None
        self.captures = 0

    def reset(self) -> None:
        """Drop every graph (after the module's tensors were replaced rather than updated in place)."""
        self.graphs.clear()
        self.pool = None

    def _capture(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        static_in = torch.empty_like(x)
        static_in.copy_(x)
        with side_stream(x.device), torch.inference_mode():
            for _ in range(self.warmup):
                self.module(static_in)
        graph, static_out = capture(lambda: self.module(static_in), x.device, self.pool, inference=True)
        if self.pool is None:
            self.pool = graph.pool()
        self.captures += 1
        return graph, static_in, static_out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = _shape_key([x])
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_shapes:
                self.graphs.pop(next(iter(self.graphs)))
            entry = self.graphs[key] = self._capture(x)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out


class CudaGraphStep:
    """``step(*inputs)`` (one training step: forward, backward, optimizer step) replayed from a CUDA graph.

    For each input shape the first ``warmup`` calls run eagerly on a side stream (real steps: cuDNN picks its
    algorithms, the optimizer creates its state), the next call is captured and replayed, every later one only
    replayed. The returned tensors are the graph's static outputs, overwritten by the next call of that shape.
    Off CUDA, or once a capture failed (warned once, with the reason), ``step`` simply runs eagerly: same results.

    What ``step`` must do to be capturable:

    - set gradients to None before backward (``optimizer.zero_grad(set_to_none=True)``): the captured backward then
      writes them, at the same addresses, on every replay;
    - read everything but its inputs from tensors that persist and change only in place: parameters, optimizer
      state (``torch.optim.Adam(capturable=True)``), hyperparameters that change between calls as 0-d tensors
      (Adam's ``lr`` as a tensor, updated with ``fill_``); call :meth:`reset` after replacing any of them;
    - not synchronise with the host (no ``.item()``, no data-dependent Python branches).

    Each shape's graph has its own memory pool (graphs of different shapes never overwrite each other's tensors).

    :param capture_context: entered around each capture (e.g. a context that turns off host-side argument checks).
    """

    def __init__(self, step: Callable[..., Any], warmup: int = 3, enabled: bool = True,
                 capture_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1 (optimizer state is created in an eager step), got {warmup}.")
        self.step, self.warmup, self.enabled, self.capture_context = step, warmup, enabled, capture_context
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], Any]] = {}
        self.calls: dict[tuple, int] = {}
        self.captures = 0
        self.error: str | None = None

    def reset(self) -> None:
        """Drop every graph; the next calls warm up and capture again."""
        self.graphs.clear()
        self.calls.clear()

    def __call__(self, *inputs: torch.Tensor) -> Any:
        if not self.enabled or self.error is not None or not all(t.is_cuda for t in inputs) or not inputs:
            return self.step(*inputs)
        key = _shape_key(inputs)
        entry = self.graphs.get(key)
        if entry is None:
            calls = self.calls[key] = self.calls.get(key, 0) + 1
            if calls <= self.warmup:
                with side_stream(inputs[0].device):
                    return self.step(*inputs)
            static = [t.clone() for t in inputs]
            try:
                with self.capture_context():
                    graph, out = capture(lambda: self.step(*static), inputs[0].device)
            except Exception as error:  # noqa: BLE001  (any capture failure: run eagerly from now on)
                self.error = f"{type(error).__name__}: {error}"
                self.reset()
                warnings.warn(f"CUDA graph capture of the training step failed, it runs eagerly: {self.error}",
                              RuntimeWarning, stacklevel=2)
                return self.step(*inputs)
            entry = self.graphs[key] = graph, static, out
            self.captures += 1
        return self.replay(entry, inputs)

    def replay(self, entry: tuple, inputs: tuple[torch.Tensor, ...]) -> Any:
        """Copy ``inputs`` into the captured graph ``entry``'s static inputs and replay it (its own method, so that
        rlvision.profiler can time replays: hooks inside the step do not run in a replay)."""
        graph, static, out = entry
        for dst, src in zip(static, inputs):
            dst.copy_(src)
        graph.replay()
        return out
