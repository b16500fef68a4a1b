"""Save a PPO model with the default encoder as built at the checked-out commit, with its action probabilities and
values on fixed observations: tests/data/saved/ppo_nano_rl_<TAG>.zip/.npz. Made at 90905d6 (before issue 21: BatchNorm,
nothing pinned) and at 90694ce (issue 21's first preset, frozen_bn, pinned in the saved kwargs).

    python tests/data/saved/make_ppo_nano_rl.py TAG
"""
import sys

import numpy as np
import torch
from rlvision.agents import make_agent
from rlvision.envs import make_env
torch.manual_seed(0)
env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=48, grid=4))
model = make_agent("ppo", env, backbone="mobilenetv4_nano_rl", seed=0, n_steps=64, batch_size=64, n_epochs=2)
model.learn(256)
tag = sys.argv[1]
model.save(f"tests/data/saved/ppo_nano_rl_{tag}.zip")
rng = np.random.default_rng(0)
obs = rng.integers(0, 256, (6, 3, 48, 48), dtype=np.uint8)
obs_t = torch.as_tensor(obs, device=model.device)
model.policy.set_training_mode(False)
with torch.no_grad():
    probs = model.policy.get_distribution(model.policy.obs_to_tensor(obs)[0]).distribution.probs
    values = model.policy.predict_values(model.policy.obs_to_tensor(obs)[0])
np.savez(f"tests/data/saved/ppo_nano_rl_{tag}.npz", obs=obs, probs=probs.numpy(), values=values.numpy())
print(probs, values.ravel())
