"""Checkpoints a run can be resumed from: complete or absent, never half-written, checked before use.

A checkpoint is a folder ``<dir>/step_<N>/`` holding ``model.zip`` (weights, optimizer state, step count,
schedules; with rlvision's manifest, so it opens without unpickling), ``replay_buffer.npz`` for off-policy
algorithms, ``vecnormalize.npz`` when the env is normalised (both arrays and numbers only, read with
``allow_pickle=False``; checkpoints written before held ``.pkl`` files, which open only with ``trust``), and
``meta.json`` (step, config hash, size and SHA-256 of every file, the seconds trained so far and the ``train/*``
values of the last update, which SB3 logs with the next rollout). It is written under a temporary name and renamed
in one step, so a process killed while writing leaves no broken ``step_*`` folder. :func:`latest_checkpoint` takes
the newest one whose files match their hashes and whose config hash matches the run's; it says why it skips others.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import shutil
import signal
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from rlvision.model_files import UntrustedModelError
from rlvision.model_files import load as load_model
from rlvision.model_files import save as save_model


def config_hash(config: dict[str, Any], ignore: tuple[str, ...] = ()) -> str:
    """SHA-256 of the config (keys in ``ignore`` left out: what may change between a run and its resumption)."""
    kept = {k: v for k, v in sorted(config.items()) if k not in ignore}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pending_logs(model: BaseAlgorithm) -> dict[str, float]:
    """The ``train/*`` values recorded since the logger's last dump: SB3 writes an update's losses with the *next*
    rollout's row, so a checkpoint taken between the two must carry them or a resumed run loses that row's losses."""
    logger = getattr(model, "_logger", None)
    if logger is None:
        return {}
    return {k: float(v) for k, v in logger.name_to_value.items()
            if k.startswith("train/") and isinstance(v, numbers.Real) and not isinstance(v, bool)}


def save_checkpoint(model: BaseAlgorithm, directory: str, config_digest: str, keep: int = 3,
                    elapsed_before: float = 0.0, extra: dict[str, Any] | None = None) -> str:
    """Write ``directory/step_<N>`` atomically (temporary folder, then rename); keep the newest ``keep``.
    ``elapsed_before``: seconds trained by earlier segments of the run (a resumed run's clock goes on from there).
    ``extra``: JSON-able state of the caller kept in ``meta.json`` (e.g. the learning curve so far)."""
    step = int(model.num_timesteps)
    elapsed = elapsed_before + max(time.time_ns() - model.start_time, 0) / 1e9 if model.start_time else elapsed_before
    final = os.path.join(directory, f"step_{step:012d}")
    tmp = os.path.join(directory, f".tmp-step_{step:012d}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_checkpoint(model, tmp, step, config_digest, elapsed, extra)
    except OSError as error:  # a full disk, a folder made read-only: nothing half-written stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointWriteError(error.errno, f"could not write the checkpoint at step {step:,} in {directory} "
                                                f"({error.strerror or error})") from error
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(d for d in os.listdir(directory) if d.startswith("step_"))[:-keep]:
        shutil.rmtree(os.path.join(directory, old), ignore_errors=True)
    return final


def _write_checkpoint(model: BaseAlgorithm, tmp: str, step: int, config_digest: str, elapsed: float,
                      extra: dict[str, Any] | None = None) -> None:
    """The files of a checkpoint, in the temporary folder ``tmp``."""
    os.makedirs(tmp)
    save_model(model, os.path.join(tmp, "model.zip"))  # with its manifest: it opens without unpickling
    if isinstance(model, OffPolicyAlgorithm) and model.replay_buffer is not None:
        save_replay_buffer(model.replay_buffer, os.path.join(tmp, "replay_buffer.npz"))
    env = model.get_vec_normalize_env()
    if env is not None:
        save_vecnormalize(env, os.path.join(tmp, "vecnormalize.npz"))
    files = {name: dict(size=os.path.getsize(os.path.join(tmp, name)), sha256=_digest(os.path.join(tmp, name)))
             for name in sorted(os.listdir(tmp))}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(dict(step=step, config_hash=config_digest, algo=type(model).__name__, files=files,
                       time_elapsed=round(elapsed, 3), pending_logs=_pending_logs(model), extra=extra or {}), f,
                  indent=1)
        f.flush()
        os.fsync(f.fileno())


def check_checkpoint(path: str, config_digest: str) -> str | None:
    """None when ``path`` is complete and made by this config; otherwise why not."""
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError) as error:
        return f"no readable meta.json ({error})"
    if meta.get("config_hash") != config_digest:
        return "made by another config (env, algo, backbone or hyperparameters differ)"
    for name, expected in meta.get("files", {}).items():
        file = os.path.join(path, name)
        if not os.path.isfile(file) or os.path.getsize(file) != expected["size"] or _digest(file) != expected["sha256"]:
            return f"{name} is missing, truncated or changed"
    return None


def latest_checkpoint(directory: str, config_digest: str, log=print) -> str | None:
    """The newest complete checkpoint of this config under ``directory``; skipped ones are reported with ``log``."""
    if not os.path.isdir(directory):
        return None
    for name in sorted((d for d in os.listdir(directory) if d.startswith("step_")), reverse=True):
        path = os.path.join(directory, name)
        problem = check_checkpoint(path, config_digest)
        if problem is None:
            return path
        log(f"Skipping checkpoint {path}: {problem}; trying the one before.")
    return None


def checkpoint_meta(path: str) -> dict[str, Any]:
    """``meta.json`` of the checkpoint at ``path`` (checked by :func:`check_checkpoint` first)."""
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)


class ContinuedLogger(Logger):
    """SB3's :class:`~stable_baselines3.common.logger.Logger` for a resumed run: the run's counters go on from the
    checkpoint instead of restarting (``time/iterations`` from the rollouts already done, ``time/time_elapsed`` from
    the seconds already trained), and the last update's ``train/*`` values the checkpoint carried are written with
    the first rollout's row, as the uninterrupted run would have written them."""

    def __init__(self, logger: Logger, offsets: dict[str, float], pending: dict[str, float] | None = None):
        super().__init__(logger.dir, logger.output_formats)
        self.offsets = dict(offsets)
        for key, value in (pending or {}).items():
            super().record(key, value)

    def record(self, key: str, value: Any, exclude=None) -> None:
        if key in self.offsets and isinstance(value, (int, float)):
            value = type(value)(value + self.offsets[key])
        super().record(key, value, exclude)

    @classmethod
    def resuming(cls, logger: Logger, model: BaseAlgorithm, checkpoint: str) -> ContinuedLogger:
        """``logger`` continuing the counters of ``model``, just loaded from ``checkpoint``."""
        meta = checkpoint_meta(checkpoint)
        offsets = {"time/time_elapsed": float(meta.get("time_elapsed", 0.0))}
        if isinstance(model, OnPolicyAlgorithm):  # every iteration collects n_steps x n_envs steps
            offsets["time/iterations"] = int(model.num_timesteps // (model.n_steps * model.n_envs))
        return cls(logger, offsets, meta.get("pending_logs"))


BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def save_replay_buffer(buffer, path: str) -> None:
    """A replay buffer's arrays and position as ``.npz`` (no pickle; Dict observations as ``observations/<key>``)."""
    arrays = {}
    for name in BUFFER_ARRAYS:
        value = getattr(buffer, name, None)
        if isinstance(value, dict):
            arrays.update({f"{name}/{key}": array for key, array in value.items()})
        elif isinstance(value, np.ndarray):
            arrays[name] = value
    with open(path, "wb") as f:
        np.savez(f, pos=np.array(buffer.pos), full=np.array(buffer.full), **arrays)


def load_replay_buffer(buffer, path: str) -> None:
    """Fill ``buffer`` (the one the loaded model made, same sizes) from :func:`save_replay_buffer`'s file."""
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            if key in ("pos", "full"):
                continue
            name, _, sub = key.partition("/")
            target = getattr(buffer, name)
            target = target[sub] if sub else target
            if target.shape != data[key].shape:
                raise ValueError(f"{path}: {key} has shape {data[key].shape}, the model's buffer {target.shape}; the "
                                 f"checkpoint belongs to another buffer_size or env.")
            target[...] = data[key]
        buffer.pos, buffer.full = int(data["pos"]), bool(data["full"])


def _rms_arrays(prefix: str, rms) -> dict[str, np.ndarray]:
    return {f"{prefix}/mean": np.asarray(rms.mean), f"{prefix}/var": np.asarray(rms.var),
            f"{prefix}/count": np.asarray(rms.count)}


def _fill_rms(rms, data, prefix: str) -> None:
    rms.mean, rms.var, rms.count = data[f"{prefix}/mean"], data[f"{prefix}/var"], float(data[f"{prefix}/count"])


def save_vecnormalize(env: VecNormalize, path: str) -> None:
    """VecNormalize's statistics and settings as ``.npz`` (no pickle)."""
    settings = dict(training=env.training, norm_obs=env.norm_obs, norm_reward=env.norm_reward, clip_obs=env.clip_obs,
                    clip_reward=env.clip_reward, gamma=env.gamma, epsilon=env.epsilon, norm_obs_keys=env.norm_obs_keys)
    arrays = {**_rms_arrays("ret_rms", env.ret_rms), "returns": np.asarray(env.returns)}
    if env.norm_obs:
        if isinstance(env.obs_rms, dict):
            for key, rms in env.obs_rms.items():
                arrays.update(_rms_arrays(f"obs_rms/{key}", rms))
        else:
            arrays.update(_rms_arrays("obs_rms", env.obs_rms))
    with open(path, "wb") as f:
        np.savez(f, settings=np.array(json.dumps(settings)), **arrays)


def load_vecnormalize(path: str, venv) -> VecNormalize:
    """A VecNormalize around ``venv`` with the statistics and settings of :func:`save_vecnormalize`'s file."""
    with np.load(path, allow_pickle=False) as data:
        settings = json.loads(str(data["settings"]))
        env = VecNormalize(venv, **settings)
        _fill_rms(env.ret_rms, data, "ret_rms")
        if env.norm_obs:
            if isinstance(env.obs_rms, dict):
                for key, rms in env.obs_rms.items():
                    _fill_rms(rms, data, f"obs_rms/{key}")
            else:
                _fill_rms(env.obs_rms, data, "obs_rms")
        if data["returns"].shape == env.returns.shape:
            env.returns = data["returns"]
    return env


def load_checkpoint(path: str, algo: str, env, device: str = "auto", trust: bool = False) -> BaseAlgorithm:
    """The model of checkpoint ``path`` on ``env`` (VecNormalize statistics restored onto a VecNormalize ``env``),
    with its replay buffer for off-policy algorithms. Nothing is unpickled (the model zip by
    :func:`rlvision.model_files.load`, the buffer and statistics from ``.npz``); a checkpoint written before (its
    ``.pkl`` files) opens only with ``trust=True``."""
    for old in ("vecnormalize.pkl", "replay_buffer.pkl"):
        if os.path.isfile(os.path.join(path, old)) and not trust:
            raise UntrustedModelError(
                f"{os.path.join(path, old)} is a pickle (checkpoints before rlvision's manifest); unpickling runs "
                f"code from the file. If you trust it, resume with trust=True (the command line: --trust-file).")
    if isinstance(env, VecNormalize):
        if os.path.isfile(os.path.join(path, "vecnormalize.npz")):
            env = load_vecnormalize(os.path.join(path, "vecnormalize.npz"), env.venv)
        elif os.path.isfile(os.path.join(path, "vecnormalize.pkl")):
            env = VecNormalize.load(os.path.join(path, "vecnormalize.pkl"), env.venv)
    model = load_model(os.path.join(path, "model.zip"), env=env, device=device, algo=algo, trust=trust)
    if os.path.isfile(os.path.join(path, "replay_buffer.npz")):
        load_replay_buffer(model.replay_buffer, os.path.join(path, "replay_buffer.npz"))
    elif os.path.isfile(os.path.join(path, "replay_buffer.pkl")):
        model.load_replay_buffer(os.path.join(path, "replay_buffer.pkl"))
    return model


class CheckpointEvery(BaseCallback):
    """Save a checkpoint (:func:`save_checkpoint`) once ``every`` env steps have passed, at the start of the next
    rollout (after the update that followed the last one, so weights and step count agree), and when training ends."""

    def __init__(self, every: int, directory: str, config_digest: str, keep: int = 3, elapsed_before: float = 0.0,
                 extra: Callable[[], dict[str, Any]] | None = None):
        super().__init__()
        self.every, self.directory, self.config_digest, self.keep = every, directory, config_digest, keep
        self.elapsed_before = elapsed_before
        self.extra = extra  # called at each save: JSON-able state kept in meta.json
        self.last: str | None = None
        self._saved_at = -1

    def _on_training_start(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        for name in os.listdir(self.directory):  # the temporary folder of a write that a kill interrupted
            if name.startswith(".tmp-step_"):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        self.next = (self.num_timesteps // self.every + 1) * self.every

    def _save(self) -> None:
        self.last = save_checkpoint(self.model, self.directory, self.config_digest, self.keep, self.elapsed_before,
                                    self.extra() if self.extra is not None else None)
        self._saved_at = self.num_timesteps
        self.next = (self.num_timesteps // self.every + 1) * self.every

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self.next:
            self._save()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if self.num_timesteps != self._saved_at:
            self._save()


class NonFiniteError(Exception):
    """An update left a NaN or inf in the parameters or the logged losses."""


class StopOnNonFinite(BaseCallback):
    """Stop at the first update that produces a NaN or inf: after each update (at the start of the next rollout,
    before :class:`CheckpointEvery` runs, so a broken state is never checkpointed) the policy's parameters and the
    ``train/*`` values the update logged are checked; :class:`NonFiniteError` names the update, the step and what
    went non-finite."""

    def _check(self) -> None:
        import torch

        model = self.model
        logged = getattr(getattr(model, "_logger", None), "name_to_value", {})
        bad = [k for k, v in logged.items() if k.startswith("train/") and isinstance(v, numbers.Real)
               and not isinstance(v, bool) and not np.isfinite(v)]
        with torch.no_grad():
            bad += [f"parameter {name}" for name, p in model.policy.named_parameters()
                    if not bool(torch.isfinite(p).all())]
        if bad:
            updates = getattr(model, "_n_updates", "?")
            raise NonFiniteError(f"update {updates} (by step {model.num_timesteps:,}) made {', '.join(bad[:4])}"
                                 f"{' and more' if len(bad) > 4 else ''} NaN or inf")

    def _on_rollout_start(self) -> None:
        self._check()

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self._check()


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a folder that is not writable); nothing of it is left."""


class PreemptedError(Exception):
    """A SIGTERM or SIGINT stopped the run; ``checkpoint``: the one written on the way out (None: outside training,
    the last periodic one holds the run)."""

    def __init__(self, signum: int, checkpoint: str | None):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.checkpoint = signum, checkpoint


class StopOnSignal(BaseCallback):
    """SIGTERM (what SLURM, Kubernetes, spot instances and Ray send before a kill) and SIGINT (Ctrl-C) end a run at
    the next consistent point: at the start of the next rollout (the last update done, so weights, optimizer state,
    step count and logs agree, as at a periodic checkpoint) a checkpoint is written atomically and
    :class:`PreemptedError` is raised out of ``learn``. A second SIGINT interrupts at once (KeyboardInterrupt).

    Used as a context manager it installs the handlers (in the main thread) and restores the previous ones on exit;
    outside ``learn`` (saving, the final evaluation) a signal raises :class:`PreemptedError` right away."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, checkpoints: CheckpointEvery):
        super().__init__()
        self.checkpoints = checkpoints
        self.signum: int | None = None
        self.training = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: now
        self.signum = signum
        if not self.training:
            raise PreemptedError(signum, None)

    def _on_training_start(self) -> None:
        self.training = True

    def _on_rollout_start(self) -> None:
        if self.signum is not None:
            if self.checkpoints._saved_at != self.num_timesteps:
                self.checkpoints._save()
            self.training = False
            raise PreemptedError(self.signum, self.checkpoints.last)

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self.training = False


def truncate_tensorboard(run_dir: str, step: int) -> int:
    """Drop the TensorBoard points past ``step`` from the event files in ``run_dir`` (a resume from the checkpoint at
    ``step`` logs those steps again: without this TensorBoard shows them twice). Each file is rewritten under a
    temporary name and renamed over the original; returns how many points were dropped."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.summary.writer.record_writer import RecordWriter

    dropped = 0
    for name in sorted(os.listdir(run_dir)):
        if not name.startswith("events.out.tfevents"):
            continue
        path = os.path.join(run_dir, name)
        events = list(LegacyEventFileLoader(path).Load())  # the events as written (no format migration)
        kept = [e for e in events if not (e.step > step and e.WhichOneof("what") == "summary")]
        if len(kept) == len(events):
            continue
        dropped += len(events) - len(kept)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            writer = RecordWriter(f)
            for event in kept:
                writer.write(event.SerializeToString())
            writer.flush()
        os.replace(tmp, path)
    return dropped
