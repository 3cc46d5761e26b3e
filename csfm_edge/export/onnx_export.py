"""``csfm-edge export``: trace CSFM to ONNX, make FP16/INT8 graphs, verify each, write with manifests.

Every artifact is written under a temporary name, verified against the PyTorch reference on real
recordings, and only then renamed into place with its manifest: a graph that misses its tolerance is
never written, and an interrupted export leaves no half-written file.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from csfm_edge import __version__
from csfm_edge.commands import package_versions
from csfm_edge.config import SIZES, CSFMConfig
from csfm_edge.errors import CsfmError, VerificationError
from csfm_edge.export.calibration import RecordingCalibrationReader
from csfm_edge.export.cpu import CPU_PRECISIONS, export_cpu
from csfm_edge.export.precision import to_fp16, to_int8
from csfm_edge.export.spec import DEFAULT_PRECISIONS, PRECISIONS, SPEC, artifact_stem
from csfm_edge.export.verify import run_cases, verification_cases, verify
from csfm_edge.leads import LEAD_NAMES
from csfm_edge.model import CSFM, build, load_checkpoint
from csfm_edge.progress import console_progress
from csfm_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from csfm_edge.runtime.backends.torch_ref import TorchBackend
from csfm_edge.runtime.manifest import write_manifest
from csfm_edge.runtime.preprocess import preprocessing_parameters

PROTOBUF_LIMIT = 2 * 1024**3


@dataclass
class ExportRequest:
    size: str
    out_dir: Path
    checkpoint: Path | None = None
    seed: int | None = 0
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    data_dir: Path | None = None
    calibration_data: Path | None = None
    calibration_method: str = "minmax"
    opset: int = SPEC.opset
    force: bool = False
    progress: Callable[[str], None] = console_progress


class Outputs(torch.nn.Module):
    """Features, plus the head's logits when the model has one: the graph's outputs."""

    def __init__(self, model: CSFM):
        super().__init__()
        self.model = model

    def forward(self, signal: torch.Tensor, channel_ids: torch.Tensor):
        features = self.model(signal, channel_ids)
        return features if self.model.head is None else (features, self.model.head(features))


def _check_request(request: ExportRequest) -> list[Path]:
    """Refuse bad requests before any work: size, precisions, output folder, existing files."""
    if request.size not in SIZES:
        raise CsfmError(f"unknown CSFM size {request.size!r}; choose one of {', '.join(SIZES)}")
    unknown = [p for p in request.precisions if p not in PRECISIONS]
    if unknown or not request.precisions:
        raise CsfmError(f"unknown precision {unknown or '(none)'}; choose from {', '.join(PRECISIONS)}")
    if request.calibration_data is not None and not request.calibration_data.is_dir():
        raise CsfmError(f"calibration data folder {request.calibration_data} does not exist")
    out = request.out_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise CsfmError(f"output folder {out} is not writable ({exc.strerror or exc})") from None
    targets = [out / f"{artifact_stem(request.size, p)}.onnx" for p in request.precisions]
    existing = [t.name for t in targets if t.exists() or t.with_suffix(".json").exists()]
    if existing and not request.force:
        raise CsfmError(f"{', '.join(existing)} already exist in {out}: pass --force to overwrite")
    return targets


def load_model(size: str, checkpoint: Path | None, seed: int | None) -> CSFM:
    """The user's checkpoint (which must be ``size``), or seeded random weights labelled untrained."""
    if checkpoint is not None:
        return load_checkpoint(checkpoint, size)
    return build(size, seed=seed)


