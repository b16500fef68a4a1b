"""Argument checks shared by the public entry points: every refusal names the argument and what is allowed."""

from __future__ import annotations

import difflib
from typing import Any
from collections.abc import Callable


def accepted_keywords(builder: Callable[..., Any]) -> list[str] | None:
    """The keyword arguments ``builder`` takes (following ``functools.partial`` and ``__wrapped__``), or None when it
    takes any (``**kwargs``) and cannot be checked."""
    import inspect

    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        wrapped = getattr(builder, "__wrapped__", None)
        return accepted_keywords(wrapped) if wrapped is not None else None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def init_keywords(cls: type) -> list[str] | None:
    """The keyword arguments ``cls(...)`` takes: its ``__init__``'s and, where that forwards ``**kwargs``, its base
    classes' (e.g. a subclass of an SB3 algorithm); None when the chain ends in ``**kwargs``."""
    import inspect

    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None


def check_keywords(kwargs: dict[str, Any], accepted: list[str] | None, what: str, extra: tuple[str, ...] = ()) -> None:
    """A ValueError naming each unknown keyword, a close match, and every accepted keyword of ``what``."""
    if accepted is None:
        return
    allowed = sorted(set(accepted) | set(extra))
    unknown = [k for k in kwargs if k not in allowed]
    if unknown:
        hints = [f"{k!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, allowed, 1))
                             else "") for k in unknown]
        raise ValueError(f"{what} got unknown keyword{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
                         f"it accepts: {', '.join(allowed)}.")


def check_int(name: str, value: Any, minimum: int = 1, allow_none: bool = False) -> None:
    """A ValueError unless ``value`` is an int >= ``minimum`` (or None when ``allow_none``)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an int >= {minimum}{none}, got {value!r}.")


def check_range(name: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
    """A ValueError unless ``low <= value <= high`` (``low < value`` with ``low_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        (value > low) if low_open else (value >= low)) and value <= high
    if not ok:
        raise ValueError(f"{name} must be in {'(' if low_open else '['}{low}, {high}], got {value!r}.")
