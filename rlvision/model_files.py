"""Model zips that open without running code from them: :func:`save` writes a plain-JSON manifest into SB3's zip,
:func:`load` rebuilds every pickled entry from it, so nothing is unpickled.

SB3's zip keeps the model's settings in a JSON entry ``data``; values JSON cannot hold (the policy class, the
``policy_kwargs`` with their classes, the observation and action spaces, schedules, buffers) are cloudpickled into
it, and SB3's ``load`` unpickles every one of them: a crafted zip runs its payload as it is opened. The weights
(``*.pth``) are read by ``torch.load(weights_only=True)``, which runs no code.

- :func:`save` writes SB3's zip under a temporary name, adds ``rlvision.json`` (algorithm, policy class, encoder and
  its options, spaces, schedules as values or RL Zoo's ``lin_<x>`` strings, every other pickled entry in plain
  form, the versions of rlvision, SB3 and torch) and renames it into place.
- :func:`load` reads ``data`` as JSON and hands SB3 ``custom_objects`` for every pickled entry: from the manifest,
  or, for zips without one (saved before, or by plain SB3), from the readable text SB3 writes next to each pickle
  (class paths, literal dicts, space fields, schedule values) where that text says all there is. Classes are
  resolved only inside stable_baselines3, sb3_contrib, rlvision, torch.nn, torch.optim and gymnasium.spaces.
- An entry it cannot rebuild that way is refused (:class:`UntrustedModelError` names the entry, the risk and the
  opt-in ``trust=True`` / ``--trust-file``). With ``trust=True`` SB3's own loader runs, unpickling as it does.
"""

from __future__ import annotations

import ast
import base64
import enum
import importlib
import io
import json
import os
import pickletools
import re
import zipfile
from collections import deque
from typing import Any

import numpy as np

MANIFEST = "rlvision.json"
FORMAT = 1
# where a class named in a file may come from (importing these runs no code of the file)
ALLOWED_MODULES = ("stable_baselines3.", "sb3_contrib.", "rlvision.", "torch.nn.", "torch.optim.", "gymnasium.spaces.")
# pickled entries a model does not need to act or to go on training: SB3 makes them anew (last observation of the
# env, episode starts; the episode-info buffers are kept in the manifest when rlvision writes the zip)
DROPPABLE = ("_last_obs", "_last_episode_starts", "_last_original_obs", "ep_info_buffer", "ep_success_buffer",
             "_last_lstm_states")


class UntrustedModelError(ValueError):
    """The zip holds a pickled entry that only unpickling could rebuild (running code from the file)."""


class _UnsupportedError(Exception):
    """A value this module cannot describe or rebuild without pickle."""


# --- encoding live objects as JSON (save) ---------------------------------------------------------------------------

def _class_path(cls: type) -> str:
    path = f"{cls.__module__}:{cls.__qualname__}"
    _resolve_class(path)  # only classes that will load again
    return path


def _encode(value: Any) -> Any:
    from gymnasium import spaces
    from stable_baselines3.common import noise, utils

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, enum.Enum):  # e.g. SB3's TrainFrequencyUnit; SB3 converts the value back where it is used
        return _encode(value.value)
    if isinstance(value, type):
        return {"__rlvision__": "class", "path": _class_path(value)}
    if isinstance(value, tuple):  # named tuples too (SB3's TrainFreq: rebuilt from the plain tuple by SB3)
        return {"__rlvision__": "tuple", "items": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise _UnsupportedError(f"a dict with keys that are not strings ({list(value)[:3]})")
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, deque):
        return {"__rlvision__": "deque", "maxlen": value.maxlen, "items": [_encode(v) for v in value]}
    if isinstance(value, spaces.Space):
        return {"__rlvision__": "space", **_space_to_json(value)}
    if isinstance(value, (utils.FloatSchedule, utils.LinearSchedule, utils.ConstantSchedule)):
        return {"__rlvision__": "schedule", "value": _schedule_to_json(value)}
    if isinstance(value, noise.NormalActionNoise):
        return {"__rlvision__": "normal_noise", "mean": value._mu.tolist(), "sigma": value._sigma.tolist()}
    raise _UnsupportedError(f"an object of type {type(value).__module__}.{type(value).__qualname__}")


