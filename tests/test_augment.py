"""Random-shift augmentation: per sample, a crop of the replicate-padded input, training passes only."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gymnasium import spaces

from rlvision.agents import make_agent
from rlvision.envs import make_env
from rlvision import VisionExtractor
from rlvision.layers import RandomShift


def test_each_sample_is_a_crop_of_the_padded_input_at_its_own_offset():
    shift = RandomShift(2).train()
    x = torch.rand(1, 3, 10, 12).expand(32, -1, -1, -1).contiguous()  # 32 copies of one image
    out = shift(x)
    padded = F.pad(x[:1], (2,) * 4, mode="replicate")[0]
    offsets = []
    for sample in out:
        matches = [(t, left) for t in range(5) for left in range(5)
                   if torch.equal(sample, padded[:, t:t + 10, left:left + 12])]
        assert matches, "not a crop of the padded image"
        offsets.append(matches[0])
    assert len(set(offsets)) > 5  # drawn per sample, not once per batch
    assert torch.equal(shift.eval()(x), x)  # eval mode: identity
    with pytest.raises(ValueError, match="pad must be an int >= 1"):
        RandomShift(0)


def test_extractor_augments_training_passes_only():
    space = spaces.Box(0, 255, (4, 36, 36), np.uint8)
    ext = VisionExtractor(space, "nature_cnn", augment_shift=4, inference_copy=False)
    plain = VisionExtractor(space, "nature_cnn")
    plain.load_state_dict(ext.state_dict())
    x = torch.rand(8, 4, 36, 36)
    ext.train()
    assert not torch.allclose(ext(x), ext(x))  # a new shift each training pass
    ext.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(ext(x), plain(x), atol=1e-6)  # rollouts and predict see the frame as it is
    with pytest.raises(ValueError, match="augment_shift must be an int >= 0"):
        VisionExtractor(space, "nature_cnn", augment_shift=-1)


def test_ppo_with_augmentation_acts_like_the_same_weights_without_it(tmp_path):
    env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=48))
    model = make_agent("ppo", env, seed=0, n_steps=32, batch_size=32, n_epochs=1,
                       backbone_kwargs=dict(augment_shift=4))
    model.learn(64)
    twin = make_agent("ppo", env, seed=1, n_steps=32, batch_size=32, n_epochs=1)
    twin.policy.load_state_dict(model.policy.state_dict())
    obs = np.stack([env.observation_space.sample() for _ in range(32)])
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], twin.predict(obs, deterministic=True)[0])
    env.close()
