"""One training run as a library object: :class:`RunSpec` describes it, :func:`run` does it.

A run is an env, an algorithm, an encoder (backbone with options), a seed, a step budget and an evaluation schedule.
:func:`run` trains it under the throughput profiler (rlvision.profiler) with the encoder diagnostics
(rlvision.diagnostics), periodic evaluation, encode-once where asked, and returns its row: FPS, phase shares,
parameters, FLOPs, memory, returns and the learning curve. ``rlvision compare`` runs several, ``rlvision sweep``
runs a grid on Ray Tune, and tests call it directly; nothing here imports a script.

    from rlvision.runs import RunSpec, run
    result = run(RunSpec(env="SyntheticPixel-v0", backbone="mobilenetv4_nano_rl", steps=4096, eval_every=1024,
                         eval_episodes=8, env_kwargs={"size": 48, "grid": 4}))
    result.fps, result.eval_return, result.curve   # typed; result.row: every column, as tables store it

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


def _field(default: Any, text: str, minimum: int | None = None, choices: tuple = (), axis: bool = False):
    """A RunSpec field with its help text (command flags, YAML keys and --help come from it), the smallest value an
    int may take, the values a string may take, and whether it is a grid axis (commands that run several set it
    per entry: compare --backbones, sweep --envs/--seeds/--algos)."""
    meta = dict(help=text, minimum=minimum, choices=choices, axis=axis)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunSpec:
    """Everything one run needs: one description for ``rlvision train``, ``compare``, ``sweep`` and the library.
    Every field's flag (``--n-envs``), YAML key (``n_envs``), help and default come from the field itself
    (:func:`add_run_arguments`, :func:`run_settings`), so the three commands list the same settings with the same
    defaults."""

    env: str = _field("SyntheticPixel-v0", "a gymnasium id (rlvision.envs: Atari, MiniGrid, Procgen, the synthetic "
                      "envs)", axis=True)
    backbone: str = _field(DEFAULT_BACKBONE, "the encoder (rlvision.list_backbones())", axis=True)
    options: dict[str, Any] = _field({}, "the encoder's options (EncoderConfig fields, backbone keywords) and run "
                                     "options (encode_once, encoder_sharing), e.g. {norm: gn}", axis=True)
    algo: str = _field("ppo", "ppo, a2c, dqn, sac, td3 or sb3-contrib's (rlvision.algorithms)", axis=True)
    seed: int = _field(0, "seed of the agent and the envs", minimum=0, axis=True)
    stage: str | None = _field(None, "a preprocessing stage name[:weights] run before the backbone (null: none)",
                               axis=True)
    steps: int = _field(DEFAULT_STEPS, "env steps to train", minimum=1)
    n_envs: int = _field(8, "parallel envs", minimum=1)
    hyperparams: dict[str, Any] = _field({}, "over rlvision.agents.DEFAULTS[algo] (a YAML mapping, e.g. "
                                         "'{n_steps: 128}')")
    env_kwargs: dict[str, Any] = _field({}, "keyword arguments of the env (a YAML mapping)")
    frame_stack: int | None = _field(None, "frames stacked as channels (null: the env family's default)", minimum=1)
    low_res: int | None = _field(None, "shrink observations by this factor (null: full resolution)", minimum=1)
    backend: str = _field("native", "Atari: ale-py's C++ vector env (native) or SB3's Python wrappers (python)",
                          choices=("native", "python"))
    preprocess_scale: int = _field(2, "upscaling of the preprocessing stage", minimum=1)
    normalize_reward: bool = _field(False, "train on rewards scaled by SB3's VecNormalize (evaluation on raw "
                                    "returns), as Procgen's PPO protocol does")
    eval_episodes: int = _field(10, "episodes of the final evaluation, or of each with eval_every (0: none)",
                                minimum=0)
    eval_every: int | None = _field(None, "also evaluate every so many env steps: a learning curve (null: only the "
                                    "final evaluation)", minimum=1)
    test_env_kwargs: dict[str, Any] | None = _field(None, "with eval_every, a second evaluation env with these "
                                                    "kwargs over env_kwargs (e.g. Procgen's unseen levels): "
                                                    "test_return and the generalisation gap")
    check_nan: bool = _field(False, "wrap the env in SB3's VecCheckNan: stop at the first NaN or inf observation, "
                             "reward or action")
    checkpoint_every: int = _field(25_000, "env steps between checkpoints of a run that has a folder (rlvision "
                                   "train: its run folder; sweep: OUT/checkpoints/<trial>; compare keeps none); a "
                                   "rerun goes on from the newest complete one", minimum=1)
    device: str = _field("auto", "auto (cuda if available), cpu or cuda")
    threads: int | None = _field(None, "torch threads (null: torch's choice)", minimum=1)
    precision: str = _field("fp32", "the encoder's compute precision: fp32, bf16 (autocast) or auto (bf16 on a CPU "
                            "with AMX, where IMPALA's CNN trains 2.7x faster, else fp32; decided on the machine that "
                            "runs it); an entry's own precision option wins", choices=("fp32", "bf16", "auto"))
    logdir: str | None = field(default=None, metadata=dict(help="the TensorBoard folder (a run <logdir>/<label>); "
                                                               "null: no TensorBoard", command=True))
    progress: bool = field(default=False, metadata=dict(help="a progress bar", command=True))
    measure_overhead: bool = field(default=False, metadata=dict(help="also time training without the profiler",
                                                                command=True))

    @property
    def label(self) -> str:
        """``backbone[options]+stage``: the run's name in tables and TensorBoard."""
        label = self.backbone + ("[" + ",".join(f"{k}={v}" for k, v in self.options.items()) + "]"
                                 if self.options else "")
        return label + ("" if not self.stage or self.stage == "none" else f"+{self.stage.partition(':')[0]}")

    def replace(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes)