def _schedule_to_json(schedule: Any) -> Any:
    """A constant (a number), ``"lin_<start>"`` (from start to 0 over the run: RL Zoo's spelling, as
    rlvision.agents.resolve_schedules makes it) or ``{"linear": [start, end, end_fraction]}``."""
    from stable_baselines3.common import utils

    if isinstance(schedule, utils.FloatSchedule):
        schedule = schedule.value_schedule
    if isinstance(schedule, utils.ConstantSchedule):
        return float(schedule.val)
    if isinstance(schedule, utils.LinearSchedule):
        if schedule.end == 0.0 and schedule.end_fraction == 1.0:
            return f"lin_{float(schedule.start)!r}"
        return {"linear": [float(schedule.start), float(schedule.end), float(schedule.end_fraction)]}
    raise _UnsupportedError(f"a schedule of type {type(schedule).__qualname__}")


def _space_to_json(space: Any) -> dict:
    from gymnasium import spaces

    def bound(array: np.ndarray) -> Any:
        flat = array.reshape(-1)
        return flat[0].item() if flat.size and np.all(flat == flat[0]) else array.tolist()

    if isinstance(space, spaces.Box):
        return dict(kind="box", dtype=str(space.dtype), shape=list(space.shape), low=bound(space.low),
                    high=bound(space.high))
    if isinstance(space, spaces.Discrete):
        return dict(kind="discrete", n=int(space.n), start=int(space.start))
    if isinstance(space, spaces.MultiDiscrete):
        return dict(kind="multidiscrete", nvec=space.nvec.tolist(), start=space.start.tolist(), dtype=str(space.dtype))
    if isinstance(space, spaces.MultiBinary):
        return dict(kind="multibinary", n=space.n if isinstance(space.n, int) else list(space.n))
    if isinstance(space, spaces.Dict):
        return dict(kind="dict", spaces={k: _space_to_json(v) for k, v in space.spaces.items()})
    raise _UnsupportedError(f"a {type(space).__qualname__} space")


# --- decoding (load) --------------------------------------------------------------------------------------------------

def _resolve_class(path: str) -> type:
    """The class at ``"module:Qual.Name"``, only inside :data:`ALLOWED_MODULES`."""
    module, _, qualname = path.partition(":")
    if not module.startswith(ALLOWED_MODULES) or not qualname:
        raise _UnsupportedError(f"class {path!r} is outside the libraries a model file may name")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as error:
        raise _UnsupportedError(f"class {path!r} does not exist here ({error})") from error
    if not isinstance(obj, type):
        raise _UnsupportedError(f"{path!r} is not a class")
    return obj


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get("__rlvision__")
    if kind is None:
        return {k: _decode(v) for k, v in value.items()}
    if kind == "class":
        return _resolve_class(value["path"])
    if kind == "tuple":
        return tuple(_decode(v) for v in value["items"])
    if kind == "deque":
        return deque((_decode(v) for v in value["items"]), maxlen=value["maxlen"])
    if kind == "space":
        return _space_from_json(value)
    if kind == "schedule":
        return _schedule_from_json(value["value"])
    if kind == "normal_noise":
        from stable_baselines3.common.noise import NormalActionNoise

        return NormalActionNoise(np.asarray(value["mean"]), np.asarray(value["sigma"]))
    if kind == "none":
        return None
    raise _UnsupportedError(f"an entry of kind {kind!r}")


def _schedule_from_json(value: Any) -> Any:
    from stable_baselines3.common.utils import ConstantSchedule, FloatSchedule, LinearSchedule

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return FloatSchedule(ConstantSchedule(float(value)))
    if isinstance(value, str) and value.startswith("lin_"):
        return FloatSchedule(LinearSchedule(float(value[4:]), 0.0, 1.0))
    if isinstance(value, dict) and "linear" in value:
        return FloatSchedule(LinearSchedule(*map(float, value["linear"])))
    raise _UnsupportedError(f"a schedule {value!r}")


