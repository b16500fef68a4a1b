"""An exported file run on sample observations and compared with the SB3 model it came from."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .graph import _PolicyGraph, _reference, _sample_inputs
from .runtimes import ExecuTorchPolicy, OnnxPolicy

FORMATS = ("onnx", "torchscript", "executorch")
EXTENSIONS = {"onnx": ".onnx", "torchscript": ".pt", "executorch": ".pte"}


class ExportMismatchError(RuntimeError):
    """The exported file's outputs differ from the SB3 model's."""


ExportMismatch = ExportMismatchError  # the name before issue 33 (ruff N818), kept for old imports


def _run_file(path: str, fmt: str, inputs: list[np.ndarray], graph: _PolicyGraph) -> dict[str, np.ndarray]:
    """The file's outputs by name (a TorchScript file's are positional: ``graph`` names them)."""
    if fmt == "onnx":
        session = OnnxPolicy._session(path)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, dict(zip(graph.input_names(), inputs, strict=False))), strict=False))
    if fmt == "torchscript":
        module = torch.jit.load(path, map_location="cpu")
        with torch.no_grad():
            outputs = module(*[torch.as_tensor(x) for x in inputs])
        return {name: t.numpy() for name, t in zip(graph.output_names(), outputs, strict=False)}
    if fmt == "executorch":
        session = ExecuTorchPolicy._session(path)
        feeds = dict(zip(graph.input_names(), inputs, strict=True))
        return dict(zip(session.output_names, session.run(None, feeds), strict=True))
    raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}.")


@dataclass
class ExportReport:
    """What the check found: max absolute difference per output, fraction of equal actions, observations used."""

    path: str
    format: str
    n: int
    max_diff: dict[str, float]
    action_agreement: float

    def __str__(self) -> str:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in self.max_diff.items())
        return (f"{self.path} ({self.format}): on {self.n} observations, max |difference| vs SB3: {diffs}; "
                f"actions equal: {self.action_agreement:.1%}")


def file_output_names(path: str, fmt: str) -> list[str] | None:
    """The output names an exported file declares (ONNX: its graph; ExecuTorch: its names file; TorchScript: the
    names rlvision stores inside it), or None (a TorchScript file written before that)."""
    import json

    if fmt == "onnx":
        return [o.name for o in OnnxPolicy._session(path).get_outputs()]
    if fmt == "executorch":
        with open(path + ".json") as f:
            return list(json.load(f)["outputs"])
    extra = {"outputs.json": ""}
    torch.jit.load(path, map_location="cpu", _extra_files=extra)
    return json.loads(extra["outputs.json"]) if extra["outputs.json"] else None


def verify(model, path: str, format: str | None = None, n_check: int = 32, obs_from: str | None = None,
           with_value: bool | None = None, atol: float = 1e-4, logits: bool = False) -> ExportReport:
    """Run the exported file on ``n_check`` observations and compare with the SB3 model (see the module doc).
    ``with_value``: also compare the critic's value; None (default): when the file has a value output.
    Raises :class:`ExportMismatchError` with the numbers when an action differs (continuous actions: by more than
    ``atol``) or the value by more than ``atol`` (relative to its scale)."""
    fmt = format or _format_of(path)
    if with_value is None:
        names = file_output_names(path, fmt)
        with_value = bool(names) and "value" in names
    graph = _PolicyGraph(model, with_value, logits)
    inputs = _sample_inputs(model, n_check, obs_from)
    outputs = _run_file(path, fmt, inputs, graph)
    want = _reference(model, inputs, graph)
    diffs, agreement = {}, 1.0
    names = [n for n in graph.output_names() if n not in ("mean", "log_std", "mu", "logits")]
    missing = [n for n in names if n not in outputs]
    if missing:
        raise ExportMismatchError(f"{path} has no output {missing} (it has {sorted(outputs)}): it was exported with "
                                  f"other options (--with-value, or another model); export it again.")
    for name, w in zip(names, want, strict=False):
        g = outputs[name]
        g, w = np.asarray(g).reshape(np.shape(w)), np.asarray(w)
        diffs[name] = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))) if w.size else 0.0
        if name == "action":
            close = np.isclose(g, w, atol=atol, rtol=0) if np.issubdtype(w.dtype, np.floating) else g == w
            agreement = float(np.mean(close.reshape(len(w), -1).all(axis=1)))
    report = ExportReport(path, fmt, n_check, diffs, agreement)
    scale = max(1.0, float(np.max(np.abs(want[1])))) if with_value else 1.0
    states_off = graph.recurrent and max(diffs["state_h_out"], diffs["state_c_out"]) > atol
    if agreement < 1.0 or (with_value and diffs["value"] > atol * scale) or states_off:
        raise ExportMismatchError(f"{report}. The exported graph does not act as the SB3 model; please report it "
                                  f"with the model's algorithm, backbone and spaces.")
    return report


def _format_of(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    formats = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".pte": "executorch"}
    if ext not in formats:
        raise ValueError(f"Cannot tell the format of {path!r} from its extension (.onnx, .pt, .pte); pass format= "
                         f"({', '.join(FORMATS)}).")
    return formats[ext]
