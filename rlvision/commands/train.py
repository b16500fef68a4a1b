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
from stable_baselines3.common.logger import configure as configure_logger

from rlvision.agents import evaluate_agent
from rlvision.agents.checkpoints import (CheckpointEvery, ContinuedLogger, NonFiniteError, PreemptedError,
                                         StopOnNonFinite, StopOnSignal, checkpoint_meta, config_hash,
                                         latest_checkpoint, load_checkpoint, save_checkpoint, truncate_tensorboard)
from rlvision.agents.factory import DEFAULTS, check_hyperparams, check_replay_buffer
from rlvision.envs import check_env_id
from rlvision.model_files import UntrustedModelError
from rlvision.model_files import save as save_model
from rlvision.runs import (RENAMED_KEYS, RUN_SETTINGS, RunSpec, add_run_arguments, build, build_env, check_entry,
                           check_stage, check_values, default_of, field_help, make_env_for, run, run_settings)
from rlvision.commands import command_parser

# the run's keys: RunSpec's fields (rlvision.runs, the same as compare's and sweep's flags), then train's own
RUN_KEYS = ("env", "backbone", "options", "algo", "seed", "stage", *RUN_SETTINGS)
TRAIN_HELP = dict(
    log_dir="folder of the runs",
    run_name="the run's folder name (null: algo_backbone_env_s<seed>)",
    export="onnx or torchscript: the policy as a file at the end (null: no)")
DEFAULT_CONFIG = {**{key: default_of(key) for key in RUN_KEYS},
                  **dict(log_dir="runs/train", run_name=None, export=None)}
# keys that may change when a run is resumed (the rest must match the checkpoint's config)
RESUMABLE_CHANGES = ("steps", "eval_episodes", "checkpoint_every", "threads", "device", "precision", "log_dir",
                     "run_name", "export", "check_nan")
EXPORT_FORMATS = {"onnx": "policy.onnx", "torchscript": "policy.pt"}
# what each key of a config means (train --help lists them with their defaults)
CONFIG_HELP = {**{key: field_help(key) for key in RUN_KEYS},
               **{key: f"{text} (default: {json.dumps(DEFAULT_CONFIG[key])})" for key, text in TRAIN_HELP.items()}}
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
    lines = [f"  {key:<{width}}  {CONFIG_HELP[key]}" for key in DEFAULT_CONFIG]
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