def _space_from_json(value: dict) -> Any:
    from gymnasium import spaces

    kind = value["kind"]
    if kind == "box":
        dtype = np.dtype(value["dtype"])
        shape = tuple(value["shape"])
        low = np.broadcast_to(np.asarray(value["low"], dtype=dtype), shape).copy()
        high = np.broadcast_to(np.asarray(value["high"], dtype=dtype), shape).copy()
        return spaces.Box(low, high, shape, dtype)
    if kind == "discrete":
        return spaces.Discrete(value["n"], start=value.get("start", 0))
    if kind == "multidiscrete":
        return spaces.MultiDiscrete(value["nvec"], dtype=value.get("dtype", "int64"), start=value.get("start"))
    if kind == "multibinary":
        return spaces.MultiBinary(value["n"])
    if kind == "dict":
        return spaces.Dict({k: _space_from_json(v) for k, v in value["spaces"].items()})
    raise _UnsupportedError(f"a space of kind {kind!r}")


# --- the readable text SB3 writes next to each pickle (zips without a manifest) ---------------------------------------

_CLASS_REPR = re.compile(r"^<class '([\w.]+)'>$")


def _referenced_class(serialized: str) -> type:
    """The class a pickle of a class by reference names, read from its opcodes without running them (an importable
    class is pickled as its module and name, nothing else)."""
    raw = base64.b64decode(serialized.encode())
    strings, globals_ = [], []
    for op, arg, _ in pickletools.genops(io.BytesIO(raw)):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            globals_.append(f"{strings[-2]}:{strings[-1]}")
        elif op.name == "GLOBAL":
            module, _, name = arg.partition(" ")
            globals_.append(f"{module}:{name}")
        elif op.name in ("REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX", "INST", "OBJ"):
            raise _UnsupportedError("it is pickled by value, not as a reference to an importable class")
    if len(globals_) != 1:
        raise _UnsupportedError("it is not a reference to one class")
    return _resolve_class(globals_[0])


def _literal(text: str) -> Any:
    """A value of SB3's readable text: a string SB3 kept as it was, or the ``str()`` of a value JSON could not hold
    (a Python literal; a class, ``<class 'a.b.C'>``, resolved by path)."""
    match = _CLASS_REPR.match(text)
    if match:
        module, _, name = match.group(1).rpartition(".")
        return _resolve_class(f"{module}:{name}")
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as error:
        if text[:1] in "<{[(":  # the str() of an object, not a plain string
            raise _UnsupportedError(f"{text[:60]!r} is not a literal") from error
        return text


def _value(item: Any) -> Any:
    """A field of SB3's readable text: JSON as it is, or the ``str()`` SB3 wrote (:func:`_literal`)."""
    return _literal(item) if isinstance(item, str) else item


def _array_text(text: str, dtype: np.dtype) -> np.ndarray:
    """numpy's printed array; ``...`` (a summary of a large array) only when every number shown is the same."""
    numbers = re.findall(r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|inf|nan)", text)
    if not numbers:
        raise _UnsupportedError(f"no numbers in {text[:40]!r}")
    values = np.array([float(n) for n in numbers])
    if "..." in text and not np.all(values == values[0]):
        raise _UnsupportedError("a summarised array whose values differ")
    return values.astype(dtype)


