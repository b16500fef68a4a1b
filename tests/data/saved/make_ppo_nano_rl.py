"""Save a PPO model with the default encoder as built at main 90905d6 (before issue 21): tests/data/saved."""
import numpy as np
import torch
from rlvision.agents import make_agent
from rlvision.envs import make_env
torch.manual_seed(0)
env = make_env("SyntheticPixel-v0", n_envs=2, seed=0, env_kwargs=dict(size=48, grid=4))
model = make_agent("ppo", env, backbone="mobilenetv4_nano_rl", seed=0, n_steps=64, batch_size=64, n_epochs=2)
model.learn(256)
model.save("tests/data/saved/ppo_nano_rl_90905d6.zip")
rng = np.random.default_rng(0)
obs = rng.integers(0, 256, (6, 3, 48, 48), dtype=np.uint8)
obs_t = torch.as_tensor(obs, device=model.device)
model.policy.set_training_mode(False)
with torch.no_grad():
    probs = model.policy.get_distribution(model.policy.obs_to_tensor(obs)[0]).distribution.probs
    values = model.policy.predict_values(model.policy.obs_to_tensor(obs)[0])
np.savez("tests/data/saved/ppo_nano_rl_90905d6.npz", obs=obs, probs=probs.numpy(), values=values.numpy())
print(probs, values.ravel())
