"""Presets designed on the device they train on: MobileNet-v4's own method, applied to the RL loop (issue 31).

MobileNet-v4 was found by measuring candidates on each target device. Here a candidate is a block string of
:func:`rlvision.backbones.mobilenetv4.parse_blocks` (the registered backbone ``mobilenetv4_blocks``), and:

- its **cost** is measured on this device in both regimes of PPO by :mod:`rlvision.loop_cost` (rollout forward at
  batch 8, update step at batch 256, inside SB3's policy): milliseconds of compute per 1,000 env steps at each frame
  side, as a ratio to a reference encoder measured in the same run;
- its **quality** is a short learning proxy: PPO on a task for a few thousand steps, several seeds, run through the
  sweep's public entry point (``rlvision sweep``): the mean evaluation return over the learning curve (the area
  under it, so speed of learning counts) and the final return.

:func:`pareto_front` keeps the candidates no other beats on both; :func:`plot_front` draws them.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable

import numpy as np

BLOCKS_BACKBONE = "mobilenetv4_blocks"


def design_space(stems: Iterable[int] = (16, 32), extras: Iterable[str] = ("", "er", "er_r2", "uir"),
                 second_stride: Iterable[bool] = (False, True)) -> list[str]:
    """Block strings of the search: a 4x4 stride-4 stem conv (NatureCNN's first layer shrinks frames as much) of
    width ``c``; a stride-2 FusedIB to ``2c`` (a dense 3x3 conv: on CPUs it runs faster than depthwise + pointwise);
    then at stride 1 ``extra``: nothing, one FusedIB (``er``), two (``er_r2``) or one UIB with a 3x3 depthwise
    start (``uir``, the inverted bottleneck); optionally a second stride-2 FusedIB (expansion 1)."""
    out = []
    for c, extra, second in itertools.product(stems, extras, second_stride):
        blocks = [f"cn_c{c}_k4_s4", f"er_c{2 * c}_e2_s2"]
        if extra.startswith("er"):
            blocks.append(f"er_c{2 * c}_e2" + extra[2:])
        elif extra == "uir":
            blocks.append(f"uir_c{2 * c}_e4_a3_k0")
        if second:
            blocks.append(f"er_c{2 * c}_e1_s2")
        out.append("-".join(blocks))
    return out


def candidate(blocks: str, **options) -> str:
    """The backbone entry of a block string, as sweeps and ``compare`` take it: ``mobilenetv4_blocks[blocks=...]``."""
    extra = "".join(f",{k}={v}" for k, v in options.items())
    return f"{BLOCKS_BACKBONE}[blocks={blocks}{extra}]"


def curve_area(curve: list[dict]) -> float:
    """Mean evaluation return over a learning curve's points after step 0 (the normalised area under it)."""
    points = [p["eval_return"] for p in curve if p["steps"] > 0]
    return float(np.mean(points)) if points else float("nan")


def proxy_quality(sweep_out: str) -> dict[str, dict]:
    """{backbone label: area (mean over seeds of :func:`curve_area`), final return, seeds} from a finished sweep's
    trial files."""
    per: dict[str, list[dict]] = {}
    folder = os.path.join(sweep_out, "trials")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                row = json.load(f)
            per.setdefault(row["backbone"], []).append(row)
    return {label: dict(area=float(np.mean([curve_area(r["curve"]) for r in rows])),
                        final=float(np.mean([r["curve"][-1]["eval_return"] for r in rows])), seeds=len(rows))
            for label, rows in per.items()}


def pareto_front(rows: list[dict], cost: str, quality: str) -> list[dict]:
    """The rows no other row beats on both: lower or equal ``cost`` and higher or equal ``quality``, one strictly.
    Sorted by cost."""
    front = [r for r in rows if not any(
        o[cost] <= r[cost] and o[quality] >= r[quality] and (o[cost] < r[cost] or o[quality] > r[quality])
        for o in rows)]
    return sorted(front, key=lambda r: r[cost])


def plot_front(rows: list[dict], path: str, cost: str, quality: str, title: str) -> None:
    """Every candidate as a point (cost, quality), the Pareto front as a line, references (rows with
    ``reference=True``) labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter([r[cost] for r in rows], [r[quality] for r in rows], s=18, color="0.6", label="candidates")
    front = pareto_front(rows, cost, quality)
    ax.plot([r[cost] for r in front], [r[quality] for r in front], "o-", color="C0", label="Pareto front")
    for r in rows:
        if r.get("reference") or r in front:
            ax.annotate(r["name"], (r[cost], r[quality]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set(xlabel=cost, ylabel=quality, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