def load_config(path: str | None, overrides: list[str], flags: dict | None = None) -> dict:
    """The YAML file (a path, or the name of a shipped config) over DEFAULT_CONFIG, then the run-setting flags
    (``--steps 5000``), then ``key=value`` overrides (values parsed as YAML). Keys of older configs
    (RENAMED_KEYS: ``backbone_kwargs``, ``features_dim``) are read into their replacement with a note naming it. A
    ValueError names an unknown key (with the closest known one) or a value of the wrong kind."""
    config = dict(DEFAULT_CONFIG)
    given: dict = {}
    if path:
        path = config_path(path)
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path} is not a YAML mapping of config keys.")
        unknown = set(loaded) - set(DEFAULT_CONFIG) - set(RENAMED_KEYS)
        if unknown:
            raise ValueError(f"Unknown config keys {_with_matches(unknown)} in {path}; known: {sorted(DEFAULT_CONFIG)}")
        given.update(loaded)
    given.update(flags or {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in set(DEFAULT_CONFIG) | set(RENAMED_KEYS):
            raise ValueError(f"--set wants key=value with key in {sorted(DEFAULT_CONFIG)}, got {item!r}"
                             + (f" ({_with_matches([key])[0]})" if sep else ""))
        given[key] = yaml.safe_load(value)
    for old, new in RENAMED_KEYS.items():  # older configs keep working; the note says what to write instead
        if old in given:
            value = given.pop(old)
            print(f"rlvision train: note: config key {old!r} is now {new!r}; read as such.", file=sys.stderr)
            if old == "features_dim":
                value = {"features_dim": value}
            if not isinstance(value, dict):
                raise ValueError(f"Config key {old!r} (now {new!r}) must be a mapping (YAML dict), got {value!r}.")
            given["options"] = {**given.get("options", {}), **value}
    config.update(given)
    check_values(config)
    if config["export"] is not None and config["export"] not in EXPORT_FORMATS:
        raise ValueError(f"Config key 'export' must be one of {sorted(EXPORT_FORMATS)} or null, got "
                         f"{config['export']!r}.")
    return config


# RunSpec fields that train's config did not have before it was a RunSpec: left out of the checkpoint digest while
# they hold their default, so a run started before still resumes
_NEW_KEYS = ("low_res", "backend", "preprocess_scale", "eval_every", "test_env_kwargs", "stage", "precision")


def run_digest(cfg: dict) -> str:
    """The checkpoint digest of a config: what must match for --resume (RESUMABLE_CHANGES may differ), in the
    layout train's configs had before RunSpec (``backbone_kwargs``, ``features_dim``), so their checkpoints match."""
    legacy = {k: v for k, v in cfg.items() if k != "options" and (k not in _NEW_KEYS or v != default_of(k))}
    options = dict(cfg["options"])
    legacy["features_dim"] = options.pop("features_dim", 256)
    legacy["backbone_kwargs"] = options
    return config_hash(legacy, RESUMABLE_CHANGES)


def spec_of(cfg: dict, progress: bool) -> RunSpec:
    """The RunSpec of a config (its run keys; checkpoints, folders and export are train's)."""
    return RunSpec(**{key: cfg[key] for key in RUN_KEYS}, progress=progress)


def main(argv: list[str] | None = None) -> dict:
    parser = command_parser("train", __doc__)
    parser.epilog = keys_help()
    parser.add_argument("config", nargs="?",
                        help="a YAML file, or the name of a shipped config (default: none, the keys' defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set steps=100000 (default: none)")
    add_run_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--resume", action="store_true",
                        help="continue the newest complete checkpoint of this run (same config)")
    parser.add_argument("--trust-file", action="store_true",
                        help="with --resume: open a checkpoint that needs unpickling (runs code from the file; only "
                             "for files you trust; rlvision's own checkpoints never need it)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set, run_settings(args))
    except (ValueError, FileNotFoundError, yaml.YAMLError) as error:  # one status and prefix for every user error
        parser.error(str(error))
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    spec = spec_of(cfg, progress=not args.no_progress)

    try:  # everything a typo can break, before any folder or file is made
        check_env_id(cfg["env"])
        check_entry(cfg["backbone"], dict(cfg["options"]), cfg["algo"], allow_algo_option=False)
        check_hyperparams(cfg["algo"], cfg["hyperparams"])
        check_stage(cfg["stage"])
        if cfg["eval_every"] is not None and not cfg["eval_episodes"]:
            raise ValueError("eval_every needs eval_episodes >= 1")
        if cfg["export"] == "onnx":
            import importlib.util

            if not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript")):
                raise ValueError("export: onnx needs onnx, onnxruntime and onnxscript: pip install 'rlvision[export]' "
                                 "(or export: torchscript).")
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))

    run_name = cfg["run_name"] or f"{cfg['algo']}_{cfg['backbone']}_{cfg['env'].replace('/', '-')}_s{cfg['seed']}"
    run_dir = os.path.join(cfg["log_dir"], run_name)
    checkpoint_dir = os.path.join(run_dir, "checkpoints")
    digest = run_digest(cfg)
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

    # 1. Environments: the run's (rlvision.runs.build_env) and one separate evaluation copy.
    env = build_env(spec)
    eval_env = make_env_for(spec, 1, cfg["seed"] + 10_000)

    # 2. The agent, with the rlvision encoder, logging to TensorBoard and progress.csv under run_dir.
    if checkpoint is None:
        env, model = build(spec, env)
    else:  # the same memory check as a new run, then weights, optimizer, step count, buffer, VecNormalize
        params = {**DEFAULTS[cfg["algo"]], **cfg["hyperparams"]}
        if "buffer_size" in params:
            check_replay_buffer(cfg["algo"], env, params, 0.8)
        try:
            model = load_checkpoint(checkpoint, cfg["algo"], env, device=cfg["device"], trust=args.trust_file)
        except UntrustedModelError as error:
            parser.error(str(error).replace("trust=True) (the command line: --trust-file)", "trust=True): pass "
                                            "--trust-file"))
        env = model.get_env()
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

    # 3. Train (rlvision.runs.run: the profiler, the encoder diagnostics, the evaluation curve with eval_every), with
    # checkpoints every `checkpoint_every` steps.
    elapsed_before = float(checkpoint_meta(checkpoint).get("time_elapsed", 0.0)) if checkpoint else 0.0
    checkpoints = CheckpointEvery(cfg["checkpoint_every"], checkpoint_dir, digest, elapsed_before=elapsed_before)
    start, first_step = time.perf_counter(), model.num_timesteps
    stop = StopOnSignal(checkpoints)  # SIGTERM / SIGINT: a checkpoint at the next rollout start, then exit
    resume_command = "rlvision train " + " ".join(shlex.quote(a) for a in (argv if argv is not None
                                                                           else sys.argv[1:]) if a != "--resume")
    # the final evaluation is train's own (deterministic actions, after the model is saved); with eval_every the
    # run's curve is the evaluation
    run_spec = spec if cfg["eval_every"] else spec.replace(eval_episodes=0)
    try:
        with stop:
            try:  # on resume: the remaining steps, in the same TensorBoard run, with the step count and schedules
                outcome = run(run_spec, model=model, callbacks=[StopOnNonFinite(), checkpoints, stop],
                              closing_row=False)  # SB3's rows only: checkpoints carry what is pending
            except KeyboardInterrupt:  # Ctrl-C twice: at once, wherever it was
                saved = save_checkpoint(model, checkpoint_dir, digest, elapsed_before=elapsed_before)
                raise PreemptedError(signal.SIGINT, saved) from None
            finally:
                stop.training = False
            result = finish(model, cfg, run_dir, eval_env, start, first_step, resumed_from, outcome.row)
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


def finish(model, cfg: dict, run_dir: str, eval_env, start: float, first_step: int, resumed_from,
           row: dict | None = None) -> dict:
    """The end of a run: the final model (atomically, with its manifest), the export, the evaluation, results.json
    (atomically: a run that has one is finished) with the run's row (profiler phases, encoder size and diagnostics,
    the evaluation curve with eval_every)."""
    elapsed = time.perf_counter() - start
    save_model(model, os.path.join(run_dir, "model.zip"))
    if cfg["export"]:  # the policy as one file, checked against the model (rlvision.export)
        from rlvision.export import export_policy

        export_policy(model, os.path.join(run_dir, EXPORT_FORMATS[cfg["export"]]), format=cfg["export"])
    result = {k: v for k, v in (row or {}).items() if k != "diagnostics"}
    result.update(run_dir=run_dir, steps=int(model.num_timesteps), seconds=round(elapsed, 1),
                  fps=round((model.num_timesteps - first_step) / max(elapsed, 1e-9), 1), resumed_from=resumed_from)
    if cfg["eval_episodes"] and not cfg["eval_every"]:  # on the separate evaluation env
        result.update(evaluate_agent(model, eval_env, cfg["eval_episodes"]))
    path = os.path.join(run_dir, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(path + ".tmp", path)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
