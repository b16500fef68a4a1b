"""A sweep's grid: envs x backbones x seeds x algos with per-env settings, as trial records (JSON, kept in
``OUT/sweep.json`` so a rerun can tell its grid) and as RunSpecs; checked before anything starts."""

from __future__ import annotations

import os

from rlvision.runs import (RUN_SETTINGS, RunSpec, check_entry, check_stage, check_values, default_of,
                           parse_backbones)

GRID_KEYS = ("envs", "backbones", "seeds", "algos")
# the run settings (RunSpec's fields, its defaults) and the sweep's own: resources per trial, the return threshold
# of "steps to threshold", retries
SETTINGS = {**{name: default_of(name) for name in RUN_SETTINGS}, "stage": None, "cpus": 1, "gpu": 0.0,
            "threshold": None, "max_failures": 2}
# what an env of the grid may set for itself (``envs: {Env-v0: {steps: ..., hyperparams: ...}}``)
ENV_KEYS = (*(name for name in RUN_SETTINGS if name not in ("device", "threads")), "stage", "threshold")
# always in a trial record (OUT/sweep.json), as sweeps before RunSpec's settings wrote them; the other settings only
# where they differ from RunSpec's default, so an old sweep folder's grid still reads as the same grid
RECORD_KEYS = ("steps", "n_envs", "eval_every", "eval_episodes", "hyperparams", "env_kwargs", "threshold")


def grid(spec: dict, source: str = "the sweep") -> tuple[list[dict], dict]:
    """The trials (one JSON-able record per run: env, algo, backbone [name, options], seed and the per-env settings;
    what ``OUT/sweep.json`` holds) and the sweep-wide settings, from a sweep spec (the YAML's keys: GRID_KEYS,
    SETTINGS, ``envs`` as a list or a dict of per-env ENV_KEYS). A ValueError names an unknown key or a missing grid
    axis; ``source`` names where the spec came from."""
    unknown = set(spec) - set(GRID_KEYS) - set(SETTINGS)
    if unknown:
        raise ValueError(f"{source}: unknown keys {sorted(unknown)}; allowed: {list(GRID_KEYS) + list(SETTINGS)}")
    envs = spec.get("envs")
    if not envs or not spec.get("backbones"):
        raise ValueError("a sweep needs --envs and --backbones (or 'envs' and 'backbones' in --config)")
    if isinstance(envs, str):
        envs = [e.strip() for e in envs.split(",") if e.strip()]
    if isinstance(envs, list):
        envs = {e: (spec.get("envs") or {}).get(e, {}) if isinstance(spec.get("envs"), dict) else {} for e in envs}
    settings = {k: spec.get(k, v) for k, v in SETTINGS.items()}
    backbones = spec["backbones"]
    backbones = parse_backbones(backbones if isinstance(backbones, str) else ",".join(backbones))
    seeds = spec.get("seeds", [0])
    seeds = [int(s) for s in (seeds.split(",") if isinstance(seeds, str) else seeds)]
    algos = spec.get("algos", ["ppo"])
    algos = [a.strip().lower() for a in (algos.split(",") if isinstance(algos, str) else algos)]
    trials = []
    for env, env_spec in envs.items():
        unknown = set(env_spec or {}) - set(ENV_KEYS)
        if unknown:
            raise ValueError(f"env {env!r}: unknown keys {sorted(unknown)}; allowed: {list(ENV_KEYS)}")
        per_env = {**settings, **(env_spec or {})}
        per_env["hyperparams"] = {**settings["hyperparams"], **(env_spec or {}).get("hyperparams", {})}
        for algo in algos:
            per_env["eval_every"] = (env_spec or {}).get("eval_every") or settings["eval_every"] or default_eval_every(
                algo, per_env)
            for backbone in backbones:
                for seed in seeds:
                    trials.append(dict(env=env, algo=algo, backbone=list(backbone), seed=seed,
                                       **{k: per_env[k] for k in RECORD_KEYS},
                                       **{k: per_env[k] for k in (*RUN_SETTINGS, "stage") if k not in RECORD_KEYS
                                          and k != "backend" and per_env[k] != default_of(k)},
                                       **{k: settings[k] for k in ("cpus", "gpu", "backend")}))
    return trials, settings


def check_trials(trials: list[dict]) -> None:
    """Unknown envs, backbones, options, algos and hyperparameters (names and schedule strings) and numbers out of
    range raise a ValueError now, before any folder is made or Ray starts, not inside a Ray worker."""
    from rlvision.agents.factory import check_hyperparams
    from rlvision.envs import check_env_id

    for t in trials:
        name, options = t["backbone"]
        check_env_id(t["env"])
        check_entry(name, options, t["algo"], allow_algo_option=False)
        check_values({k: v for k, v in t.items() if k in RUN_SETTINGS}, where=f" (env {t['env']!r})")
        check_stage(t.get("stage"))
        check_hyperparams(t["algo"], t["hyperparams"])  # a typo or a malformed "lin_..." fails here
        for key, minimum in (("eval_episodes", 1), ("cpus", 1), ("gpu", 0)):
            value = t[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
                raise ValueError(f"{key} must be a number >= {minimum}, got {value!r} (env {t['env']!r}).")


def default_eval_every(algo: str, per_env: dict) -> int:
    """A tenth of the steps, but at least one rollout of an on-policy algorithm (an evaluation between two updates
    would re-evaluate an unchanged policy)."""
    from rlvision.agents import DEFAULTS
    from rlvision.algorithms import algorithm

    every = max(per_env["steps"] // 10, 1)
    if algorithm(algo).on_policy:
        n_steps = per_env["hyperparams"].get("n_steps", DEFAULTS[algo].get("n_steps", 1))
        every = max(every, n_steps * per_env["n_envs"])
    return every


def trial_file(config: dict) -> str:
    label = config["backbone"][0] + "".join(f",{k}={v}" for k, v in config["backbone"][1].items())
    return f"{config['env'].replace('/', '-')}__{config['algo']}__{label}__seed{config['seed']}.json"


def run_spec(config: dict) -> RunSpec:
    """The RunSpec of one trial record (its ``out`` folder holds the TensorBoard runs)."""
    name, options = config["backbone"]
    settings = {k: config[k] for k in RUN_SETTINGS if k in config}
    settings.setdefault("threads", config["cpus"])  # parallel trials do not oversubscribe the cores
    if settings.get("device", "auto") == "auto":
        settings["device"] = "cuda" if config["gpu"] else "cpu"
    return RunSpec(env=config["env"], backbone=name, options=dict(options), algo=config["algo"], seed=config["seed"],
                   stage=config.get("stage"), **settings,
                   logdir=os.path.join(config.get("out", "."), "tb", config["env"].replace("/", "-"), config["algo"],
                                       f"seed{config['seed']}"))


def specs(trials: list[dict]) -> list[RunSpec]:
    """The grid as runs: one RunSpec per trial record."""
    return [run_spec(t) for t in trials]
