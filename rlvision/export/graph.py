"""What goes into an exported file: the SB3 policy with its encoders folded, as one module from raw observations to
the deterministic action (and the value, the distribution's parameters, an LSTM state where asked); sample inputs
and the SB3 model's own outputs for them."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from ..algorithms import ALGORITHMS
from ..policies import policy_outputs

SUPPORTED = tuple(name for name, row in ALGORITHMS.items() if row.exportable)


def _algo_name(model) -> str:
    return type(model).__name__.lower()


def _folded_policy(model) -> nn.Module:
    """A CPU copy of the policy in eval mode whose rlvision extractors are their folded inference twins (BatchNorm in
    the convolutions, the plain forward: no inference-copy bookkeeping, no augmentation)."""
    from ..extractors import VisionExtractor, _uncompiled
    from ..inference_copy import InferenceCopy

    source = model.policy  # rebuilt, not deep-copied: a policy keeps its last distribution (non-leaf tensors)
    # SB3's constructor parameters leave some keywords out (share_features_extractor, RecurrentPPO's LSTM sizes):
    # the model's policy_kwargs, as SB3 itself passes them when it builds the policy, fill them in
    params = source._get_constructor_parameters()
    accepted = inspect.signature(type(source)).parameters
    params.update({k: v for k, v in getattr(model, "policy_kwargs", {}).items() if k in accepted})
    policy = type(source)(**params)
    policy.load_state_dict(source.state_dict())
    policy = policy.to("cpu").eval()
    folded: dict[int, nn.Module] = {}
    for parent in list(policy.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, VisionExtractor):
                if id(child) not in folded:
                    twin = InferenceCopy(child.encoder, channels_last=False, prepare=_uncompiled, cuda_graph=False)
                    twin.sync()
                    folded[id(child)] = twin.model
                setattr(parent, name, folded[id(child)])
    return policy.requires_grad_(False)


class _PolicyGraph(nn.Module):
    """What goes into the file: raw observations (and a mask) -> action (, value) (, distribution parameters)."""

    def __init__(self, model, with_value: bool, logits: bool):
        super().__init__()
        from stable_baselines3.common.distributions import (CategoricalDistribution, DiagGaussianDistribution,
                                                            MultiCategoricalDistribution)

        self.algo = _algo_name(model)
        if self.algo not in SUPPORTED:
            raise ValueError(f"Cannot export {type(model).__name__}; supported: {', '.join(SUPPORTED)}.")
        row = ALGORITHMS[self.algo]
        self.head = row.head
        self.policy = _folded_policy(model)
        self.space = model.observation_space
        self.keys = list(self.space.spaces) if isinstance(self.space, spaces.Dict) else None
        self.with_value, self.logits = with_value, logits
        self.masked = row.masked
        self.recurrent = row.recurrent  # the actor's LSTM state in and out, episode starts in
        action_space = model.action_space
        box = isinstance(action_space, spaces.Box)
        if box:
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))
        self.actor_critic = row.head == "distribution"  # SB3's action distribution and a state value
        if with_value and (not self.actor_critic or self.recurrent):
            raise ValueError(f"with_value: {type(model).__name__} has no state-value critic to export; export "
                             f"without it (Q values of SAC/TD3 critics and RecurrentPPO's value are not exported).")
        if self.actor_critic:
            dist = self.policy.action_dist
            if isinstance(dist, CategoricalDistribution) or type(dist).__name__ == "MaskableCategoricalDistribution":
                self.kind = "categorical"
            elif isinstance(dist, MultiCategoricalDistribution):
                self.kind, self.action_dims = "multicategorical", list(dist.action_dims)
            elif isinstance(dist, DiagGaussianDistribution):
                self.kind, self.squash = "gaussian", bool(self.policy.squash_output)
            else:
                raise ValueError(f"Cannot export the {type(dist).__name__} action distribution; supported: "
                                 f"Categorical (Discrete), MultiCategorical (MultiDiscrete), DiagGaussian (Box, "
                                 f"no gSDE).")
        elif row.head == "squashed_gaussian":
            if self.policy.actor.use_sde:
                raise ValueError("Cannot export a SAC-style actor with gSDE (use_sde=True).")
            self.kind = "squashed"
        elif row.head == "deterministic":
            self.kind = "deterministic"
        else:  # "q", "quantile": greedy on the values per action
            self.kind = "greedy"
        if logits and self.kind == "greedy":
            raise ValueError(f"logits: {type(model).__name__} acts greedily on Q values; export without --logits.")

    def input_names(self) -> list[str]:
        return ((list(self.keys) if self.keys else ["obs"]) + (["action_mask"] if self.masked else [])
                + (["state_h", "state_c", "episode_start"] if self.recurrent else []))

    def batch_axes(self) -> list[int]:
        """The batch axis of each input (the LSTM state is (layers, batch, hidden))."""
        return [1 if name in ("state_h", "state_c") else 0 for name in self.input_names()]

    def output_names(self) -> list[str]:
        names = ["action"] + (["value"] if self.with_value else [])
        if self.recurrent:
            names += ["state_h_out", "state_c_out"]
        if self.logits:
            names += ["mean", "log_std"] if self.kind in ("gaussian", "squashed") else (
                ["mu"] if self.kind == "deterministic" else ["logits"])
        return names

    def _unscale(self, action: torch.Tensor) -> torch.Tensor:  # [-1, 1] -> the action space, as SB3's predict
        return self.low + 0.5 * (action + 1.0) * (self.high - self.low)

    def forward(self, *inputs: torch.Tensor):
        obs = dict(zip(self.keys, inputs, strict=False)) if self.keys else inputs[0]
        p = self.policy
        out: list[torch.Tensor] = []
        if self.recurrent:  # one step of the actor's LSTM, its state reset where an episode starts (as SB3)
            h, c, start = inputs[-3:]
            features = p.extract_features(obs)
            pi_features = features if p.share_features_extractor else features[0]
            keep = (1.0 - start.to(h.dtype)).view(1, -1, 1)
            hidden, (h, c) = p.lstm_actor(pi_features.unsqueeze(0), (keep * h, keep * c))
            latent_pi = p.mlp_extractor.forward_actor(hidden.squeeze(0))
            params = p.action_net(latent_pi)
            out.append(params.argmax(dim=1) if self.kind == "categorical" else
                       torch.clamp(params, self.low, self.high) if self.kind == "gaussian" else
                       torch.stack([part.argmax(dim=1) for part in torch.split(params, self.action_dims, dim=1)], 1))
            out += [h, c]
            if self.logits:
                out += [params, p.log_std.expand_as(params)] if self.kind == "gaussian" else [params]
            return tuple(out)
        outputs = policy_outputs(p, obs, self.head)
        if self.actor_critic:
            params = outputs.params
            if self.kind == "categorical":
                if self.masked:
                    params = torch.where(inputs[-1].to(torch.bool), params, torch.full_like(params, -1e8))
                action = params.argmax(dim=1)
            elif self.kind == "multicategorical":
                action = torch.stack([part.argmax(dim=1) for part in torch.split(params, self.action_dims, dim=1)],
                                     dim=1)
            else:
                action = self._unscale(torch.tanh(params)) if self.squash else torch.clamp(params, self.low, self.high)
            out.append(action)
            if self.with_value:
                out.append(outputs.value)
            if self.logits:
                out += [params, outputs.log_std.expand_as(params)] if self.kind == "gaussian" else [params]
        elif self.kind == "squashed":
            out.append(self._unscale(torch.tanh(outputs.params)))
            if self.logits:
                out += [outputs.params, outputs.log_std]
        elif self.kind == "deterministic":
            out.append(self._unscale(outputs.params))
            if self.logits:
                out.append(outputs.params)
        else:
            out.append(outputs.q.argmax(dim=1))  # SB3's greedy _predict
        return tuple(out)


def _sample_inputs(model, n: int, obs_from: str | None, seed: int = 0) -> list[np.ndarray]:
    """n observations (and masks for MaskablePPO) as the graph's inputs, from the observation space or an env."""
    space = model.observation_space
    if obs_from:
        from rlvision.envs import make_env

        env = make_env(obs_from, n_envs=1, seed=seed)
        if env.observation_space != space:
            raise ValueError(f"--obs-from {obs_from}: its observations {env.observation_space} are not the model's "
                             f"{space}; pass the env the model was trained on (and its env kwargs) or leave it out.")
        rng = np.random.default_rng(seed)
        frames = []
        obs = env.reset()
        for _ in range(n):
            frames.append(obs)
            obs, *_ = env.step(np.array([env.action_space.sample()]))
        env.close()
        del rng
        stacked = ({k: np.concatenate([f[k] for f in frames]) for k in space.spaces} if isinstance(space, spaces.Dict)
                   else np.concatenate(frames))
    else:
        space.seed(seed)
        samples = [space.sample() for _ in range(n)]
        stacked = ({k: np.stack([s[k] for s in samples]) for k in space.spaces} if isinstance(space, spaces.Dict)
                   else np.stack(samples))
    inputs = [stacked[k] for k in space.spaces] if isinstance(space, spaces.Dict) else [stacked]
    if ALGORITHMS[_algo_name(model)].recurrent:
        rng = np.random.default_rng(seed)
        layers, _, hidden = model.policy.lstm_hidden_state_shape
        inputs += [rng.standard_normal((layers, n, hidden)).astype(np.float32) for _ in range(2)]
        inputs.append((rng.random(n) < 0.3).astype(np.float32))
    if ALGORITHMS[_algo_name(model)].masked:
        rng = np.random.default_rng(seed)
        masks = rng.random((n, int(model.action_space.n))) < 0.6
        masks[np.arange(n), rng.integers(0, model.action_space.n, n)] = True  # at least one legal action
        inputs.append(masks)
    return inputs


def _reference(model, inputs: list[np.ndarray], graph: _PolicyGraph) -> list[np.ndarray]:
    """The SB3 model's own outputs for ``inputs``: predict(deterministic=True) (and predict_values)."""
    space = model.observation_space
    obs = dict(zip(space.spaces, inputs, strict=False)) if isinstance(space, spaces.Dict) else inputs[0]
    kwargs = dict(action_masks=inputs[-1]) if graph.masked else {}
    if graph.recurrent:
        kwargs = dict(state=(inputs[-3], inputs[-2]), episode_start=inputs[-1].astype(bool))
    action, state = model.predict(obs, deterministic=True, **kwargs)
    out = [np.asarray(action)]
    if graph.recurrent:
        return out + [np.asarray(state[0]), np.asarray(state[1])]
    if graph.with_value:
        with torch.no_grad():
            out.append(model.policy.predict_values(model.policy.obs_to_tensor(obs)[0]).cpu().numpy())
    return out
