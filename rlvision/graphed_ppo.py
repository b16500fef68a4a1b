"""SB3's PPO with a static-shape update that CUDA graphs can replay: :class:`GraphedPPO`.

At PPO's minibatch (256 frames) a mobile encoder's update on a GPU is bound by kernel launches and host round
trips, not arithmetic: SB3's ``PPO.train`` gathers every minibatch in NumPy, copies it to the device, launches the
forward, backward and optimizer kernels one by one and reads five numbers back (``.item()``) before the next
minibatch. ``GraphedPPO`` computes the same loss in the same order of operations but

- copies the rollout to the device once per update (uint8 images stay uint8) and gathers minibatches there by index
  (the permutation is SB3's: ``np.random.permutation`` per epoch, so seeded runs match SB3's PPO);
- runs each minibatch's loss, backward, gradient clipping and Adam step as one :class:`CudaGraphStep` call: on CUDA
  captured once per minibatch size and replayed (Adam made ``capturable``, its learning rate a tensor updated in
  place; clip range and coefficients likewise); off CUDA the same step runs eagerly;
- keeps the logged statistics on the device and reads them back once per update.

The logs, checkpoints (``save``/``load``) and hyperparameters are SB3's. ``target_kl`` (decides on the host between
minibatches) and gSDE (replaces its noise tensors every rollout) use SB3's own ``train``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.utils import explained_variance
from torch.distributions import Distribution

from .cuda_graphs import CudaGraphStep


@contextlib.contextmanager
def _no_distribution_checks():
    """torch.distributions checks its arguments on the host (a sync that cannot be captured): off while capturing."""
    saved = Distribution._validate_args
    Distribution._validate_args = False
    try:
        yield
    finally:
        Distribution._validate_args = saved


class _StaticRollout:
    """The rollout buffer flattened to (n_steps * n_envs, ...) on the device, in tensors that persist across updates
    (a captured step reads them where they are), plus the update's scalar hyperparameters as 0-d tensors."""

    FIELDS = ("actions", "values", "log_probs", "advantages", "returns")

    def __init__(self, buffer, observation_space: spaces.Space, device: torch.device):
        n = buffer.buffer_size * buffer.n_envs
        obs = buffer.observations
        spaces_ = observation_space.spaces if isinstance(obs, dict) else None

        def alloc(array: np.ndarray, space: spaces.Space | None = None) -> torch.Tensor:
            # images keep their uint8 values (exact: SB3 turns either into float / 255), a quarter of the bytes
            dtype = torch.uint8 if space is not None and space.dtype == np.uint8 else torch.float32
            return torch.empty((n, *array.shape[2:]), dtype=dtype, device=device)

        self.obs = ({k: alloc(v, spaces_[k]) for k, v in obs.items()} if spaces_ is not None
                    else alloc(obs, observation_space))
        self.data = {name: alloc(getattr(buffer, name)) for name in self.FIELDS}
        self.shapes = self._shapes(buffer)
        scalar = dict(dtype=torch.float32, device=device)
        self.clip_low, self.clip_high, self.clip_range = (torch.zeros((), **scalar) for _ in range(3))
        self.vf_low, self.vf_high = torch.zeros((), **scalar), torch.zeros((), **scalar)
        self.ent_coef, self.vf_coef = torch.zeros((), **scalar), torch.zeros((), **scalar)

    @staticmethod
    def _shapes(buffer) -> tuple:
        obs = buffer.observations
        return (tuple((k, v.shape) for k, v in obs.items()) if isinstance(obs, dict) else obs.shape,
                *(getattr(buffer, name).shape for name in _StaticRollout.FIELDS))

    def fits(self, buffer) -> bool:
        return self._shapes(buffer) == self.shapes

    @torch.no_grad()
    def load(self, buffer) -> None:
        """Copy the buffer in (its arrays are (n_steps, n_envs, ...); row ``env * n_steps + step``, SB3's order)."""
        def put(dst: torch.Tensor, array: np.ndarray) -> None:
            n_steps, n_envs = array.shape[:2]
            dst.view(n_envs, n_steps, *dst.shape[1:]).copy_(torch.from_numpy(array).transpose(0, 1))

        if isinstance(self.obs, dict):
            for key, dst in self.obs.items():
                put(dst, buffer.observations[key])
        else:
            put(self.obs, buffer.observations)
        for name, dst in self.data.items():
            put(dst, getattr(buffer, name))

    def set_scalars(self, clip_range: float, clip_range_vf: float | None, ent_coef: float, vf_coef: float) -> None:
        # each bound computed in float64 like SB3's Python arithmetic, then stored in float32 as torch casts scalars
        self.clip_low.fill_(1 - clip_range)
        self.clip_high.fill_(1 + clip_range)
        self.clip_range.fill_(clip_range)
        if clip_range_vf is not None:
            self.vf_low.fill_(-clip_range_vf)
            self.vf_high.fill_(clip_range_vf)
        self.ent_coef.fill_(ent_coef)
        self.vf_coef.fill_(vf_coef)


