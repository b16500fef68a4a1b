"""A sweep's figures: learning curves with bootstrap bands against env steps and training seconds (held-out levels
dashed, where a run evaluated on them), and the encoder diagnostics of the same trials."""

from __future__ import annotations

import numpy as np

from rlvision.stats import bootstrap_ci


def band(curves: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% bootstrap band over seeds of curves (x, y) interpolated onto ``grid``."""
    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    lows, highs = zip(*(bootstrap_ci(ys[:, i], resamples=2000) for i in range(grid.size)), strict=False)
    mean = ys.mean(axis=0)
    return mean, np.where(np.isnan(lows), mean, lows), np.where(np.isnan(highs), mean, highs)


def plot_curves(rows: list[dict], path: str) -> None:
    """One line of panels per (env, algo): return against env steps and against training seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["env"], r["algo"]) for r in rows})
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.6 * len(panels)), squeeze=False)
    for (env, algo), (ax_steps, ax_time) in zip(panels, axes, strict=False):
        runs = [r for r in rows if (r["env"], r["algo"]) == (env, algo)]
        for backbone in dict.fromkeys(r["backbone"] for r in runs):
            curves = [r["curve"] for r in runs if r["backbone"] == backbone]
            steps = [(np.array([p["steps"] for p in c], float), np.array([p["eval_return"] for p in c]))
                     for c in curves]
            secs = [(np.array([p["seconds"] for p in c], float), np.array([p["eval_return"] for p in c]))
                    for c in curves]
            test = all("test_return" in p for c in curves for p in c)  # held-out levels: dashed, same colour
            for ax, xy, x_key, last in ((ax_steps, steps, "steps", min(x[-1] for x, _ in steps)),
                                        (ax_time, secs, "seconds", min(x[-1] for x, _ in secs))):
                grid = np.linspace(0, last, 50)
                mean, low, high = band(xy, grid)
                line, = ax.plot(grid, mean, label=f"{backbone} (n={len(curves)})" + (", train levels" if test else ""))
                ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2)
                if test:
                    xy_test = [(np.array([p[x_key] for p in c], float), np.array([p["test_return"] for p in c]))
                               for c in curves]
                    mean, low, high = band(xy_test, grid)
                    ax.plot(grid, mean, "--", color=line.get_color(), label=f"{backbone}, test levels")
                    ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.1)
        ax_steps.set(title=f"{algo.upper()} on {env}", xlabel="env steps", ylabel="eval return")
        ax_time.set(title=f"{algo.upper()} on {env}: per unit of compute", xlabel="training seconds")
        ax_steps.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


DIAGNOSTICS = (("value_rel_diff", "acting/learning gap: value (relative RMS)", "log"),
               ("action_kl", "acting/learning gap: action KL", "log"),
               ("features_srank", "feature effective rank (srank, delta 0.01)", "linear"),
               ("features_dormant", "dormant features (tau 0.025)", "linear"),
               ("grad_share", "encoder's share of the gradient norm", "linear"))


def plot_diagnostics(rows: list[dict], path: str) -> None:
    """The encoder diagnostics of the same trials (rlvision.diagnostics), mean over seeds against env steps: one
    line of panels per (env, algo), one panel per diagnostic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["env"], r["algo"]) for r in rows if r.get("diagnostics")})
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), len(DIAGNOSTICS), figsize=(4 * len(DIAGNOSTICS), 3.4 * len(panels)),
                             squeeze=False)
    for (env, algo), line in zip(panels, axes, strict=False):
        runs = [r for r in rows if (r["env"], r["algo"]) == (env, algo) and r.get("diagnostics")]
        for backbone in dict.fromkeys(r["backbone"] for r in runs):
            histories = [r["diagnostics"] for r in runs if r["backbone"] == backbone]
            for ax, (key, title, scale) in zip(line, DIAGNOSTICS, strict=False):
                curves = [(np.array([h["steps"] for h in hist if key in h], float),
                           np.array([h[key] for h in hist if key in h], float)) for hist in histories]
                curves = [(x, y) for x, y in curves if x.size]
                if not curves:
                    continue
                grid = np.linspace(max(x[0] for x, _ in curves), min(x[-1] for x, _ in curves), 30)
                mean = np.mean([np.interp(grid, x, y) for x, y in curves], axis=0)
                ax.plot(grid, np.maximum(mean, 1e-9) if scale == "log" else mean, label=backbone)
                ax.set(title=f"{env}: {title}" if ax is line[0] else title, xlabel="env steps", yscale=scale)
        line[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
