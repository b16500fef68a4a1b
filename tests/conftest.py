"""Shared fixtures. Nothing happens at import (test modules import helpers from here as ``conftest``): the session's
settings are made in :func:`pytest_configure` and undone in :func:`pytest_unconfigure`."""

import os
import random
import shutil
import tempfile

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

HAS_CUDA = torch.cuda.is_available()
_SESSION: dict = {}


def pytest_configure(config):
    """One folder for everything the suite writes outside ``tmp_path`` (removed when the session ends): exported
    rollout graphs (rlvision.ort_backend), the empty log folder SB3 makes for every ``learn`` without a log
    folder, torch.compile's kernels. Subprocesses the tests start inherit these variables."""
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    folder = tempfile.mkdtemp(prefix="rlvision-test-")
    _SESSION.update(folder=folder, environ={key: os.environ.get(key) for key in _ENV})
    for key, sub in _ENV.items():
        os.environ[key] = os.path.join(folder, sub)


def pytest_unconfigure(config):
    for key, value in _SESSION.pop("environ", {}).items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if "folder" in _SESSION:
        shutil.rmtree(_SESSION.pop("folder"), ignore_errors=True)


_ENV = {"RLVISION_CACHE_DIR": "onnx-cache", "SB3_LOGDIR": "sb3-logs", "TORCHINDUCTOR_CACHE_DIR": "inductor"}


@pytest.fixture(autouse=True)
def _isolated():
    """Every test starts from the same global state, whatever ran before it (the suite passes in any order:
    ``make test-random``), and a test that leaves process-wide state changed fails itself, not a later test.

    Seeded: Python's ``random``, NumPy's global generator (SB3's replay buffers sample from it) and torch.
    Checked afterwards: ``torch.Tensor.backward`` (a profiler patches it while it runs), the working folder, the
    default dtype and autograd mode. Restored silently: torch's thread count (``--threads`` of the commands sets it
    for the process) and torch.distributions' argument checks (the first ``torch.compile`` in a process turns them
    off for good, which changes how many operators a policy step runs)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    before = dict(backward=torch.Tensor.backward, cwd=os.getcwd(), dtype=torch.get_default_dtype(),
                  grad=torch.is_grad_enabled())
    threads = torch.get_num_threads()
    validate = torch.distributions.Distribution._validate_args
    yield
    after = dict(backward=torch.Tensor.backward, cwd=os.getcwd(), dtype=torch.get_default_dtype(),
                 grad=torch.is_grad_enabled())
    torch.Tensor.backward = before["backward"]
    os.chdir(before["cwd"])
    torch.set_default_dtype(before["dtype"])
    torch.set_grad_enabled(before["grad"])
    torch.set_num_threads(threads)
    torch.distributions.Distribution.set_default_validate_args(validate)  # the first torch.compile turns it off
    changed = [key for key in before if after[key] != before[key]]
    if changed:
        pytest.fail(f"the test left global state changed (now restored): {changed}")


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> str:
    """Every available device: the CPU always, CUDA when present (skipped, with the reason, when not)."""
    if request.param == "cuda" and not HAS_CUDA:
        pytest.skip("no CUDA device on this machine")
    return request.param


@pytest.fixture
def exact_cuda():
    """Full float32 on CUDA for the test (TF32 off for cuDNN convolutions and matmuls), where exactness is the
    point; the settings are restored afterwards. No effect on CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def tolerance(device: str) -> dict:
    """atol/rtol for comparing two float32 formulations of one network on ``device`` at its current precision:
    float32 rounding (CPU, or CUDA with TF32 off), or TF32's 10-bit mantissa in cuDNN convolutions (CUDA default)."""
    tf32 = device == "cuda" and (torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
    return dict(atol=2e-2, rtol=2e-2) if tf32 else dict(atol=1e-5, rtol=1e-4)


class WithPosition(gym.ObservationWrapper):
    """Dict observation: the (channel-last) image of SyntheticPixelEnv and the agent's cell as a vector."""

    def __init__(self, env):
        super().__init__(env)
        self.observation_space = spaces.Dict({"pixels": env.observation_space,
                                              "position": spaces.Box(0, 10, (2,), dtype=np.float32)})

    def observation(self, obs):
        return {"pixels": obs, "position": self.unwrapped._agent.astype(np.float32)}
