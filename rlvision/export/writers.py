"""The exported file written (ONNX, TorchScript, ExecuTorch) under a temporary name, checked, then renamed."""

from __future__ import annotations

import os

import torch

from ..quiet import quiet_exporter
from .graph import _PolicyGraph, _sample_inputs
from .verification import FORMATS, ExportMismatchError, ExportReport, verify


def export_policy(model, path: str, format: str = "onnx", batch: int | None = None, opset: int | None = None,
                  with_value: bool = False, logits: bool = False, check: bool = True, n_check: int = 32,
                  obs_from: str | None = None, log=print) -> ExportReport | None:
    """Write ``model``'s deterministic policy to ``path`` (see the module doc); with ``check`` (default) run the
    file and compare with SB3 (:func:`verify`). The file is written under a temporary name and renamed when it has
    passed the check; on a mismatch nothing is left at ``path``."""
    if format not in FORMATS:
        raise ValueError(f"format {format!r}: choose one of {', '.join(FORMATS)}.")
    if format == "executorch" and batch is None:
        batch = 1  # a fixed batch (module doc); the policy classes run larger batches in chunks
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive int (or None for a dynamic batch), got {batch!r}.")
    graph = _PolicyGraph(model, with_value, logits).eval()
    example = [torch.as_tensor(x) for x in _sample_inputs(model, batch or 2, None)]
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise ValueError(f"Cannot write {path}: cannot create its folder ({error}); choose another --out.") from error
    if not os.access(folder, os.W_OK):
        raise ValueError(f"Cannot write {path}: its folder {folder} is not writable; choose another --out.")
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}{os.path.splitext(path)[1]}")
    # ExecuTorch: XNNPACK first; if its kernels do not reproduce the policy (they approximate some operators: ResT's
    # actions differed), the portable kernels (exact, slower)
    backends = ("xnnpack", "portable") if format == "executorch" else (None,)
    try:
        for attempt, backend in enumerate(backends):
            with torch.no_grad():
                if format == "onnx":
                    _onnx_export(graph, example, tmp, batch, opset)
                elif format == "executorch":
                    _executorch_export(graph, example, tmp, batch, backend)
                else:
                    import json

                    torch.jit.save(torch.jit.trace(graph, tuple(example), check_trace=False), tmp,  # names inside
                                   _extra_files={"outputs.json": json.dumps(graph.output_names())})
            report = None
            if check:
                try:
                    report = verify(model, tmp, format, n_check, obs_from, with_value, logits=logits)
                except ExportMismatchError as error:
                    if attempt + 1 == len(backends):
                        raise
                    log(f"{error}\nExecuTorch: XNNPACK's kernels do not reproduce this policy; lowering it to "
                        f"ExecuTorch's portable kernels instead (exact, slower).")
                    continue
                report.path = path
                log(str(report) + (f" [ExecuTorch {backend} kernels]" if backend else ""))
            break
        if format == "executorch":  # the names file first: a .pte is never left without it
            os.replace(tmp + ".json", path + ".json")
        os.replace(tmp, path)
        return report
    finally:
        for leftover in (tmp, tmp + ".data", tmp + ".json"):
            if os.path.exists(leftover):
                os.remove(leftover)


def _onnx_export(graph: _PolicyGraph, example: list[torch.Tensor], path: str, batch: int | None,
                 opset: int | None) -> None:
    try:
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError as error:
        raise ImportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'rlvision[export]'.") \
            from error
    dynamic = None
    if batch is None:
        dim = torch.export.Dim("batch", min=1, max=1 << 16)
        dynamic = (tuple({axis: dim} for axis in graph.batch_axes()),)  # forward(*inputs): the tuple of inputs
    kwargs = dict(dynamo=True, input_names=graph.input_names(), output_names=graph.output_names(),
                  dynamic_shapes=dynamic, external_data=False, verbose=False)
    if opset is not None:
        kwargs["opset_version"] = opset
    with quiet_exporter():
        torch.onnx.export(graph, tuple(example), path, **kwargs)


def _executorch_export(graph: _PolicyGraph, example: list[torch.Tensor], path: str, batch: int,
                       backend: str = "xnnpack") -> None:
    """``graph`` lowered for batches of ``batch`` to ExecuTorch's XNNPACK backend (``backend="xnnpack"``) or left
    on its portable kernels (``"portable"``), written to ``path``; its input and output names, the batch and the
    backend to ``path + ".json"``."""
    import json

    with quiet_exporter():
        try:
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import to_edge_transform_and_lower
        except ImportError as error:
            raise ImportError("ExecuTorch export needs executorch: pip install 'rlvision[executorch]' (or use "
                              "format='onnx').") from error
        for tensor in [*graph.parameters(), *graph.buffers()]:  # XNNPACK's passes take contiguous (NCHW) weights
            tensor.data = tensor.data.contiguous()
        program = torch.export.export(graph, tuple(example))
        partitioner = [XnnpackPartitioner()] if backend == "xnnpack" else []
        lowered = to_edge_transform_and_lower(program, partitioner=partitioner).to_executorch()
    with open(path, "wb") as f:
        f.write(lowered.buffer)
    with open(path + ".json", "w") as f:
        json.dump(dict(inputs=graph.input_names(), outputs=graph.output_names(), batch=batch, backend=backend), f)
