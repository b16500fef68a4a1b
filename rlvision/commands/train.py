"""Train one agent from a YAML config: env, algo, backbone, hyperparameters, steps, seed.

    rlvision train ppo_synthetic                       # a config shipped with rlvision, by name (a few minutes)
    rlvision train ppo_pong --set backbone=mnv4_conv_small --set steps=200000
    rlvision train my_run.yaml --resume                # your own file; --resume after an interruption (Ctrl-C,
                                                       # kill -9, a lost machine): on from the last good checkpoint
    rlvision train --set env=MiniGrid-DoorKey-5x5-v0   # no config: the defaults below, with your changes

A config is a YAML mapping of the keys below (any left out keep their default); --set KEY=VALUE overrides one
(the value read as YAML). Without a config the defaults run: PPO with the default encoder on SyntheticPixel-v0.

Writes TensorBoard logs, periodic checkpoints, the final model and an evaluation summary under
``<log_dir>/<run_name>/``, with a progress bar while it trains. Checkpoints (``checkpoints/step_<N>/``: model with
optimizer state and step count, the replay buffer of off-policy algorithms, VecNormalize statistics) are written
atomically every ``checkpoint_every`` steps; ``--resume`` continues the newest complete one of the same config (a
truncated one, or one of another config, is skipped with a message), in the same TensorBoard run. Without
``--resume`` a run directory that has checkpoints is refused rather than overwritten.

Preemption: SIGTERM (what SLURM, Kubernetes, spot instances and Ray send before a kill) or Ctrl-C (SIGINT) stops the
run at the start of the next rollout, after the last update, with a checkpoint written there; it exits with status
128 + the signal's number and prints the command that resumes it. Ctrl-C twice stops at once (a checkpoint of the
state it stopped in).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time

import torch
import yaml
from stable_baselines3.common.vec_env import VecCheckNan, VecNormalize
from stable_baselines3.common.logger import configure as configure_logger

from rlvision.agents import evaluate_agent, make_agent
from rlvision.diagnostics import EncoderDiagnostics
from rlvision.agents.checkpoints import (CheckpointEvery, ContinuedLogger, NonFiniteError, PreemptedError,
                                         StopOnNonFinite, StopOnSignal, checkpoint_meta, config_hash,
                                         latest_checkpoint, load_checkpoint, save_checkpoint, truncate_tensorboard)
from rlvision.agents.factory import DEFAULTS, check_hyperparams, check_replay_buffer
from rlvision.envs import check_env_id, make_env
from rlvision.extractors import DEFAULT_BACKBONE
from rlvision.model_files import UntrustedModelError
from rlvision.model_files import save as save_model
from rlvision.runs import DEFAULT_STEPS, check_entry
from rlvision.commands import command_parser

DEFAULT_CONFIG = dict(env="SyntheticPixel-v0", env_kwargs={}, n_envs=8, frame_stack=None, algo="ppo",
                      backbone=DEFAULT_BACKBONE, backbone_kwargs={}, features_dim=256, hyperparams={},
                      steps=DEFAULT_STEPS, seed=0, eval_episodes=20, checkpoint_every=25_000, log_dir="runs/train",
                      run_name=None, threads=None, device="auto", normalize_reward=False, export=None,
                      check_nan=False)
# keys that may change when a run is resumed (the rest must match the checkpoint's config)
RESUMABLE_CHANGES = ("steps", "eval_episodes", "checkpoint_every", "threads", "device", "log_dir", "run_name",
                     "export", "check_nan")
EXPORT_FORMATS = {"onnx": "policy.onnx", "torchscript": "policy.pt"}
# what each key of a config means (train --help lists them with their defaults)
CONFIG_HELP = dict(
    env="a gymnasium id (rlvision.envs: Atari, MiniGrid, the synthetic envs, ...)",
    env_kwargs="keyword arguments of the env (a mapping)", n_envs="parallel envs",
    frame_stack="frames stacked as channels (null: the env family's default)",
    algo="ppo, a2c, dqn, sac, td3, or sb3-contrib's (rlvision.algorithms)",
    backbone="the encoder (rlvision.list_backbones(); the default encoder: rlvision.DEFAULT_BACKBONE)",
    backbone_kwargs="the encoder's options, e.g. {norm: gn} (a mapping)", features_dim="size of the features",
    hyperparams="over rlvision.agents.DEFAULTS[algo] (a mapping)", steps="env steps to train", seed="seed",
    eval_episodes="episodes of the final evaluation (0: none)", checkpoint_every="env steps between checkpoints",
    log_dir="folder of the runs", run_name="the run's folder name (null: algo_backbone_env_s<seed>)",
    threads="torch threads (null: torch's choice)", device="auto, cpu or cuda",
    normalize_reward="VecNormalize the rewards",
    export="onnx or torchscript: the policy as a file at the end (null: no)",
    check_nan="wrap the env in SB3's VecCheckNan: stop at the first NaN or inf observation, reward or action")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def shipped_configs() -> list[str]:
    """Names of the example configs that ship with rlvision (``rlvision train NAME``)."""
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))


def config_path(name: str) -> str:
    """A config file: ``name`` as a path, or the shipped config of that name (``ppo_synthetic``)."""
    if os.path.isfile(name):
        return name
    shipped = os.path.join(CONFIG_DIR, name if name.endswith(".yaml") else name + ".yaml")
    if os.path.isfile(shipped):
        return shipped
    raise FileNotFoundError(f"no config file {name!r}, and rlvision ships none of that name; pass a YAML file's path "
                            f"or one of {', '.join(shipped_configs())}.")


def keys_help() -> str:
    """The config keys with their meaning and default, for --help."""
    width = max(map(len, DEFAULT_CONFIG))
    lines = [f"  {key:<{width}}  {CONFIG_HELP[key]} (default: {json.dumps(value)})"
             for key, value in DEFAULT_CONFIG.items()]
    return ("config keys:\n" + "\n".join(lines) + "\n\nshipped configs (rlvision train NAME): "
            + ", ".join(shipped_configs()))


def segment_name(run_dir: str, step: int) -> str:
    """A free name for the CSV rows of a segment that ends at ``step``: progress-until-<step>.csv, or -2, -3, ...
    when an earlier resume from the same checkpoint already kept one (nothing is ever overwritten)."""
    path, k = os.path.join(run_dir, f"progress-until-{step}.csv"), 1
    while os.path.exists(path):
        k += 1
        path = os.path.join(run_dir, f"progress-until-{step}-{k}.csv")
    return path


def new_segment(run_dir: str, step: int) -> int:
    """Before training goes on from ``step`` (a checkpoint, or 0 after an attempt that died before its first one):
    keep the CSV rows logged so far under a free name (SB3's CSV logger starts its file afresh) and drop the
    TensorBoard points past ``step``, which are logged again. Returns how many points were dropped."""
    csv_path = os.path.join(run_dir, "progress.csv")
    if os.path.exists(csv_path) and os.path.getsize(csv_path) > 0:
        os.replace(csv_path, segment_name(run_dir, step))
    return truncate_tensorboard(run_dir, step)


def _with_matches(keys) -> list[str]:
    """Each unknown key with its closest known one: ["'stepz' (did you mean 'steps'?)", ...]; a hyperparameter
    (or a near miss of one) written at the top level is pointed to ``hyperparams:``."""
    import difflib

    hyperparams = {name for table in DEFAULTS.values() for name in table}
    hints = []
    for key in sorted(keys):
        if key in hyperparams:
            hints.append(f"{key!r} (an algorithm's hyperparameter: put it under 'hyperparams:')")
        elif close := difflib.get_close_matches(key, DEFAULT_CONFIG, 1):
            hints.append(f"{key!r} (did you mean {close[0]!r}?)")
        elif close := difflib.get_close_matches(key, hyperparams, 1):
            hints.append(f"{key!r} (did you mean {close[0]!r} under 'hyperparams:'?)")
        else:
            hints.append(repr(key))
    return hints


def load_config(path: str | None, overrides: list[str]) -> dict:
    """The YAML file (a path, or the name of a shipped config) over DEFAULT_CONFIG, then ``key=value`` overrides
    (values parsed as YAML). A ValueError names an unknown key (with the closest known one) or a value of the wrong
    kind."""
    config = dict(DEFAULT_CONFIG)
    if path:
        path = config_path(path)
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        unknown = set(loaded) - set(DEFAULT_CONFIG)
        if unknown:
            raise ValueError(f"Unknown config keys {_with_matches(unknown)} in {path}; known: {sorted(DEFAULT_CONFIG)}")
        config.update(loaded)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULT_CONFIG:
            raise ValueError(f"--set wants key=value with key in {sorted(DEFAULT_CONFIG)}, got {item!r}"
                             + (f" ({_with_matches([key])[0]})" if sep else ""))
        config[key] = yaml.safe_load(value)
    for key, minimum in (("steps", 1), ("n_envs", 1), ("checkpoint_every", 1), ("eval_episodes", 0),
                         ("features_dim", 1)):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"Config key {key!r} must be an int >= {minimum}, got {value!r}.")
    if config["export"] is not None and config["export"] not in EXPORT_FORMATS:
        raise ValueError(f"Config key 'export' must be one of {sorted(EXPORT_FORMATS)} or null, got "
                         f"{config['export']!r}.")
    for key in ("env_kwargs", "backbone_kwargs", "hyperparams"):
        if not isinstance(config[key], dict):
            raise ValueError(f"Config key {key!r} must be a mapping (YAML dict), got {config[key]!r}.")
    return config


def main(argv: list[str] | None = None) -> dict:
    parser = command_parser("train", __doc__)
    parser.epilog = keys_help()
    parser.add_argument("config", nargs="?",
                        help="a YAML file, or the name of a shipped config (default: none, the keys' defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set steps=100000 (default: none)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--resume", action="store_true",
                        help="continue the newest complete checkpoint of this run (same config)")
    parser.add_argument("--trust-file", action="store_true",
                        help="with --resume: open a checkpoint that needs unpickling (runs code from the file; only "
                             "for files you trust; rlvision's own checkpoints never need it)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
    except (ValueError, FileNotFoundError, yaml.YAMLError) as error:  # one status and prefix for every user error
        parser.error(str(error))
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))

    try:  # everything a typo can break, before any folder or file is made
        check_env_id(cfg["env"])
        check_entry(cfg["backbone"], dict(cfg["backbone_kwargs"]), cfg["algo"], allow_algo_option=False)
        check_hyperparams(cfg["algo"], cfg["hyperparams"])
        if cfg["export"] == "onnx":
            import importlib.util

            if not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript")):
                raise ValueError("export: onnx needs onnx, onnxruntime and onnxscript: pip install 'rlvision[export]' "
                                 "(or export: torchscript).")
    except ValueError as error:
        parser.error(str(error))

    run_name = cfg["run_name"] or f"{cfg['algo']}_{cfg['backbone']}_{cfg['env'].replace('/', '-')}_s{cfg['seed']}"
    run_dir = os.path.join(cfg["log_dir"], run_name)
    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    digest = config_hash(cfg, RESUMABLE_CHANGES)
    results_path = os.path.join(run_dir, "results.json")
    if args.resume and os.path.exists(results_path):  # a finished run: say so and change nothing
        with open(results_path) as f:
            finished = json.load(f)
        if finished.get("steps", 0) >= cfg["steps"]:
            print(f"{run_dir} already finished at {finished['steps']:,} steps ({results_path}); nothing to do. "
                  f"To train it further, resume with a larger steps (--set steps=...).")
            return finished
    checkpoint = latest_checkpoint(checkpoint_dir, digest) if args.resume else None
    if args.resume and checkpoint is None:
        parser.error(f"--resume: no complete checkpoint of this config in {checkpoint_dir}; run without --resume "
                     f"(and another run_name) to start afresh.")
    if not args.resume and os.path.isdir(checkpoint_dir) and any(d.startswith("step_")
                                                                 for d in os.listdir(checkpoint_dir)):
        parser.error(f"{run_dir} already has checkpoints: pass --resume to continue that run, or set another "
                     f"run_name (--set run_name=...) to start a new one.")
    try:  # a folder that cannot be written (read-only, a file in the way, a full disk): said now, not mid-run
        os.makedirs(run_dir, exist_ok=True)
        with open(os.path.join(run_dir, "config.yaml.tmp"), "w") as f:
            yaml.safe_dump(cfg, f)
        os.replace(os.path.join(run_dir, "config.yaml.tmp"), os.path.join(run_dir, "config.yaml"))
    except OSError as error:
        parser.error(f"cannot write the run folder {run_dir} ({error.strerror or error}); pass a writable log_dir "
                     f"(--set log_dir=...).")

    # 1. Environments: training copies and one separate evaluation copy.
    env = make_env(cfg["env"], n_envs=cfg["n_envs"], seed=cfg["seed"], frame_stack=cfg["frame_stack"],
                   env_kwargs=cfg["env_kwargs"])
    eval_env = make_env(cfg["env"], n_envs=1, seed=cfg["seed"] + 10_000, frame_stack=cfg["frame_stack"],
                        env_kwargs=cfg["env_kwargs"])
    if cfg["check_nan"]:
        env = VecCheckNan(env, raise_exception=True)
    if cfg["normalize_reward"]:
        env = VecNormalize(env, norm_obs=False, norm_reward=True)

    # 2. The agent, with the rlvision encoder, logging to TensorBoard under run_dir.
    if checkpoint is None:
        model = make_agent(cfg["algo"], env, backbone=cfg["backbone"], features_dim=cfg["features_dim"],
                           backbone_kwargs=cfg["backbone_kwargs"], seed=cfg["seed"], device=cfg["device"],
                           **cfg["hyperparams"])
    else:  # the same memory check as a new run, then weights, optimizer, step count, buffer, VecNormalize
        params = {**DEFAULTS[cfg["algo"]], **cfg["hyperparams"]}
        if "buffer_size" in params:
            check_replay_buffer(cfg["algo"], env, params, 0.8)
        try:
            model = load_checkpoint(checkpoint, cfg["algo"], env, device=cfg["device"], trust=args.trust_file)
        except UntrustedModelError as error:
            parser.error(str(error).replace("trust=True) (the command line: --trust-file)", "trust=True): pass "
                                            "--trust-file"))
        print(f"Resuming {run_dir} from {checkpoint} (step {model.num_timesteps:,}).")
    if new_segment(run_dir, model.num_timesteps) and checkpoint is None:
        print(f"{run_dir}: an earlier attempt left no checkpoint; its TensorBoard points were dropped (its CSV "
              f"rows are kept as progress-until-0*.csv).")
    resumed_from = model.num_timesteps if checkpoint else None
    logger = configure_logger(run_dir, ["tensorboard", "csv"])  # TensorBoard + progress.csv in run_dir
    if checkpoint is not None:  # time/iterations, time/time_elapsed go on; the last update's losses are not lost
        logger = ContinuedLogger.resuming(logger, model, checkpoint)
    model.set_logger(logger)
    print(f"{cfg['algo'].upper()} + {cfg['backbone']} on {cfg['env']} {env.observation_space.shape}: "
          f"{sum(p.numel() for p in model.policy.parameters()):,} policy parameters -> {run_dir}")

    # 3. Train, with checkpoints every `checkpoint_every` steps.
    elapsed_before = float(checkpoint_meta(checkpoint).get("time_elapsed", 0.0)) if checkpoint else 0.0
    checkpoints = CheckpointEvery(cfg["checkpoint_every"], checkpoint_dir, digest, elapsed_before=elapsed_before)
    start, first_step = time.perf_counter(), model.num_timesteps
    stop = StopOnSignal(checkpoints)  # SIGTERM / SIGINT: a checkpoint at the next rollout start, then exit
    resume_command = "rlvision train " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                           else sys.argv[1:]) if a != "--resume")
    try:
        with stop:
            try:  # on resume: the remaining steps, in the same TensorBoard run, with the step count and schedules
                model.learn(max(cfg["steps"] - model.num_timesteps, 0), progress_bar=not args.no_progress,
                            callback=[StopOnNonFinite(), checkpoints, stop, EncoderDiagnostics()],
                            reset_num_timesteps=checkpoint is None)
            except KeyboardInterrupt:  # Ctrl-C twice: at once, wherever it was
                saved = save_checkpoint(model, checkpoint_dir, digest, elapsed_before=elapsed_before)
                raise PreemptedError(signal.SIGINT, saved) from None
            finally:
                stop.training = False
            result = finish(model, cfg, run_dir, eval_env, start, first_step, resumed_from)
    except (NonFiniteError, OSError) as error:  # NaN/inf, a full disk or a folder that became unwritable
        last = latest_checkpoint(checkpoint_dir, digest, log=lambda *_: None)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was complete"
        fix = ("lower the learning rate (or clip rewards) and start again from it" if isinstance(error, NonFiniteError)
               else "free space (or make the folder writable) and continue")
        print(f"rlvision train: error: {error}; {kept}: {fix} with:\n    {resume_command} --resume",
              file=sys.stderr, flush=True)
        env.close()
        eval_env.close()
        raise SystemExit(1) from None
    except PreemptedError as error:
        where = f"checkpoint {error.checkpoint}" if error.checkpoint else "the last checkpoint"
        print(f"rlvision train: {signal.Signals(error.signum).name}: stopped at step {model.num_timesteps:,}; "
              f"{where} holds the run. Continue it with:\n    {resume_command} --resume", file=sys.stderr, flush=True)
        env.close()
        eval_env.close()
        raise SystemExit(128 + error.signum) from None
    print(f"TensorBoard: tensorboard --logdir {cfg['log_dir']}")
    env.close()
    eval_env.close()
    return result


def finish(model, cfg: dict, run_dir: str, eval_env, start: float, first_step: int, resumed_from) -> dict:
    """The end of a run: the final model (atomically, with its manifest), the export, the evaluation, results.json
    (atomically: a run that has one is finished)."""
    elapsed = time.perf_counter() - start
    save_model(model, os.path.join(run_dir, "model.zip"))
    if cfg["export"]:  # the policy as one file, checked against the model (rlvision.export)
        from rlvision.export import export_policy

        export_policy(model, os.path.join(run_dir, EXPORT_FORMATS[cfg["export"]]), format=cfg["export"])
    result = dict(run_dir=run_dir, steps=int(model.num_timesteps), seconds=round(elapsed, 1),
                  fps=round((model.num_timesteps - first_step) / max(elapsed, 1e-9), 1), resumed_from=resumed_from)
    if cfg["eval_episodes"]:  # on the separate evaluation env
        result.update(evaluate_agent(model, eval_env, cfg["eval_episodes"]))
    path = os.path.join(run_dir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(path + ".tmp", path)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