def _readable_space(item: dict) -> Any:
    from gymnasium import spaces

    kind = item.get(":type:", "")
    if "spaces.discrete.Discrete" in kind:
        return spaces.Discrete(int(_value(item["n"])), start=int(_value(item.get("start", 0))))
    if "spaces.box.Box" in kind:
        dtype = np.dtype(item["dtype"])
        shape = tuple(_value(item["_shape"]))
        size = int(np.prod(shape))
        bounds = []
        for key in ("low", "high"):
            values = (np.asarray(item[key], dtype=dtype).reshape(-1) if not isinstance(item[key], str)
                      else _array_text(item[key], dtype))
            if values.size == size:
                bounds.append(values.reshape(shape))
            elif "..." in item[key]:
                bounds.append(np.full(shape, values[0], dtype=dtype))
            else:
                raise _UnsupportedError(f"its {key} has {values.size} numbers for shape {shape}")
        return spaces.Box(bounds[0], bounds[1], shape, dtype)
    raise _UnsupportedError(f"a {kind} space")


def _readable_schedule(item: dict) -> Any:
    from stable_baselines3.common.utils import ConstantSchedule, FloatSchedule, LinearSchedule

    text = item.get("value_schedule", "")
    match = re.fullmatch(r"ConstantSchedule\(val=([^)]*)\)", text)
    if match:
        return FloatSchedule(ConstantSchedule(float(match.group(1))))
    match = re.fullmatch(r"LinearSchedule\(start=([^,]*), end=([^,]*), end_fraction=([^)]*)\)", text)
    if match:
        return FloatSchedule(LinearSchedule(*map(float, match.groups())))
    raise _UnsupportedError(f"a schedule {text[:60]!r}")


def _from_readable(key: str, item: dict) -> Any:
    """One pickled entry rebuilt from the readable text next to it, or :class:`_UnsupportedError`."""
    if key in DROPPABLE:
        return None
    kind = item.get(":type:", "")
    if kind in ("<class 'abc.ABCMeta'>", "<class 'type'>"):
        return _referenced_class(item[":serialized:"])
    if kind == "<class 'dict'>":  # policy_kwargs, replay_buffer_kwargs: each value as SB3 printed it
        return {k: _literal(v) if isinstance(v, str) else v for k, v in item.items() if not k.startswith(":")}
    if "gymnasium.spaces" in kind:
        return _readable_space(item)
    if "Schedule" in kind:
        return _readable_schedule(item)
    raise _UnsupportedError(f"an object of type {kind}")


# --- the two entry points ------------------------------------------------------------------------------------------

