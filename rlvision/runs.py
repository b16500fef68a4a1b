"""One training run as a library object: :class:`RunSpec` describes it, :func:`run` does it.

A run is an env, an algorithm, an encoder (backbone with options), a seed, a step budget and an evaluation schedule.
:func:`run` trains it under the throughput profiler (rlvision.profiler) with the encoder diagnostics
(rlvision.diagnostics), periodic evaluation, encode-once where asked, and returns its row: FPS, phase shares,
parameters, FLOPs, memory, returns and the learning curve. ``rlvision compare`` runs several, ``rlvision sweep``
runs a grid on Ray Tune, and tests call it directly; nothing here imports a script.

    from rlvision.runs import RunSpec, run
    row = run(RunSpec(env="SyntheticPixel-v0", backbone="mobilenetv4_nano_rl", steps=4096, eval_every=1024,
                      eval_episodes=8, env_kwargs={"size": 48, "grid": 4}))

Backbone entries are written ``name[key=value,...]`` (:func:`parse_backbones`): extractor and backbone options, plus
the run options in :data:`RUN_OPTIONS`. This module uses rlvision.envs and rlvision.agents; ``import rlvision`` does
not import it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import numpy as np
import torch
import yaml

from .extractors import DEFAULT_BACKBONE

# bracket options that configure the run rather than the extractor: a frozen encoder run once per env step
# (rlvision.encode), SAC-style encoder sharing ("separate" | "actor" | "critic" = DrQ-v2, rlvision.drq), and the
# algorithm of this entry instead of the run's (e.g. 'nature_cnn[algo=graphedppo]' next to 'nature_cnn')
RUN_OPTIONS = ("encode_once", "encoder_sharing", "algo")
# env steps of a run when none is given: RunSpec, rlvision train, compare and sweep
DEFAULT_STEPS = 20_000
# the encoder diagnostics (rlvision.diagnostics) that go into the row (the full history: the row's "diagnostics")
DIAGNOSTIC_COLUMNS = ("features_srank", "features_dormant", "grad_share")


@dataclass
class RunSpec:
    """Everything one run needs.

    :param env: a gymnasium id (rlvision.envs.make_env); ``env_kwargs``, ``low_res`` (shrink observations by this
        factor), ``backend`` ("native" | "python" for Atari) and ``n_envs`` shape it.
    :param algo: a name of rlvision.algorithms (``options["algo"]`` overrides it for one entry).
    :param backbone: a registered backbone; ``options``: its extractor/backbone options and run options.
    :param stage: a preprocessing stage ``name[:weights]`` run before the backbone (None or "none": no stage),
        upscaling by ``preprocess_scale``.
    :param hyperparams: over rlvision.agents.DEFAULTS[algo].
    :param eval_episodes: episodes of the final evaluation (0: none), or of each evaluation with ``eval_every``.
    :param test_env_kwargs: with ``eval_every``, a second evaluation env with these kwargs over ``env_kwargs`` (e.g.
        Procgen's unseen levels, ``rlvision.envs.procgen.procgen_test_kwargs``): the curve gets ``test_return``, the
        row ``test_return`` and ``generalization_gap`` (eval - test).
    :param normalize_reward: train on rewards scaled by SB3's VecNormalize (observations untouched; evaluation on
        the raw returns), as Procgen's PPO protocol does.
    :param threads: torch threads (None: torch's choice); ``device``: "auto", "cpu", "cuda".
    :param logdir: the TensorBoard folder (a run ``<logdir>/<label>``); None: no TensorBoard.
    """

    env: str = "ALE/Pong-v5"
    backbone: str = DEFAULT_BACKBONE
    options: dict[str, Any] = field(default_factory=dict)
    algo: str = "ppo"
    steps: int = DEFAULT_STEPS
    n_envs: int = 8
    seed: int = 0
    hyperparams: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    low_res: int | None = None
    backend: str = "native"
    stage: str | None = None
    preprocess_scale: int = 2
    eval_episodes: int = 0
    eval_every: int | None = None
    test_env_kwargs: dict[str, Any] | None = None
    normalize_reward: bool = False
    device: str = "auto"
    threads: int | None = None
    logdir: str | None = None
    progress: bool = False
    measure_overhead: bool = False

    @property
    def label(self) -> str:
        """``backbone[options]+stage``: the run's name in tables and TensorBoard."""
        label = self.backbone + ("[" + ",".join(f"{k}={v}" for k, v in self.options.items()) + "]"
                                 if self.options else "")
        return label + ("" if not self.stage or self.stage == "none" else f"+{self.stage.partition(':')[0]}")

    def replace(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes)


def parse_backbones(text: str) -> list[tuple[str, dict]]:
    """``"nature_cnn,mobilenetv4_nano_rl[norm=gn,channels_last=false]"`` -> [(name, options), ...] (values read
    as YAML)."""
    specs = []
    for name, options in re.findall(r"\s*([^,\[\s]+)(?:\[([^\]]*)\])?\s*(?:,|$)", text):
        kwargs = {}
        for item in filter(None, (o.strip() for o in options.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"Backbone option {item!r} in {text!r} is not key=value.")
            kwargs[key.strip()] = yaml.safe_load(value)
        specs.append((name, kwargs))
    return specs


def check_entry(name: str, options: dict, algo: str, allow_algo_option: bool = True) -> None:
    """A ValueError naming the problem unless ``name[options]`` is a known backbone with options it (or the
    extractor, or a run) accepts, and its algorithm is known. Called before anything trains."""
    import rlvision
    from rlvision.algorithms import algorithm
    from rlvision.checks import accepted_keywords, check_keywords
    from rlvision.extractors import EXTRACTOR_KEYWORDS

    run_options = RUN_OPTIONS if allow_algo_option else tuple(o for o in RUN_OPTIONS if o != "algo")
    check_keywords(options, accepted_keywords(rlvision.backbone_info(name).builder), f"backbone entry {name!r}",
                   extra=EXTRACTOR_KEYWORDS + run_options)
    algorithm(options.get("algo", algo))


def make_env_for(spec: RunSpec, n_envs: int, seed: int, test: bool = False):
    """The run's env (``test``: with ``test_env_kwargs`` over ``env_kwargs``)."""
    from rlvision.envs import make_env

    env_kwargs = {**spec.env_kwargs, **(spec.test_env_kwargs or {})} if test else spec.env_kwargs
    return make_env(spec.env, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs, low_res=spec.low_res,
                    backend=spec.backend)


def encoder_kwargs(spec: RunSpec, options: dict) -> dict:
    """backbone_kwargs for make_agent: the entry's options plus the preprocessing stage ``name[:weights]``."""
    kwargs = dict(options)
    if spec.stage and spec.stage != "none":
        name, _, weights = spec.stage.partition(":")
        kwargs.update(preprocess=name, preprocess_kwargs=dict(scale=spec.preprocess_scale),
                      preprocess_weights=weights or None)
    return kwargs


def env_only_sps(spec: RunSpec, steps: int = 2000) -> float:
    """Env steps per second of the vec env alone, random actions (the ceiling of the rollout phase)."""
    env = make_env_for(spec, spec.n_envs, spec.seed)
    env.reset()
    actions = [np.stack([env.action_space.sample() for _ in range(env.num_envs)]) for _ in range(16)]
    n = max(steps // env.num_envs, 1)
    start = time.perf_counter()
    for i in range(n):
        env.step(actions[i % 16])
    sps = n * env.num_envs / (time.perf_counter() - start)
    env.close()
    return sps


def run(spec: RunSpec, on_point: Callable[[dict], None] | None = None) -> dict:
    """Train ``spec`` for ``spec.steps`` steps under the profiler and return its row. With ``spec.eval_every``,
    evaluate every so many steps (``spec.eval_episodes`` episodes): the row gets the learning ``curve`` and each
    point also goes to ``on_point`` (sweeps: Ray Tune's report)."""
    import rlvision
    from rlvision.agents import DEFAULTS, PeriodicEvaluation, evaluate_agent, make_agent
    from rlvision.benchmark import count_flops
    from rlvision.diagnostics import EncoderDiagnostics
    from rlvision.encode import VecEncode
    from rlvision.envs import return_normalizer
    from rlvision.profiler import PHASES, ThroughputProfiler
    from stable_baselines3.common.logger import configure as configure_logger

    label = spec.label
    if spec.threads:  # again here: a run in its own process starts with torch's default
        torch.set_num_threads(spec.threads)
    options = dict(spec.options)
    encode_once = options.pop("encode_once", False)
    sharing = {"encoder_sharing": options.pop("encoder_sharing")} if "encoder_sharing" in options else {}
    algo = options.pop("algo", spec.algo)
    env = make_env_for(spec, spec.n_envs, spec.seed)
    obs = torch.as_tensor(env.observation_space.sample()[None], dtype=torch.float32) / 255
    if encode_once:
        env = VecEncode(env, spec.backbone, device=spec.device, **options)
    if spec.normalize_reward:
        from stable_baselines3.common.vec_env import VecNormalize

        gamma = spec.hyperparams.get("gamma", DEFAULTS[algo].get("gamma", 0.99))
        env = VecNormalize(env, norm_obs=False, norm_reward=True, gamma=gamma)
    model = make_agent(algo, env, backbone=spec.backbone, seed=spec.seed, device=spec.device,
                       backbone_kwargs=encoder_kwargs(spec, options), **sharing, **spec.hyperparams)
    model.set_logger(configure_logger(os.path.join(spec.logdir, label) if spec.logdir else None,
                                      ["tensorboard"] if spec.logdir else []))  # no "_1" suffix
    # the encoder whose size is reported: the policy's first (SAC-style policies: the actor's; DQN: the Q network's)
    kinds = (rlvision.VisionExtractor, rlvision.VisionCombinedExtractor)
    encoder = env.encoder if encode_once else next(m for m in model.policy.modules() if isinstance(m, kinds))
    obs = obs.to(model.device)
    profiler = ThroughputProfiler()
    diagnostics = EncoderDiagnostics()  # encoder/ in TensorBoard: acting/learning gap, srank, dormant units, ...
    callbacks, evaluation = [profiler, diagnostics], None
    if spec.eval_every:
        eval_env = make_env_for(spec, min(spec.eval_episodes, 8), spec.seed + 10_000)
        if encode_once:
            eval_env = VecEncode(eval_env, spec.backbone, device=spec.device, **options)
        test_env = None
        if spec.test_env_kwargs is not None:
            test_env = make_env_for(spec, min(spec.eval_episodes, 8), spec.seed + 20_000, test=True)
            if encode_once:
                test_env = VecEncode(test_env, spec.backbone, device=spec.device, **options)
        evaluation = PeriodicEvaluation(eval_env, spec.eval_every, spec.eval_episodes, on_point=on_point,
                                        test_env=test_env)
        callbacks.append(evaluation)
    start = time.perf_counter()
    model.learn(spec.steps, callback=callbacks, progress_bar=spec.progress)
    seconds = time.perf_counter() - start
    s = profiler.summary()
    row = dict(backbone=label, params=sum(p.numel() for p in encoder.parameters()),
               mflops=round(count_flops(encoder, obs) / 1e6, 1), steps=model.num_timesteps,
               seconds=round(seconds, 1), fps=round(model.num_timesteps / seconds, 1))
    if model.ep_info_buffer:  # SB3's rollout/ep_rew_mean at the end of training (last 100 episodes)
        row.update(ep_rew_mean=round(float(np.mean([e["r"] for e in model.ep_info_buffer])), 2),
                   episodes=len(model.ep_info_buffer))
    row.update({p: round(s[f"{p}_share"], 3) for p in PHASES})
    row.update(rollout_sps=round(s["rollout_sps"], 1), train_samples_per_s=round(s["train_samples_per_s"], 1),
               peak_memory_mb=round(s["peak_memory_mb"]))
    if "cuda_peak_memory_mb" in s:
        row["cuda_peak_memory_mb"] = round(s["cuda_peak_memory_mb"])
    if diagnostics.history:  # the last report, and the largest acting/learning gap seen
        last = diagnostics.history[-1]
        row.update({f"encoder_{k}": round(v, 4) for k, v in last.items() if k in DIAGNOSTIC_COLUMNS})
        for key in ("action_kl", "value_rel_diff"):
            values = [h[key] for h in diagnostics.history if key in h]
            if values:
                row[f"max_{key}"] = float(f"{max(values):.3g}")
        row["diagnostics_share"] = round(diagnostics.spent / seconds, 4)  # of training time (budget: 2%)
        row["diagnostics"] = diagnostics.history
    if evaluation is not None:
        last = evaluation.curve[-1]
        row.update(eval_return=round(last["eval_return"], 3), success_rate=last["success_rate"],
                   curve=evaluation.curve)
        evaluation.eval_env.close()
        if evaluation.test_env is not None:
            row.update(test_return=round(last["test_return"], 3),
                       generalization_gap=round(last["eval_return"] - last["test_return"], 3))
            evaluation.test_env.close()
        normalize = return_normalizer(spec.env, spec.env_kwargs)
        if normalize is not None:  # e.g. Procgen's per-game (R - R_min) / (R_max - R_min)
            for point in evaluation.curve:
                point.update({f"{k}_normalized": round(float(normalize(point[k])), 4)
                              for k in ("eval_return", "test_return") if k in point})
            row.update({f"{k}_normalized": last[f"{k}_normalized"] for k in ("eval_return", "test_return")
                        if f"{k}_normalized" in last})
    elif spec.eval_episodes:
        eval_env = make_env_for(spec, 1, spec.seed + 10_000)
        if encode_once:
            eval_env = VecEncode(eval_env, spec.backbone, device=spec.device, **options)
        # sampled actions, as every comparison table in BENCHMARKS.md was measured (and PeriodicEvaluation's curves)
        result = evaluate_agent(model, eval_env, spec.eval_episodes, deterministic=False)
        row.update(eval_return=round(result["mean_return"], 3), success_rate=result["success_rate"])
        eval_env.close()
    if spec.measure_overhead and not encode_once:
        row.update(measure_overhead(spec.replace(algo=algo, options=options)))
    env.close()
    if spec.logdir:  # the run's hyperparameters and summary in its own event file (TensorBoard's HPARAMS tab)
        from stable_baselines3.common.logger import HParam

        metrics = {f"summary/{k}": float(v) for k, v in row.items() if isinstance(v, (int, float)) and k != "steps"}
        tensorboard_only = ("stdout", "log", "json", "csv")
        model.logger.record("hparams", HParam({"backbone": label, "preprocess": spec.stage or "none", "algo": algo,
                                               "env": spec.env, "steps": spec.steps, "n_envs": spec.n_envs,
                                               "seed": spec.seed}, metrics), exclude=tensorboard_only)
        for key, value in metrics.items():
            model.logger.record(key, value, exclude=tensorboard_only)
        model.logger.dump(model.num_timesteps)
        model.logger.close()
    return row


def run_isolated(spec: RunSpec) -> dict:
    """:func:`run` in a fresh process, so its peak memory (``peak_memory_mb``: the process's peak resident memory,
    imports included) is this run's alone and not inflated by what earlier runs left cached."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run, spec).result()


def measure_overhead(spec: RunSpec, chunks: int = 4) -> dict:
    """FPS with and without the profiler, training one model in alternating chunks so machine drift cancels."""
    from rlvision.agents import make_agent
    from rlvision.profiler import ThroughputProfiler
    from stable_baselines3.common.logger import configure as configure_logger

    env = make_env_for(spec, spec.n_envs, spec.seed)
    model = make_agent(spec.algo, env, backbone=spec.backbone, seed=spec.seed, device=spec.device,
                       backbone_kwargs=encoder_kwargs(spec, spec.options), **spec.hyperparams)
    model.set_logger(configure_logger(None, []))
    chunk = max(spec.steps // chunks, getattr(model, "n_steps", 1) * spec.n_envs)
    seconds = {True: 0.0, False: 0.0}
    steps = {True: 0, False: 0}
    model.learn(chunk)  # warm-up, not counted
    for i in range(2 * chunks):
        with_profiler = i % 2 == 0
        before, start = model.num_timesteps, time.perf_counter()
        model.learn(chunk, callback=ThroughputProfiler() if with_profiler else None, reset_num_timesteps=False)
        seconds[with_profiler] += time.perf_counter() - start
        steps[with_profiler] += model.num_timesteps - before
    env.close()
    fps_with, fps_without = steps[True] / seconds[True], steps[False] / seconds[False]
    return dict(fps_profiled=round(fps_with, 1), fps_unprofiled=round(fps_without, 1),
                profiler_overhead=round(1 - fps_with / fps_without, 4))
