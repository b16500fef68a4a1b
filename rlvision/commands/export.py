"""Export a trained policy (rlvision.export): ONNX / TorchScript / ExecuTorch, checked against SB3.

    rlvision export runs/train/ppo_.../model.zip --format onnx --out policy.onnx
    rlvision export model.zip --format onnx --out policy.onnx --with-value --obs-from SyntheticPixel-v0
    rlvision export policy.onnx --check-only --zip model.zip                            (re-verify a written file)

The model zip opens without unpickling (rlvision.model_files; --trust-file for one that needs it). See
rlvision.export for what the file holds and how it is checked.
"""

from __future__ import annotations

import os

from rlvision.export import (EXTENSIONS, FORMATS, SUPPORTED, ExportMismatchError, export_policy, verify)


def main(argv: list[str] | None = None) -> None:
    from rlvision.commands import command_parser
    from rlvision.model_files import UntrustedModelError, read_zip
    from rlvision.model_files import load as load_model

    parser = command_parser("export", __doc__)
    parser.add_argument("model", help="an SB3 model zip (or, with --check-only, the exported file)")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="file format (default onnx)")
    parser.add_argument("--out", help="the file to write (default: the zip's name with .onnx / .pt / .pte)")
    parser.add_argument("--algo", help="the algorithm, when the zip's name does not say (ppo, sac, dqn, ...; "
                                       "default: told from the file)")
    parser.add_argument("--batch", type=int, help="fix the batch size (default: dynamic)")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--with-value", action="store_true", help="also output the critic's value (actor-critic)")
    parser.add_argument("--logits", action="store_true", help="also output the action distribution's parameters")
    parser.add_argument("--n-check", type=int, default=32, help="observations for the check (default 32)")
    parser.add_argument("--obs-from", metavar="ENV_ID",
                        help="check on frames of this env (default: random observations of the model's space)")
    parser.add_argument("--check-only", action="store_true",
                        help="re-verify an existing exported file (MODEL is the file; --zip gives the model zip)")
    parser.add_argument("--zip", dest="zip_path", help="with --check-only: the SB3 model zip to compare with (default: "
                                                               "none)")
    parser.add_argument("--trust-file", action="store_true",
                        help="open a model zip whose entries need unpickling (runs code from the file; only for files "
                             "you trust; zips rlvision saved never need it)")
    args = parser.parse_args(argv)
    zip_path = args.zip_path if args.check_only else args.model
    if not zip_path or not os.path.isfile(zip_path):
        parser.error(f"{zip_path!r}: no such model zip" + (" (--check-only needs --zip MODEL.zip)"
                                                            if args.check_only else ""))
    try:
        read_zip(zip_path)  # not a zip, or not SB3's: no --algo can fix that
    except ValueError as error:
        parser.error(str(error))
    algo = args.algo or _guess_algo(zip_path)
    if algo is None:
        parser.error(f"cannot tell the algorithm of {zip_path}; pass --algo ({', '.join(SUPPORTED)}).")
    try:  # nothing in the file is unpickled (rlvision.model_files) unless --trust-file
        model = load_model(zip_path, device="cpu", algo=algo, trust=args.trust_file)
    except UntrustedModelError as error:
        parser.error(str(error).replace("trust=True) (the command line: --trust-file)", "trust=True): pass "
                                        "--trust-file"))
    except Exception as error:  # noqa: BLE001  (whatever SB3's loader raises on a file of another algorithm)
        parser.error(f"{zip_path}: cannot load it as {algo} ({error}); pass the right --algo.")
    try:
        if args.check_only:
            # the value too when the file has one (--with-value insists on it)
            print(verify(model, args.model, None, args.n_check, args.obs_from, args.with_value or None,
                         logits=args.logits))
            return
        out = args.out or os.path.splitext(zip_path)[0] + EXTENSIONS[args.format]
        export_policy(model, out, args.format, args.batch, args.opset, args.with_value, args.logits,
                      n_check=args.n_check, obs_from=args.obs_from)
    except (ValueError, ImportError, ExportMismatchError) as error:
        parser.exit(2, f"rlvision export: error: {error}\n")


def _guess_algo(path: str) -> str | None:
    """The algorithm from the file name (``ppo_pong.zip``), or the zip's manifest or policy class
    (:func:`rlvision.model_files.algorithm_of`)."""
    from rlvision.algorithms import ALGORITHMS
    from rlvision.model_files import algorithm_of

    name = os.path.basename(path).lower()
    for algo in sorted(ALGORITHMS, key=len, reverse=True):
        if name.startswith(algo + "_") or name.startswith(algo + "-") or name == algo + ".zip":
            return algo
    return algorithm_of(path)


if __name__ == "__main__":
    main()
