"""Save a PPO model built with the default encoder of the checked-out commit (no backbone named), with its action
probabilities and values on fixed observations: tests/data/saved/ppo_default_<TAG>.zip/.npz. Made at 61270d4, when
the default was nature_cnn (issue 21); such zips must keep loading and acting as nature_cnn whatever the default
becomes.

    python tests/data/saved/make_ppo_default.py TAG
"""
import sys

import numpy as np
import torch
from rlvision.agents import make_agent
from rlvision.envs import make_env

torch.manual_seed(0)
env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=48, grid=4))
model = make_agent("ppo", env, seed=0, n_steps=64, batch_size=64, n_epochs=2)
model.learn(256)
tag = sys.argv[1]
model.save(f"tests/data/saved/ppo_default_{tag}.zip")
rng = np.random.default_rng(0)
obs = rng.integers(0, 256, (6, 3, 48, 48), dtype=np.uint8)
model.policy.set_training_mode(False)
with torch.no_grad():
    probs = model.policy.get_distribution(model.policy.obs_to_tensor(obs)[0]).distribution.probs
    values = model.policy.predict_values(model.policy.obs_to_tensor(obs)[0])
np.savez(f"tests/data/saved/ppo_default_{tag}.npz", obs=obs, probs=probs.numpy(), values=values.numpy())
print(model.policy_kwargs["features_extractor_kwargs"]["backbone"], probs, values.ravel())
