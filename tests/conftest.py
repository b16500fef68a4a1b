import os
import tempfile

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

torch.set_num_threads(min(2, os.cpu_count() or 1))
# exported rollout graphs (rlvision.ort_backend) go to a folder of this test session, not the user's cache
os.environ["RLVISION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rlvision-test-cache-")

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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
