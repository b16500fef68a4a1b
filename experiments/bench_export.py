"""Export every small backbone's PPO policy (4x84x84 Atari frames) to ONNX, TorchScript and ExecuTorch and time each
way of running it (BENCHMARKS.md "Export and onnxruntime rollouts"; issue 22's targets).

    python experiments/bench_export.py                      # every small backbone, ~10 minutes on 2 cores
    python experiments/bench_export.py --backbones nature_cnn,mobilenetv4_nano_rl --rounds 20

Per backbone (an untrained PPO policy on ALE/Pong-v5's 4x84x84 frames, seed 0):
1. Export to ONNX (with the distribution's logits), TorchScript and ExecuTorch (XNNPACK, batch 1 and 8: a .pte has
   a fixed batch); the check on 256 observations: action agreement and the max difference of the (normalised)
   logits against SB3; the file sizes.
2. Latency of one deterministic action, batch 1 and batch 8, with 1 and 2 threads, medians of alternated calls:
   SB3's predict on the plain policy (no inference copy), SB3's predict through rlvision's inference copy, and the
   exported file on onnxruntime (``OnnxPolicy.predict``) and on ExecuTorch's runtime (``ExecuTorchPolicy.predict``
   on the .pte of that batch; its XNNPACK thread pool set to the thread count). Without executorch installed its
   columns say n/a.
Prints markdown tables and writes them to ``<out>/export.md``.
"""

import argparse
import os
import statistics
import time

import numpy as np
import torch

import rlvision
from rlvision.agents import make_agent
from rlvision.envs import make_env
from rlvision.export import ExecuTorchPolicy, ExportMismatchError, OnnxPolicy, export_policy
from rlvision.stats import markdown_table

SMALL = ("nature_cnn,impala_cnn,mobilenetv4_nano_rl,mobilenetv4_small_rl,mnv4_conv_small,rest_rl,cyclemlp_rl,"
         "conformer_rl")


def logits_diff(model, onnx_path: str, n: int = 256) -> float:
    """Max |difference| of the log-softmax of the ONNX file's logits and SB3's distribution logits."""
    import onnxruntime as ort

    obs = np.stack([model.observation_space.sample() for _ in range(n)])
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = torch.log_softmax(torch.as_tensor(session.run(["logits"], {"obs": obs})[0]), dim=1)
    with torch.no_grad():
        want = model.policy.get_distribution(model.policy.obs_to_tensor(obs)[0]).distribution.logits
    return float((got - want).abs().max())


def alternate(fns: dict, rounds: int) -> dict:
    times = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default=SMALL, help="comma-separated (default: every small backbone)")
    parser.add_argument("--rounds", type=int, default=30, help="alternated calls per latency figure (default 30)")
    parser.add_argument("--out", default="runs/bench-export", help="folder for the files and export.md")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    env = make_env("ALE/Pong-v5", n_envs=1, seed=0)
    try:
        import executorch.extension.pybindings.portable_lib as executorch
    except ImportError:
        executorch = None
        print("executorch is not installed (pip install 'rlvision[executorch]'): its columns say n/a")
    files, latency = [], []
    for name in args.backbones.split(","):
        model = make_agent("ppo", env, backbone=name, seed=0, device="cpu")
        onnx_path, ts_path = (os.path.join(args.out, f"{name}.{ext}") for ext in ("onnx", "pt"))
        start = time.perf_counter()
        report = export_policy(model, onnx_path, logits=True, n_check=256, log=lambda *_: None)
        seconds = time.perf_counter() - start
        ts = export_policy(model, ts_path, format="torchscript", n_check=256, log=lambda *_: None)
        pte, et_failed = {}, None
        if executorch:
            for batch in (1, 8):
                try:
                    path = os.path.join(args.out, f"{name}-b{batch}.pte")
                    et = export_policy(model, path, format="executorch", batch=batch, n_check=256,
                                       log=lambda *_: None)
                    pte[batch] = path
                except ExportMismatchError as error:  # the exporter refused the file: say so in the table
                    et_failed = str(error).split("actions equal: ")[1].split(".")[0] + "% (refused)"
                    print(f"{name}: ExecuTorch {error}", flush=True)
                    pte = {}
                    break
        files.append(dict(backbone=name, action_agreement=f"{report.action_agreement:.1%}",
                          max_logit_diff=f"{logits_diff(model, onnx_path):.1e}",
                          onnx_kb=os.path.getsize(onnx_path) // 1024, torchscript_kb=os.path.getsize(ts_path) // 1024,
                          torchscript_agreement=f"{ts.action_agreement:.1%}",
                          executorch_kb=os.path.getsize(pte[1]) // 1024 if pte else "n/a",
                          executorch_agreement=f"{et.action_agreement:.1%}" if pte else et_failed or "n/a",
                          onnx_export_s=round(seconds, 1)))
        print(files[-1], flush=True)
        extractor = model.policy.features_extractor
        for threads in (1, 2):
            torch.set_num_threads(threads)
            onnx = OnnxPolicy(onnx_path, threads=threads)
            if executorch:
                executorch._unsafe_reset_threadpool(threads)
            for batch in (1, 8):
                obs = np.stack([model.observation_space.sample() for _ in range(batch)])

                def sb3(active, extractor=extractor, model=model, obs=obs):
                    def run():
                        extractor.inference_copy_active = active
                        model.predict(obs, deterministic=True)
                    return run
                fns = {"plain": sb3(False), "copy": sb3(True), "ort": lambda onnx=onnx, obs=obs: onnx.predict(obs)}
                if pte:
                    fns["et"] = (lambda policy, obs=obs: lambda obs=obs: policy.predict(obs))(
                        ExecuTorchPolicy(pte[batch]))
                times = alternate(fns, args.rounds)
                fastest = min(times, key=times.get)
                latency.append(dict(backbone=name, threads=threads, batch=batch,
                                    sb3_predict_ms=round(times["plain"], 3),
                                    inference_copy_ms=round(times["copy"], 3),
                                    onnxruntime_ms=round(times["ort"], 3),
                                    executorch_ms=round(times["et"], 3) if "et" in times else "n/a",
                                    fastest={"plain": "SB3 plain", "copy": "inference copy", "ort": "onnxruntime",
                                             "et": "ExecuTorch"}[fastest]))
                print(latency[-1], flush=True)
        torch.set_num_threads(2)
    text = "\n\n".join(markdown_table(rows) for rows in (files, latency))
    with open(os.path.join(args.out, "export.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    print(f"rlvision {rlvision.__version__ if hasattr(rlvision, '__version__') else ''}; files in {args.out}")


if __name__ == "__main__":
    main()
