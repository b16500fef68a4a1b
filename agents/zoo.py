"""RL Zoo hyperparameter files with an rlvision encoder: ``python -m rlvision.agents.zoo``.

RL Zoo cannot name a custom features extractor in its YAML by itself (Zoo issues #300, #316): it evaluates the
``policy_kwargs`` string in its own namespace. This writes a Zoo YAML whose ``policy_kwargs`` string imports rlvision
there, with rlvision's defaults for the algorithm (``rlvision.agents.DEFAULTS``); edit the file like any Zoo file.

    python -m rlvision.agents.zoo --algo ppo --env SyntheticPixel-v0 --backbone mnv4_conv_small > ppo.yml
    python -m rl_zoo3.train --algo ppo --env SyntheticPixel-v0 --gym-packages rlvision.envs -conf ppo.yml -f logs
    python -m rl_zoo3.enjoy --algo ppo --env SyntheticPixel-v0 --gym-packages rlvision.envs -f logs --no-render

``--gym-packages rlvision.envs`` registers the synthetic envs; Atari ids get Zoo's AtariWrapper and a 4-frame
stack (with ``frameskip: 1`` for ``ALE/*-v5``), MiniGrid ids the RGB partial-view wrappers. Zoo names RecurrentPPO
``ppo_lstm``; MaskablePPO is not in Zoo.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from rlvision import backbone_info
from rlvision.algorithms import ALGORITHMS
from rlvision.envs.factory import env_family
from rlvision.extractors import DEFAULT_BACKBONE
from rlvision.commands import command_parser

from .factory import DEFAULTS, policy_name

# Zoo's name -> ours, read from rlvision.algorithms (Zoo calls RecurrentPPO "ppo_lstm" and has no MaskablePPO)
ZOO_ALGOS = {row.zoo_name: name for name, row in ALGORITHMS.items() if row.zoo_name}


def zoo_hyperparams(algo: str, env_id: str, backbone: str = DEFAULT_BACKBONE, n_envs: int = 8,
                    n_timesteps: int = 1_000_000, **backbone_kwargs: Any) -> dict[str, dict[str, Any]]:
    """``{env_id: {...}}`` for a Zoo YAML: rlvision's defaults for ``algo`` (Zoo's name) and the encoder string."""
    if algo not in ZOO_ALGOS:
        raise ValueError(f"Unknown Zoo algo {algo!r}; choose one of {sorted(ZOO_ALGOS)} (RecurrentPPO is 'ppo_lstm').")
    ours = ZOO_ALGOS[algo]
    backbone_info(backbone)  # unknown names fail here, with the list
    args = ", ".join([repr(backbone), f"algo={ours!r}"] + [f"{k}={v!r}" for k, v in backbone_kwargs.items()])
    kwargs = f"__import__('rlvision').policy_kwargs({args})"
    row = ALGORITHMS[ours]
    if row.optimizer == "rmsprop":  # as make_agent: RL Zoo's RMSprop for A2C (Zoo's namespace has RMSpropTFLike)
        kwargs = f"dict({kwargs}, optimizer_class=RMSpropTFLike, optimizer_kwargs=dict(eps=1e-5))"
    entry: dict[str, Any] = dict(policy=policy_name(ours, None), n_envs=n_envs, n_timesteps=float(n_timesteps),
                                 policy_kwargs=kwargs, **DEFAULTS[ours])
    family = env_family(env_id)
    if family == "atari":
        entry.update(env_wrapper=["stable_baselines3.common.atari_wrappers.AtariWrapper"], frame_stack=4)
        if env_id.startswith("ALE/"):
            entry["env_kwargs"] = dict(frameskip=1)  # AtariWrapper skips 4 frames; v5 would skip 4 more
    elif family == "minigrid":
        entry["env_wrapper"] = ["minigrid.wrappers.RGBImgPartialObsWrapper", "minigrid.wrappers.ImgObsWrapper"]
    if row.action_noise_std is not None:  # make_agent's exploration noise, in Zoo's spelling
        entry.update(noise_type="normal", noise_std=row.action_noise_std)
    return {env_id: entry}


def main(argv: list[str] | None = None) -> str:
    parser = command_parser("zoo", __doc__)
    parser.add_argument("--algo", required=True, help=f"Zoo's algorithm name: {', '.join(ZOO_ALGOS)}")
    parser.add_argument("--env", required=True, help="the env id you pass to rl_zoo3.train")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE,
                        help=f"the rlvision encoder (default {DEFAULT_BACKBONE})")
    parser.add_argument("--backbone-kwargs", type=yaml.safe_load, default={}, help="YAML dict, e.g. '{norm: gn}'")
    parser.add_argument("--n-envs", type=int, default=8, help='parallel envs in the Zoo file (default 8)')
    parser.add_argument("--n-timesteps", type=int, default=1_000_000, help="Zoo's n_timesteps (default 1,000,000)")
    parser.add_argument("--out", help="write here (default: stdout)")
    args = parser.parse_args(argv)
    try:
        text = yaml.safe_dump(zoo_hyperparams(args.algo, args.env, args.backbone, args.n_envs, args.n_timesteps,
                                              **args.backbone_kwargs), sort_keys=False)
    except (KeyError, ValueError) as error:
        parser.error(str(error))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return text


if __name__ == "__main__":
    main()
