"""Exporters without the lines that are not the user's business.

torch.onnx's dynamo exporter, torch.export and ExecuTorch print progress lines, one warning per torchvision operator
they cannot register when torchvision is not installed (rlvision never needs it), torchao's failures to load CUDA
kernels on a CPU machine, a FutureWarning of torch.export about ``LeafSpec`` per exported graph, and ExecuTorch's
runtime reports from C++ how it read the CPU. None of it says anything about the user's model: errors still raise,
and any other warning still shows.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

# loggers that only report the environment (no torchvision, no CUDA kernels for torchao, deprecations inside torch)
NOISY_LOGGERS = ("torch.onnx._internal.exporter._registration", "torch.utils._pytree", "torchao")


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Inside: the loggers of :data:`NOISY_LOGGERS` at ERROR, torch.export's ``LeafSpec`` FutureWarning ignored and
    stdout (progress lines) discarded; restored on exit."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=False):
            logger.setLevel(level)


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Hold back what native code writes to file descriptor 2 inside (ExecuTorch's XNNPACK backend reports how it
    read the CPU when a program is loaded): dropped when the block succeeds, written to stderr when it raises, so a
    failure keeps the runtime's own explanation."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))