# the run settings every command takes as the same flags with the same defaults (the fields that are not grid axes
# and not a command's own output options)
RUN_SETTINGS = tuple(f.name for f in dataclasses.fields(RunSpec)
                     if not f.metadata.get("axis") and not f.metadata.get("command"))
# keys of older configs and their replacement: still read (with a note), the note names the new key
RENAMED_KEYS = {"backbone_kwargs": "options", "features_dim": "options: {features_dim: N}"}


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(RunSpec)}


def default_of(name: str) -> Any:
    f = _fields()[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def field_help(name: str) -> str:
    """A field's help with its default (JSON: null, {}, true)."""
    import json

    return f"{_fields()[name].metadata['help']} (default: {json.dumps(default_of(name))})"


def add_run_arguments(parser, names: tuple[str, ...] = RUN_SETTINGS) -> None:
    """One ``--flag`` per RunSpec field in ``names`` (``n_envs`` -> ``--n-envs``), in a "run settings" group, with the
    field's help and default. Values are read as YAML (``--hyperparams '{n_steps: 64}'``, ``--low-res null``);
    booleans are ``--x`` / ``--no-x``. A flag not given stays None (:func:`run_settings` leaves it out), so a
    command can put it over a YAML config. One small function of ours rather than tyro or simple-parsing: the
    commands keep argparse's ``rlvision CMD: error:`` messages and exit status, their grid options (lists) and
    ``train``'s positional config, which those libraries would make us rewrite."""
    import argparse

    import yaml

    group = parser.add_argument_group("run settings (the same for rlvision train, compare and sweep; YAML keys of "
                                      "the same names)")
    for name in names:
        f = _fields()[name]
        flag = "--" + name.replace("_", "-")
        if isinstance(default_of(name), bool):
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=field_help(name))
        else:
            group.add_argument(flag, dest=name, type=yaml.safe_load, default=None, metavar=name.upper(),
                               help=field_help(name) + (f"; one of {', '.join(f.metadata['choices'])}"
                                                        if f.metadata.get("choices") else ""))