def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("rlvision", "stable_baselines3", "sb3_contrib", "torch", "gymnasium"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def manifest_of(model, data: dict[str, Any]) -> dict[str, Any]:
    """The manifest of ``model`` for the pickled entries of its saved ``data`` (their keys)."""
    entries, unsupported = {}, {}
    for key, item in data.items():
        if not (isinstance(item, dict) and ":serialized:" in item):
            continue
        if key in DROPPABLE and key not in ("ep_info_buffer", "ep_success_buffer"):
            entries[key] = {"__rlvision__": "none"}
            continue
        try:
            entries[key] = _encode(getattr(model, key))
        except (_UnsupportedError, AttributeError) as error:
            unsupported[key] = str(error)
    extractor_kwargs = dict(getattr(model, "policy_kwargs", {}).get("features_extractor_kwargs") or {})
    return dict(format=FORMAT, algorithm=type(model).__name__.lower(),
                policy_class=entries.get("policy_class", {}).get("path"),
                encoder=_encode(extractor_kwargs) if extractor_kwargs else None, entries=entries,
                unsupported=unsupported, versions=_versions())


def save(model, path: str) -> str:
    """``model.save`` plus the manifest, written under a temporary name and renamed into place (a crash leaves no
    half-written zip). Returns the path (``.zip`` added when missing, as SB3 does)."""
    path = str(path)
    if not path.endswith(".zip"):
        path += ".zip"
    tmp = f"{path}.tmp-{os.getpid()}.zip"
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp) as archive:
            data = json.loads(archive.read("data"))
        manifest = manifest_of(model, data)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_zip(path: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(SB3's ``data`` as JSON, the manifest or None); a ValueError that says what the file is otherwise."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "data" not in names:
                raise ValueError(f"{path} is a zip but not an SB3 model zip (no 'data' entry; it holds "
                                 f"{names[:5]}); pass a model saved by SB3 or rlvision.")
            data = json.loads(archive.read("data"))
            manifest = json.loads(archive.read(MANIFEST)) if MANIFEST in names else None
    except zipfile.BadZipFile as error:
        raise ValueError(f"{path} is not a model zip ({error}): pass a model saved by SB3 or rlvision "
                         f"(model.save / rlvision.save).") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: its data entry is not JSON ({error}); the file is damaged.") from error
    return data, manifest


def safe_objects(path: str, env=None) -> tuple[dict[str, Any], dict[str, str]]:
    """(custom_objects for every pickled entry that can be rebuilt without unpickling, {entry: why not} for the
    rest)."""
    data, manifest = read_zip(path)
    entries = (manifest or {}).get("entries", {})
    objects, problems = {}, {}
    for key, item in data.items():
        if not (isinstance(item, dict) and ":serialized:" in item):
            continue
        try:
            objects[key] = _decode(entries[key]) if key in entries else _from_readable(key, item)
        except _UnsupportedError as error:
            if env is not None and key in ("observation_space", "action_space"):
                objects[key] = getattr(env, key)  # SB3 checks the model against the env's spaces anyway
            else:
                problems[key] = str(error)
        except (KeyError, TypeError, ValueError) as error:
            problems[key] = f"its readable text is incomplete ({type(error).__name__}: {error})"
    return objects, problems


def algorithm_of(path: str) -> str | None:
    """The algorithm (rlvision.algorithms' name) of a model zip, from its manifest or its policy class, or None."""
    from .algorithms import ALGORITHMS

    data, manifest = read_zip(path)
    if manifest and manifest.get("algorithm") in ALGORITHMS:
        return manifest["algorithm"]
    text = json.dumps(data.get("policy_class", {}))
    order = sorted((row for row in ALGORITHMS.values() if row.policy_hint),
                   key=lambda r: (0 if r.policy_hint.startswith("sb3_contrib") else
                                  1 if r.policy_hint.startswith("stable") else 2, -len(r.policy_hint)))
    for row in order:
        if row.policy_hint in text:
            return row.name
    return None


def load(path: str, env=None, device: str = "auto", trust: bool = False, algo: str | None = None,
         custom_objects: dict[str, Any] | None = None, **kwargs: Any):
    """The model in the zip at ``path``, opened without unpickling anything (see the module docstring).

    :param env: as SB3's ``load``; its spaces stand in for a space the file cannot describe without pickle.
    :param trust: run SB3's own loader, which unpickles the file's pickled entries (only for files you trust).
    :param algo: the algorithm (default: from the manifest or the policy class).
    :param custom_objects: as SB3's; they win over what is rebuilt from the file.
    """
    path = str(path)
    if not os.path.isfile(path) and os.path.isfile(path + ".zip"):
        path += ".zip"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such model file.")
    from .algorithms import algorithm

    algo = algo or algorithm_of(path)
    if algo is None:
        raise ValueError(f"{path}: cannot tell the algorithm of this model; pass algo= (--algo).")
    cls = algorithm(algo).load_class()
    if trust:
        return cls.load(path, env=env, device=device, custom_objects=custom_objects, **kwargs)
    objects, problems = safe_objects(path, env)
    problems = {k: v for k, v in problems.items() if not (custom_objects and k in custom_objects)}
    if problems:
        key, why = next(iter(problems.items()))
        raise UntrustedModelError(
            f"{path}: entry {key!r} of its data is a pickled Python object that cannot be rebuilt without "
            f"unpickling it ({why})" + (f"; so are {sorted(problems)[1:]}" if len(problems) > 1 else "") +
            ". Unpickling runs code from the file. If you trust the file, open it with rlvision.load(path, "
            "trust=True) (the command line: --trust-file); then save it with rlvision.save to add the manifest that "
            "opens it safely.")
    return cls.load(path, env=env, device=device, custom_objects={**objects, **(custom_objects or {})}, **kwargs)