def export_fp32(model: CSFM, path: Path, opset: int = SPEC.opset) -> None:
    """Trace to ONNX with symbolic batch/channels/time, fix output dims, check with full shape inference."""
    config: CSFMConfig = model.config
    names = [SPEC.feature_output] + ([SPEC.logits_output] if model.head is not None else [])
    example = (torch.zeros(2, 2, 2500), torch.tensor([1, 12]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(Outputs(model).eval(), example, str(path), dynamo=False, opset_version=opset,
                          input_names=list(SPEC.input_names), output_names=names,
                          dynamic_axes=SPEC.dynamic_axes(config.head_classes), do_constant_folding=True)
    finish_graph(path, config, full_check=True)


def finish_graph(path: Path, config: CSFMConfig, full_check: bool) -> None:
    """Name the output dims, check the size limit, the checker (with full shape inference) and the axes."""
    graph = onnx.load(str(path))
    for output in graph.graph.output:  # the tracer names the static dims after nodes; give them numbers
        dims = output.type.tensor_type.shape.dim
        dims[0].dim_param = "batch"
        dims[1].dim_value = config.dim if output.name == SPEC.feature_output else config.head_classes
    graph.doc_string = f"CSFM {config.name or 'custom'} signal encoder, exported by csfm-edge {__version__}"
    onnx.save(graph, str(path))
    if path.stat().st_size >= PROTOBUF_LIMIT:
        raise CsfmError(f"{path.name} exceeds the 2 GB protobuf limit")
    onnx.checker.check_model(str(path), full_check=full_check)
    check_symbolic_axes(onnx.load(str(path), load_external_data=False))


def check_symbolic_axes(model: onnx.ModelProto) -> None:
    """The saved graph must keep batch, channels and time symbolic, or dynamic shapes silently break."""
    inputs = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    expected = {name: list(dims) for name, (_, dims) in SPEC.inputs().items()}
    if inputs != expected:
        raise CsfmError(f"exported inputs {inputs} are not the symbolic {expected}")


def _weights_record(model: CSFM, checkpoint: Path | None, seed: int | None) -> dict:
    if checkpoint is not None:
        report = model.load_report
        return {"source": "checkpoint", "name": Path(report.path).name, "sha256": report.sha256,
                "keys_loaded": len(report.loaded), "keys_ignored": len(report.ignored)}
    return {"source": "untrained", "seed": seed, "warning": "UNTRAINED random weights: outputs are meaningless"}


def _manifest(request: ExportRequest, model: CSFM, precision: str, how: dict, verification: dict,
              calibration: dict | None) -> dict:
    config = model.config
    spec_inputs = SPEC.inputs()
    return {
        "artifact": "onnx",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"family": "CSFM", "size": request.size, "dim": config.dim, "depth": config.depth,
                  "heads": config.heads, "mlp_dim": config.mlp_dim, "head_classes": config.head_classes},
        "weights": _weights_record(model, request.checkpoint, request.seed),
        "precision": precision,
        "precision_detail": how,
        "opset": request.opset,
        "inputs": {name: {"dtype": dtype, "dims": list(dims),
                          "ranges": {d: vars(SPEC.axes[d]) for d in dims}}
                   for name, (dtype, dims) in spec_inputs.items()},
        "outputs": {name: {"dtype": dtype, "dims": list(dims)}
                    for name, (dtype, dims) in SPEC.outputs(config.dim, config.head_classes).items()},
        "channel_ids": {name: i for i, name in enumerate(LEAD_NAMES)},
        "preprocessing": preprocessing_parameters(),
        "tools": {k: v for k, v in package_versions().items() if v},
        "calibration": calibration,
        "verification": verification,
    }


def export(request: ExportRequest) -> list[Path]:
    """Export every requested precision of one size; return the artifact paths written."""
    targets = _check_request(request)
    say = request.progress
    started = time.perf_counter()
    weights = request.checkpoint or f"UNTRAINED random weights (seed {request.seed})"
    say(f"[export] loading CSFM {request.size} from {weights}")
    model = load_model(request.size, request.checkpoint, request.seed)
    if request.checkpoint is not None:
        say(f"[export] {model.load_report.summary()}")
    cases, data = verification_cases(request.data_dir)
    say(f"[export] verification data: {data}")
    say(f"[export] PyTorch reference on {len(cases)} cases")
    reference = run_cases(TorchBackend(model), cases, "reference", say)
    written: list[Path] = []
    with tempfile.TemporaryDirectory(dir=request.out_dir, prefix=".csfm-export-") as tmp:
        fp32 = Path(tmp) / "traced.onnx"
        say(f"[export] tracing to ONNX (opset {request.opset})")
        export_fp32(model, fp32, request.opset)
        calibration = None
        for precision, target in zip(request.precisions, targets):
            candidate = Path(tmp) / f"{precision}.onnx"
            say(f"[export] making the {precision} graph")
            if precision == "fp32":
                shutil.copyfile(fp32, candidate)
                how = {"tool": "torch.onnx.export (TorchScript tracer)", "note": "float32 throughout"}
            elif precision == "fp16":
                how = to_fp16(fp32, candidate)
            elif precision in CPU_PRECISIONS:
                how = export_cpu(model, precision, candidate, request.opset)
            else:
                reader = RecordingCalibrationReader.from_data_dir(request.calibration_data or request.data_dir)
                say(f"[export] calibrating INT8 ({request.calibration_method}) on {len(reader)} real windows")
                how = to_int8(fp32, candidate, reader, request.calibration_method)
                calibration = reader.describe()
            backend = OnnxRuntimeBackend(candidate, provider="cpu")
            result = verify(reference, backend, cases, precision, data, say)
            backend.close()
            if not result.passed:
                raise VerificationError(
                    f"{target.name} misses its tolerance ({result.tolerance.describe()}), not written: "
                    + "; ".join(result.failures()[:4]))
            worst = result.worst()
            say(f"[export] {precision} verified: max abs {worst['max_abs']:.2e}, "
                f"min mean cosine {worst['min_mean_cosine']:.6f} ({result.tolerance.describe()})")
            os.replace(candidate, target)
            write_manifest(target, _manifest(request, model, precision, how, result.to_dict(),
                                             calibration if precision == "int8" else None))
            written.append(target)
    say(f"[export] done in {time.perf_counter() - started:.0f} s: " + ", ".join(p.name for p in written))
    return written