def run_settings(args, names: tuple[str, ...] = RUN_SETTINGS) -> dict[str, Any]:
    """The run settings given on the command line (flags left out are not in the dict)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def check_values(values: dict[str, Any], where: str = "", flags: bool = False) -> None:
    """A ValueError naming the key (``flags``: as its flag, ``--n-envs``), what it must be and what it got, for each
    RunSpec field in ``values`` of the wrong kind or out of range (checked before anything starts)."""
    fields = _fields()
    for name, value in values.items():
        f = fields.get(name)
        if f is None:
            continue
        default, meta = default_of(name), f.metadata
        optional = "None" in str(f.type)
        said = ("--" + name.replace("_", "-") if flags else repr(name)) + where
        if value is None and optional:
            continue
        if isinstance(default, bool) or str(f.type) == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{said} must be true or false, got {value!r}.")
        elif str(f.type).startswith("int"):
            minimum = meta.get("minimum")
            if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
                raise ValueError(f"{said} must be an int >= {minimum}{' or null' if optional else ''}, got {value!r}.")
        elif str(f.type).startswith("dict"):
            if not isinstance(value, dict):
                raise ValueError(f"{said} must be a mapping (YAML dict){' or null' if optional else ''}, got "
                                 f"{value!r}.")
        elif str(f.type).startswith("str"):
            if not isinstance(value, str):
                raise ValueError(f"{said} must be a string, got {value!r}.")
            if meta.get("choices") and value not in meta["choices"]:
                raise ValueError(f"{said} must be one of {', '.join(meta['choices'])}, got {value!r}.")


def settings_help() -> str:
    """The run settings with meaning and default, one per line (the same list every command's --help shows)."""
    width = max(map(len, RUN_SETTINGS))
    return "\n".join(f"  {name:<{width}}  {field_help(name)}" for name in RUN_SETTINGS)


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


def check_stage(stage: str | None) -> None:
    """A ValueError (or FileNotFoundError) now, before anything trains, for an unknown preprocessing stage or a
    missing or damaged weights file in ``name[:weights]``."""
    if stage and stage != "none":
        import rlvision
        from rlvision.preprocess import read_preprocess_file

        name, _, weights = stage.partition(":")
        rlvision.preprocess_info(name)
        if weights:
            read_preprocess_file(weights)


def make_env_for(spec: RunSpec, n_envs: int, seed: int, test: bool = False):
    """The run's env (``test``: with ``test_env_kwargs`` over ``env_kwargs``)."""
    from rlvision.envs import make_env

    env_kwargs = {**spec.env_kwargs, **(spec.test_env_kwargs or {})} if test else spec.env_kwargs
    return make_env(spec.env, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs, low_res=spec.low_res,
                    backend=spec.backend, frame_stack=spec.frame_stack)


def encoder_kwargs(spec: RunSpec, options: dict) -> dict:
    """backbone_kwargs for make_agent: the entry's options plus the preprocessing stage ``name[:weights]``."""
    kwargs = dict(options)
    if spec.precision != "fp32":
        kwargs.setdefault("precision", spec.precision)
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


@dataclass
class RunResult:
    """What :func:`run` returns: the run's main figures as typed fields, and ``row``, every column as tables, CSVs
    and sweep trial files store it (the curve and the diagnostics history included).

    :param label: the run's name (``RunSpec.label``); ``steps``, ``seconds``, ``fps``: what it trained and how fast.
    :param params: parameters of the encoder; ``mflops``: its forward MFLOPs per observation.
    :param phases: share of the wall time per profiler phase (rlvision.profiler.PHASES).
    :param eval_return: the last evaluation's mean return (None without evaluation); ``test_return``: on the test
        env (``RunSpec.test_env_kwargs``); ``success_rate`` where the env reports success.
    :param curve: the evaluation points (``eval_every``); ``diagnostics``: the encoder diagnostics history.
    """

    label: str
    steps: int
    seconds: float
    fps: float
    params: int
    mflops: float
    phases: dict[str, float]
    eval_return: float | None = None
    test_return: float | None = None
    success_rate: float | None = None
    curve: list[dict] = field(default_factory=list)
    diagnostics: list[dict] = field(default_factory=list)
    row: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RunResult:
        from rlvision.profiler import PHASES

        return cls(label=row["backbone"], steps=row["steps"], seconds=row["seconds"], fps=row["fps"],
                   params=row["params"], mflops=row["mflops"], phases={p: row[p] for p in PHASES if p in row},
                   eval_return=row.get("eval_return"), test_return=row.get("test_return"),
                   success_rate=row.get("success_rate"), curve=row.get("curve") or [],
                   diagnostics=row.get("diagnostics") or [], row=row)


def build_env(spec: RunSpec):
    """The vec env of a run: ``spec``'s env (with ``check_nan``: SB3's VecCheckNan; with ``encode_once``: the frozen
    encoder's features; with ``normalize_reward``: SB3's VecNormalize over the rewards, the algorithm's gamma)."""
    from rlvision.agents import DEFAULTS
    from rlvision.encode import VecEncode
    from stable_baselines3.common.vec_env import VecCheckNan, VecNormalize

    options = dict(spec.options)
    encode_once = options.pop("encode_once", False)
    options.pop("encoder_sharing", None)
    algo = options.pop("algo", spec.algo)
    env = make_env_for(spec, spec.n_envs, spec.seed)
    if spec.check_nan:
        env = VecCheckNan(env, raise_exception=True)
    if encode_once:
        env = VecEncode(env, spec.backbone, device=spec.device, **options)
    if spec.normalize_reward:
        gamma = spec.hyperparams.get("gamma", DEFAULTS[algo].get("gamma", 0.99))
        env = VecNormalize(env, norm_obs=False, norm_reward=True, gamma=gamma)
    return env


def build(spec: RunSpec, env=None):
    """The env (:func:`build_env`, unless given) and the agent of a run, what :func:`run` trains: the algorithm with
    the encoder, not yet trained and without a logger."""
    from rlvision.agents import make_agent

    options = dict(spec.options)
    options.pop("encode_once", None)
    sharing = {"encoder_sharing": options.pop("encoder_sharing")} if "encoder_sharing" in options else {}
    algo = options.pop("algo", spec.algo)
    features_dim = options.pop("features_dim", 256)
    env = build_env(spec) if env is None else env
    model = make_agent(algo, env, backbone=spec.backbone, features_dim=features_dim, seed=spec.seed,
                       device=spec.device, backbone_kwargs=encoder_kwargs(spec, options), **sharing,
                       **spec.hyperparams)
    return env, model


# what may change between a run and its resumption from a checkpoint (the rest must match: spec_digest)
RESUMABLE_FIELDS = ("steps", "checkpoint_every", "threads", "device", "precision", "logdir", "progress",
                    "measure_overhead")


def cpu_name() -> str:
    """This machine's CPU model (``lscpu``'s "Model name"; the platform's processor string where that is missing):
    rows carry it, since timings are only comparable on one CPU."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _precision_used(encoder, device) -> str:
    """What the encoder computed in: "fp32", "bf16", or "auto->bf16" / "auto->fp32" as decided on this machine."""
    from rlvision.extractors import autocast_dtype

    precision = getattr(encoder, "precision", "fp32")
    if precision != "auto":
        return precision
    return "auto->" + ("bf16" if autocast_dtype("auto", torch.device(device).type) is not None else "fp32")


def spec_digest(spec: RunSpec) -> str:
    """The digest a run's checkpoints carry: a rerun resumes only from checkpoints of the same run."""
    from rlvision.agents.checkpoints import config_hash

    return config_hash(dataclasses.asdict(spec), RESUMABLE_FIELDS)


def run(spec: RunSpec, on_point: Callable[[dict], None] | None = None, callbacks: list | None = None,
        model=None, closing_row: bool = True, checkpoint_dir: str | None = None) -> RunResult:
    """Train ``spec`` for ``spec.steps`` steps under the profiler and return its :class:`RunResult`. With
    ``spec.eval_every``, evaluate every so many steps (``spec.eval_episodes`` episodes): the result gets the learning
    ``curve`` and each point also goes to ``on_point`` (sweeps: Ray Tune's report); without it, a final evaluation of
    ``spec.eval_episodes`` episodes. ``callbacks``: more SB3 callbacks (checkpoints, signals), run after the
    profiler, the diagnostics and the evaluation.

    ``model``: train this agent (built by :func:`build`, or loaded from a checkpoint: ``rlvision train --resume``)
    with its env and logger, up to ``spec.steps`` in all (a loaded one goes on from its step count); the caller
    keeps and closes its env. Default: :func:`build` makes both, and the run closes them. ``closing_row``: the
    profiler's closing log row (rlvision.profiler.ThroughputProfiler).

    ``checkpoint_dir``: a checkpoint there every ``spec.checkpoint_every`` steps and at the end (model, optimizer,
    replay buffer, VecNormalize statistics, the learning curve so far: rlvision.agents.checkpoints), and a run that
    finds a complete checkpoint of the same spec there (:func:`spec_digest`; ``steps`` may have grown) goes on from
    it: the curve keeps its points, training seconds go on, TensorBoard points past it are dropped. The row says
    ``resumed_from`` (the step; None for a fresh run); its phases and FPS are those of this segment."""
    check_values(dataclasses.asdict(spec), " (RunSpec)")
    import rlvision
    from rlvision.agents import PeriodicEvaluation, evaluate_agent
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
    options.pop("encoder_sharing", None)
    algo = options.pop("algo", spec.algo)
    own_model = model is None
    resumed, digest = None, spec_digest(spec)
    if own_model:
        found = None
        if checkpoint_dir is not None and os.path.isdir(checkpoint_dir):
            from rlvision.agents.checkpoints import latest_checkpoint

            found = latest_checkpoint(checkpoint_dir, digest, log=lambda *_: None)
        if found is not None:
            from rlvision.agents.checkpoints import checkpoint_meta, load_checkpoint, truncate_tensorboard

            model = load_checkpoint(found, algo, build_env(spec), device=spec.device)
            env, resumed = model.get_env(), checkpoint_meta(found)
            if spec.logdir:  # the points the killed attempt logged past the checkpoint are logged again
                truncate_tensorboard(os.path.join(spec.logdir, label), model.num_timesteps)
        else:
            env, model = build(spec)
        model.set_logger(configure_logger(os.path.join(spec.logdir, label) if spec.logdir else None,
                                          ["tensorboard"] if spec.logdir else []))  # no "_1" suffix
    else:
        env = model.get_env()
    image_env = env  # the observation the encoder sees (under VecEncode: the images it encodes)
    while encode_once and not isinstance(image_env, VecEncode):
        image_env = image_env.venv
    image_space = image_env.venv.observation_space if encode_once else env.observation_space
    obs = torch.as_tensor(image_space.sample()[None], dtype=torch.float32) / 255
    # the encoder whose size is reported: the policy's first (SAC-style policies: the actor's; DQN: the Q network's)
    kinds = (rlvision.VisionExtractor, rlvision.VisionCombinedExtractor)
    encoder = env.encoder if encode_once else next(m for m in model.policy.modules() if isinstance(m, kinds))
    obs = obs.to(model.device)
    profiler = ThroughputProfiler(closing_row=closing_row)
    diagnostics = EncoderDiagnostics()  # encoder/ in TensorBoard: acting/learning gap, srank, dormant units, ...
    extra_callbacks, callbacks, evaluation = callbacks, [profiler, diagnostics], None
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
    before = dict(resumed or {}).get("extra", {})
    if evaluation is not None and before.get("curve"):
        evaluation.restore(before["curve"], before.get("train_seconds", 0.0))
    if checkpoint_dir is not None:
        from rlvision.agents.checkpoints import CheckpointEvery

        def state() -> dict:
            return dict(curve=evaluation.curve, train_seconds=evaluation.train_seconds()) if evaluation else {}

        callbacks.append(CheckpointEvery(spec.checkpoint_every, checkpoint_dir, digest, keep=2, extra=state,
                                         elapsed_before=float((resumed or {}).get("time_elapsed", 0.0))))
    callbacks += list(extra_callbacks or [])
    start, first_step = time.perf_counter(), model.num_timesteps
    model.learn(max(spec.steps - first_step, 0), callback=callbacks, progress_bar=spec.progress,
                reset_num_timesteps=first_step == 0)
    seconds = time.perf_counter() - start
    s = profiler.summary()
    row = dict(backbone=label, params=sum(p.numel() for p in encoder.parameters()),
               mflops=round(count_flops(encoder, obs) / 1e6, 1), steps=model.num_timesteps,
               seconds=round(seconds, 1), fps=round((model.num_timesteps - first_step) / seconds, 1),
               precision=_precision_used(encoder, model.device), cpu=cpu_name())
    if checkpoint_dir is not None:
        row["resumed_from"] = first_step if resumed else None
        if resumed:  # wall seconds of the whole run: the earlier segments' too
            row["seconds"] = round(seconds + float(resumed.get("time_elapsed", 0.0)), 1)
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
    if own_model:
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
    return RunResult.from_row(row)


def run_isolated(spec: RunSpec) -> RunResult:
    """:func:`run` in a fresh process, so its peak memory (``peak_memory_mb``: the process's peak resident memory,
    imports included) is this run's alone and not inflated by what earlier runs left cached."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run, spec).result()


def measure_overhead(spec: RunSpec, chunks: int = 4) -> dict:
    """FPS with and without the profiler, training one model in alternating chunks so machine drift cancels."""
    from rlvision.profiler import ThroughputProfiler
    from stable_baselines3.common.logger import configure as configure_logger

    env, model = build(spec)
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
