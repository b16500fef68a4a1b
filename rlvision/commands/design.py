"""Design MobileNet-v4 presets on this device: measure candidates' cost in the RL loop and their learning on a proxy.

    rlvision design --out runs/design-cpu
    rlvision design --device cuda --out runs/design-gpu        # a GPU preset, on a GPU machine

1. Candidates: the block strings of :func:`rlvision.design.design_space` (``--blocks`` for your own, separated by
   spaces), as ``mobilenetv4_blocks[blocks=...]`` with ``--norm``, next to the ``--references``.
2. Cost (:mod:`rlvision.loop_cost`): per candidate and frame side, milliseconds of compute per 1,024 PPO env steps
   (128 rollout forwards at batch 8, 16 update steps at batch 256) on ``--device``, all timed in alternation in one
   process, as a ratio to the first reference; aten calls per update step.
3. Quality: ``rlvision sweep`` of every candidate and reference on the proxy task (``--proxy-config``, default the
   synthetic 6x6 board at 6,000 steps, 3 seeds): the mean return over the learning curve and the final return.
4. ``OUT/design.md`` (the table, the Pareto front marked) and ``OUT/pareto-<side>.png`` (cost at each side against
   the proxy's curve area). Rerun with the same ``--out`` to resume the proxy sweep.
"""

from __future__ import annotations

import json
import os

import torch

from rlvision.commands import command_parser
from rlvision.design import candidate, design_space, pareto_front, plot_front, proxy_quality
from rlvision.stats import markdown_table

DEFAULT_PROXY = dict(envs={"SyntheticPixel-v0": dict(steps=6000, eval_every=1500, env_kwargs=dict(size=48, grid=6),
                                                     threshold=0.5,
                                                     hyperparams=dict(n_steps=64, batch_size=128, n_epochs=4,
                                                                      learning_rate=0.0005, clip_range=0.2))},
                     seeds=[0, 1, 2], algos=["ppo"], cpus=1, eval_episodes=16)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = command_parser("design", __doc__)
    parser.add_argument("--blocks", default=None,
                        help="candidate block strings separated by spaces (default: rlvision.design.design_space())")
    parser.add_argument("--norm", default="running_bn", help="the candidates' norm (default running_bn)")
    parser.add_argument("--references", default="nature_cnn,mobilenetv4_nano_rl",
                        help="encoders measured alongside; costs are ratios to the first "
                             "(default nature_cnn,mobilenetv4_nano_rl)")
    parser.add_argument("--sides", default="56,84", help="frame sides for the cost (default 56,84)")
    parser.add_argument("--channels", type=int, default=3, help="frame channels for the cost (default 3)")
    parser.add_argument("--device", default="cpu", help="where the cost is measured: cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the cost (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (default 5)")
    parser.add_argument("--proxy-config", default=None,
                        help="a sweep YAML for the proxy (default: the synthetic 6x6 board, 6,000 steps, 3 seeds)")
    parser.add_argument("--skip-proxy", action="store_true", help="cost only (default: cost and proxy)")
    parser.add_argument("--out", default="runs/design", help="output folder (default runs/design)")
    args = parser.parse_args(argv)
    blocks = args.blocks.split() if args.blocks else design_space()
    from rlvision.backbones.mobilenetv4 import parse_blocks

    for text in blocks:
        parse_blocks(text)  # a malformed string fails here, before anything is measured
    references = [r for r in args.references.split(",") if r]
    entries = references + [candidate(b, norm=args.norm) for b in blocks]
    sides = [int(s) for s in args.sides.split(",")]
    os.makedirs(args.out, exist_ok=True)

    from rlvision.loop_cost import fit_overhead, measure

    torch.set_num_threads(args.threads)
    costs = measure(entries, sides, channels=args.channels, device=args.device, rounds=args.rounds,
                    progress=lambda line: print(line, flush=True))
    per_call_us, gflops = fit_overhead(costs)
    quality = {}
    if not args.skip_proxy:
        quality = run_proxy(entries, args.proxy_config, os.path.join(args.out, "proxy"))
    rows = []
    for entry in entries:
        row = dict(name=entry.replace("mobilenetv4_blocks[blocks=", "").rstrip("]"), backbone=entry,
                   reference=entry in references)
        for cost in (c for c in costs if c.backbone == entry):
            row[f"cost_{cost.side}"] = round(cost.per_1024_vs_first, 3)
            row[f"ms_per_1024_{cost.side}"] = round(cost.per_1024_ms, 1)
            row[f"update_calls_{cost.side}"] = cost.update_calls
        if entry in quality:
            row.update(proxy_area=round(quality[entry]["area"], 3), proxy_final=round(quality[entry]["final"], 3),
                       seeds=quality[entry]["seeds"])
        rows.append(row)
    text = (f"Candidates on {args.device} ({args.threads} thread(s)); cost = compute per 1,024 PPO env steps as a "
            f"ratio to {references[0]}; fit: {per_call_us:.1f} us per aten call, {gflops:.1f} GFLOP/s.\n\n")
    if quality:
        for side in sides:
            key = f"cost_{side}"
            front = pareto_front([r for r in rows if "proxy_area" in r], key, "proxy_area")
            for r in front:
                r[f"front_{side}"] = "yes"
            plot_front([r for r in rows if "proxy_area" in r], os.path.join(args.out, f"pareto-{side}.png"), key,
                       "proxy_area", f"{side} px: cost against the learning proxy")
    text += markdown_table(rows) + "\n"
    with open(os.path.join(args.out, "design.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "design.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("\n" + text)
    return rows


def run_proxy(entries: list[str], config: str | None, out: str) -> dict[str, dict]:
    """The proxy sweep of every entry through ``rlvision sweep``'s entry point; its quality per entry."""
    import yaml

    from rlvision.commands import sweep

    if config is None:
        os.makedirs(out, exist_ok=True)
        config = os.path.join(out, "proxy.yaml")
        with open(config, "w") as f:
            yaml.safe_dump(DEFAULT_PROXY, f)
    sweep.main(["--config", config, "--backbones", ",".join(entries), "--out", out])
    return proxy_quality(out)


if __name__ == "__main__":
    main()
