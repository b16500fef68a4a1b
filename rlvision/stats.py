"""Statistics over seeds and the one table writer, for sweeps, comparisons and benchmarks.

- :func:`bootstrap_ci` (percentile bootstrap CI of the mean), :func:`interquartile_mean` (rliable's IQM),
  :func:`first_crossing` (steps or seconds to a return threshold), :func:`summarize` (one row per env, algo and
  backbone from the runs of a sweep), :func:`pooled_over_envs` (normalised returns pooled over a sweep's envs, with
  stratified bootstrap CIs, as rliable reports a benchmark);
- :func:`markdown_table` and :func:`write_tables` (Markdown and CSV) for any list of row dicts.
"""

from __future__ import annotations

import csv

import numpy as np


def bootstrap_ci(values, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (n >= 2; NaNs for fewer): resample with replacement."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return float("nan"), float("nan")
    means = np.random.default_rng(seed).choice(x, size=(resamples, x.size), replace=True).mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def interquartile_mean(values) -> float:
    """Mean of the middle 50% (rliable's IQM: drop ``int(0.25 n)`` runs at each end); NaN below 4 runs."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    if x.size < 4:
        return float("nan")
    cut = int(0.25 * x.size)
    return float(x[cut:x.size - cut].mean())


def first_crossing(curve: list[dict], threshold: float, key: str = "steps") -> float | None:
    """``curve[i][key]`` of the first evaluation with ``eval_return >= threshold``; None if never reached."""
    for point in curve:
        if point["eval_return"] >= threshold:
            return point[key]
    return None


def summarize(rows: list[dict], thresholds: dict[str, float | None]) -> list[dict]:
    """One row per (env, algo, backbone) from the trials' rows (each with its ``curve``)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["env"], row["algo"], row["backbone"]), []).append(row)
    table = []
    for (env, algo, backbone), runs in groups.items():
        final = [r["curve"][-1]["eval_return"] for r in runs]
        low, high = bootstrap_ci(final)
        entry = dict(env=env, algo=algo, backbone=backbone, seeds=len(runs),
                     final_return=round(float(np.mean(final)), 3),
                     ci95_low=round(low, 3), ci95_high=round(high, 3), iqm=round(interquartile_mean(final), 3),
                     fps=round(float(np.median([r["fps"] for r in runs])), 1), params=runs[0]["params"],
                     mflops=runs[0]["mflops"])
        precisions = sorted({r["precision"] for r in runs if r.get("precision")})
        if precisions:  # what the encoder computed in (rlvision.runs: "auto->bf16" on a CPU with AMX)
            entry["precision"] = "/".join(precisions)
        for key in ("action_kl", "value_rel_diff"):  # the largest acting/learning gap any seed logged
            values = [r[f"max_{key}"] for r in runs if r.get(f"max_{key}") is not None]
            if values:
                entry[f"max_{key}"] = float(f"{max(values):.3g}")
        if all("test_return" in r["curve"][-1] for r in runs):  # held-out levels (Procgen's generalisation test)
            test = [r["curve"][-1]["test_return"] for r in runs]
            low, high = bootstrap_ci(test)
            gap = [r["curve"][-1]["eval_return"] - r["curve"][-1]["test_return"] for r in runs]
            entry.update(test_return=round(float(np.mean(test)), 3), test_ci95_low=round(low, 3),
                         test_ci95_high=round(high, 3), generalization_gap=round(float(np.mean(gap)), 3))
        for key in ("eval_return_normalized", "test_return_normalized"):  # a family's published normalisation
            values = [r["curve"][-1][key] for r in runs if key in r["curve"][-1]]
            if len(values) == len(runs):
                low, high = bootstrap_ci(values)
                name = "final_normalized" if key.startswith("eval") else "test_normalized"
                entry.update({name: round(float(np.mean(values)), 3), f"{name}_ci95": f"{low:.3f}-{high:.3f}"})
        srank = [r["encoder_features_srank"] for r in runs if "encoder_features_srank" in r]
        if srank:
            entry["final_srank"] = round(float(np.mean(srank)), 1)
        threshold = thresholds.get(env)
        if threshold is not None:
            steps = [first_crossing(r["curve"], threshold) for r in runs]
            seconds = [first_crossing(r["curve"], threshold, "seconds") for r in runs]
            reached = [s for s in steps if s is not None]
            entry.update(threshold=threshold, reached=f"{len(reached)}/{len(runs)}",
                         steps_to_threshold=int(np.median(reached)) if reached else None,
                         seconds_to_threshold=round(float(np.median([s for s in seconds if s is not None])), 1)
                         if reached else None)
        table.append(entry)
    return table


def reach_ranking(rows: list[dict], thresholds: dict[str, float | None]) -> list[dict]:
    """The default-encoder rule (issue 31): per (algo, backbone) over every env that has a threshold, the runs that
    reached it (an evaluation after step 0 at or above it: a step-0 score is an untrained policy's luck) and the
    median training seconds to it over those runs, pooled over the envs; the most runs first, ties to the fewer
    median seconds. Per env too: ``<env>: reached, median seconds``."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if thresholds.get(row["env"]) is not None:
            groups.setdefault((row["algo"], row["backbone"]), []).append(row)
    ranking = []
    for (algo, backbone), runs in groups.items():
        seconds, per_env = [], {}
        for run in runs:
            later = [p for p in run["curve"] if p["steps"] > 0]
            crossing = first_crossing(later, thresholds[run["env"]], "seconds")
            per_env.setdefault(run["env"], []).append(crossing)
            if crossing is not None:
                seconds.append(crossing)
        entry = dict(algo=algo, backbone=backbone, reached=len(seconds), runs=len(runs),
                     median_seconds=round(float(np.median(seconds)), 1) if seconds else None)
        for env, crossings in per_env.items():
            hit = [c for c in crossings if c is not None]
            entry[env] = f"{len(hit)}/{len(crossings)}" + (f", {np.median(hit):.0f} s" if hit else "")
        ranking.append(entry)
    return sorted(ranking, key=lambda e: (-e["reached"], e["median_seconds"] if e["median_seconds"] is not None
                                          else float("inf")))


def stratified_bootstrap(per_env: list, statistic, confidence: float = 0.95, resamples: int = 10_000,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` over the runs of several envs pooled, resampling the runs within each
    env (rliable's stratified bootstrap: every resample keeps each env's number of runs). ``per_env`` is one list of
    run values per env; ``statistic`` maps a ``(resamples, runs)`` array to ``(resamples,)``. NaNs when no env has
    2 runs."""
    envs = [np.asarray(v, dtype=np.float64) for v in per_env if len(v)]
    if not envs or max(x.size for x in envs) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    sample = np.concatenate([x[rng.integers(0, x.size, size=(resamples, x.size))] for x in envs], axis=1)
    values = statistic(sample)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def _iqm_rows(sample: np.ndarray) -> np.ndarray:
    """:func:`interquartile_mean` of each row of a ``(resamples, runs)`` array."""
    x = np.sort(sample, axis=1)
    cut = int(0.25 * x.shape[1])
    return x[:, cut:x.shape[1] - cut].mean(axis=1)


def pooled_over_envs(rows: list[dict]) -> list[dict]:
    """One row per (algo, backbone): its normalised train and test returns (the last evaluation's
    ``eval_return_normalized`` / ``test_return_normalized``, e.g. Procgen's (R - R_min) / (R_max - R_min)) pooled over
    every env of the sweep that has them: mean and IQM over all runs, each with a stratified bootstrap 95% CI.
    A backbone that lacks runs on some of those envs gets no aggregate (``missing`` names the envs): pooling over
    other games would not compare. Empty when fewer than 2 envs have normalised returns."""
    def last(run, key):
        return run["curve"][-1].get(key) if run.get("curve") else None

    envs = list(dict.fromkeys(r["env"] for r in rows if last(r, "eval_return_normalized") is not None))
    if len(envs) < 2:
        return []
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for row in rows:
        if row["env"] in envs:
            groups.setdefault((row["algo"], row["backbone"]), {}).setdefault(row["env"], []).append(row)
    table = []
    for (algo, backbone), per_env in groups.items():
        entry = dict(algo=algo, backbone=backbone, envs=f"{len(per_env)}/{len(envs)}",
                     runs=sum(len(v) for v in per_env.values()))
        missing = [e for e in envs if e not in per_env]
        if missing:
            entry["missing"] = ", ".join(missing)
            table.append(entry)
            continue
        for key, name in (("test_return_normalized", "test_normalized"), ("eval_return_normalized",
                                                                          "train_normalized")):
            values = [[last(r, key) for r in per_env[e]] for e in envs]
            if any(v is None for vs in values for v in vs):
                continue
            flat = [v for vs in values for v in vs]
            low, high = stratified_bootstrap(values, lambda s: s.mean(axis=1))
            entry.update({name: round(float(np.mean(flat)), 4), f"{name}_ci95": f"{low:.4f}-{high:.4f}"})
            if len(flat) >= 4:
                low, high = stratified_bootstrap(values, _iqm_rows)
                entry.update({f"{name}_iqm": round(interquartile_mean(flat), 4),
                              f"{name}_iqm_ci95": f"{low:.4f}-{high:.4f}"})
        table.append(entry)
    return sorted(table, key=lambda e: -e.get("test_normalized", float("-inf")))


def markdown_table(table: list[dict]) -> str:
    """A Markdown table of row dicts: the union of their keys as columns, empty cells for missing or NaN values."""
    columns = list(dict.fromkeys(k for row in table for k in row))
    show = lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(show(row.get(c)) for c in columns) + " |" for row in table])


def write_tables(rows: list[dict], markdown_path: str | None = None, csv_path: str | None = None,
                 note: str = "") -> str:
    """Write ``rows`` as Markdown (with ``note`` below it) and/or CSV; returns the Markdown text."""
    text = markdown_table(rows) + (f"\n\n{note}" if note else "")
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(text + "\n")
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
            writer.writeheader()
            writer.writerows(rows)
    return text