class GraphedPPO(PPO):
    """SB3's ``PPO`` (every argument the same) whose update replays one CUDA graph per minibatch on CUDA.

    :param cuda_graph: capture the minibatch update on CUDA (default). ``False``, or any device but CUDA, runs the
        same static-shape update eagerly. A step that cannot be captured (a hook that synchronises, an op without
        graph support) warns once and runs eagerly, with the same results.
    :param graph_warmup: eager minibatch updates (real ones, on a side stream) before each capture.
    """

    def __init__(self, *args: Any, cuda_graph: bool = True, graph_warmup: int = 3, **kwargs: Any):
        if graph_warmup < 1:
            raise ValueError(f"graph_warmup must be >= 1 (Adam creates its state in an eager step), got "
                             f"{graph_warmup}.")
        self.cuda_graph = cuda_graph
        self.graph_warmup = graph_warmup
        self._update = None
        super().__init__(*args, **kwargs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_update", "graph_step"]

    def _setup_model(self) -> None:
        super()._setup_model()
        self._update = None  # (the static rollout and what the graphs read, from the first update on)
        self.graph_step = CudaGraphStep(self._minibatch_update, warmup=self.graph_warmup,
                                        enabled=self.graphs_enabled, capture_context=_no_distribution_checks)

    @property
    def graphs_enabled(self) -> bool:
        """True when the update is captured (``cuda_graph`` and the model on CUDA)."""
        return bool(self.cuda_graph) and self.device.type == "cuda"

    def cuda_graph_caches(self) -> list:
        """The CUDA-graph caches of the update (rlvision.profiler times their replays)."""
        return [self.graph_step]

    @property
    def graph_captures(self) -> int:
        """How many minibatch updates were captured so far (0 off CUDA)."""
        return self.graph_step.captures

    def _update_learning_rate(self, optimizers) -> None:
        """SB3's, but a tensor learning rate (a captured Adam step reads it) is updated in place."""
        lr = self.lr_schedule(self._current_progress_remaining)
        self.logger.record("train/learning_rate", lr)
        for optimizer in optimizers if isinstance(optimizers, list) else [optimizers]:
            for group in optimizer.param_groups:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"].fill_(lr)
                else:
                    group["lr"] = lr

    def _prepare_optimizer(self) -> None:
        """Make the optimizer capturable (step counters on the device, learning rate a device tensor) for graphs;
        off graphs, put a learning rate loaded from a graphed run back to a float."""
        optimizer = self.policy.optimizer
        for group in optimizer.param_groups:
            if not self.graphs_enabled:
                if isinstance(group["lr"], torch.Tensor):
                    group["lr"] = group["lr"].item()
                continue
            group["capturable"] = True
            device = group["params"][0].device  # (cuda:0; the model's device may read just "cuda")
            if not isinstance(group["lr"], torch.Tensor) or group["lr"].device != device:
                group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                if "step" in state and state["step"].device != p.device:
                    state["step"] = state["step"].to(p.device, torch.float32)

    def _signature(self) -> tuple:
        """Everything a captured step reads besides its inputs and the static rollout: if any of it was replaced
        (load, set_parameters, a new optimizer, .to(device)), the graphs are captured again."""
        optimizer = self.policy.optimizer
        tensors = [*self.policy.parameters(), *self.policy.buffers()]
        tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
        tensors += [g["lr"] for g in optimizer.param_groups if isinstance(g["lr"], torch.Tensor)]
        return (id(optimizer), tuple(t.data_ptr() for t in tensors), self.max_grad_norm, self.normalize_advantage,
                self.clip_range_vf is None)

    def _minibatch_update(self, idx: torch.Tensor) -> torch.Tensor:
        """SB3's PPO loss, backward, gradient clipping and optimizer step on rows ``idx`` of the rollout.
        (batch,) int64 -> (6,) [policy loss, value loss, entropy loss, clip fraction, approx KL, loss]."""
        rollout = self._update[0]
        data = rollout.data
        observations = ({k: v[idx] for k, v in rollout.obs.items()} if isinstance(rollout.obs, dict)
                        else rollout.obs[idx])
        actions = data["actions"][idx]
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        values, log_prob, entropy = self.policy.evaluate_actions(observations, actions)
        values = values.flatten()
        advantages = data["advantages"][idx].flatten()
        if self.normalize_advantage and len(advantages) > 1:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        old_log_prob = data["log_probs"][idx].flatten()
        ratio = torch.exp(log_prob - old_log_prob)
        policy_loss_1 = advantages * ratio
        policy_loss_2 = advantages * torch.clamp(ratio, rollout.clip_low, rollout.clip_high)
        policy_loss = -torch.min(policy_loss_1, policy_loss_2).mean()
        clip_fraction = torch.mean((torch.abs(ratio - 1) > rollout.clip_range).float())
        if self.clip_range_vf is None:
            values_pred = values
        else:
            old_values = data["values"][idx].flatten()
            values_pred = old_values + torch.clamp(values - old_values, rollout.vf_low, rollout.vf_high)
        value_loss = F.mse_loss(data["returns"][idx].flatten(), values_pred)
        entropy_loss = -torch.mean(-log_prob) if entropy is None else -torch.mean(entropy)
        loss = policy_loss + rollout.ent_coef * entropy_loss + rollout.vf_coef * value_loss
        with torch.no_grad():
            log_ratio = log_prob - old_log_prob
            approx_kl = torch.mean((torch.exp(log_ratio) - 1) - log_ratio)
        self.policy.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.policy.optimizer.step()
        return torch.stack([policy_loss, value_loss, entropy_loss, clip_fraction, approx_kl, loss]).detach()

    def _prepare_update(self) -> _StaticRollout:
        buffer = self.rollout_buffer
        if self._update is None or not self._update[0].fits(buffer):
            self._update = (_StaticRollout(buffer, self.observation_space, self.device), None)
            self.graph_step.reset()
        rollout, signature = self._update
        self.graph_step.enabled = self.graphs_enabled
        self._prepare_optimizer()
        if self._signature() != signature:  # (as the last update left it)
            self.graph_step.reset()
        return rollout

    def train(self) -> None:
        """One PPO update on the collected rollout (SB3's algorithm and logs; see the module docstring)."""
        if self.target_kl is not None or self.use_sde:
            return super().train()
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        clip_range_vf = None if self.clip_range_vf is None else self.clip_range_vf(self._current_progress_remaining)
        rollout = self._prepare_update()
        rollout.load(self.rollout_buffer)
        rollout.set_scalars(clip_range, clip_range_vf, self.ent_coef, self.vf_coef)

        n = self.rollout_buffer.buffer_size * self.rollout_buffer.n_envs
        batches = math.ceil(n / self.batch_size)
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # pg, value, entropy loss, clip fraction
        # SB3 draws one permutation per epoch and nothing else between: drawn up front, they are the same, and one
        # copy to the device (a copy from pageable memory waits for the device) serves every epoch
        orders = torch.from_numpy(np.stack([np.random.permutation(n) for _ in range(self.n_epochs)])).to(self.device)
        for order in orders:
            kl = torch.zeros((), dtype=torch.float64, device=self.device)  # SB3 logs the last epoch's KL
            for start in range(0, n, self.batch_size):
                stats = self.graph_step(order[start:start + self.batch_size])
                sums += stats[:4]
                kl += stats[4]
            self._n_updates += 1
        self._update = (rollout, self._signature())  # what the graphs read (Adam's state exists by now)
        pg, value, entropy, clip, kl, loss = torch.cat(
            [sums / (batches * self.n_epochs), (kl / batches)[None], stats[5:].double()]).tolist()

        buffer = self.rollout_buffer  # (SB3 computes this on its flattened, env-major copy: same order here)
        explained_var = explained_variance(buffer.values.swapaxes(0, 1).flatten(),
                                           buffer.returns.swapaxes(0, 1).flatten())
        self.logger.record("train/entropy_loss", entropy)
        self.logger.record("train/policy_gradient_loss", pg)
        self.logger.record("train/value_loss", value)
        self.logger.record("train/approx_kl", kl)
        self.logger.record("train/clip_fraction", clip)
        self.logger.record("train/loss", loss)
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", torch.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
