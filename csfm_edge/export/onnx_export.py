"""``csfm-edge export``: trace CSFM to ONNX, make FP16/INT8 graphs, verify each, write with manifests.

Every artifact is written under a temporary name, verified against the PyTorch reference on real
recordings, and only then renamed into place with its manifest: a graph that misses its tolerance is
never written, and an interrupted export leaves no half-written file.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from csfm_edge.config import size_config
from csfm_edge.environment import installed_versions
from csfm_edge.errors import CsfmError, VerificationError
from csfm_edge.export.calibration import RecordingCalibrationReader
from csfm_edge.export.cpu import export_cpu
from csfm_edge.export.embed import embed_manifest
from csfm_edge.export.graph import export_fp32
from csfm_edge.export.precision import DEFAULT_KEEP_FLOAT, keep_float_patterns, to_fp16, to_int8
from csfm_edge.export.verify import run_cases, verification_cases, verify
from csfm_edge.fileio import check_output_folder, staging_folder
from csfm_edge.leads import LEAD_NAMES
from csfm_edge.model import CSFM, build, load_checkpoint
from csfm_edge.progress import console_progress
from csfm_edge.recordings.datasets import default_data_dir
from csfm_edge.runtime.backends import BackendOptions, open_backend, reference_backend
from csfm_edge.runtime.manifest import (
    CalibrationRecord,
    Manifest,
    ModelInfo,
    PrecisionDetail,
    VerificationRecord,
    WeightsInfo,
    checkpoint_weights,
    custom_name,
    model_inputs,
    model_outputs,
    now,
    preprocessing_record,
    untrained_weights,
    write_manifest,
)
from csfm_edge.runtime.preprocess import DEFAULT_PPG_ORDER, check_positive
from csfm_edge.runtime.trust import SigningKey, sign_artifacts, signing_config
from csfm_edge.spec import DEFAULT_PRECISIONS, PRECISIONS, SPEC, artifact_stem, precision_record


@dataclass
class ExportRequest:
    size: str | None  # None: the architecture the checkpoint holds (named after its size, or custom-dDIMxDEPTH)
    out_dir: Path
    checkpoint: Path | None = None
    seed: int | None = 0
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    data_dir: Path | None = None
    calibration_data: Path | None = None
    calibration_method: str = "minmax"
    calibration_windows: int = 256
    int8_keep_float: tuple[str, ...] = DEFAULT_KEEP_FLOAT  # MatMuls left in float (see precision.float_matmuls)
    allow_small_calibration: bool = False
    opset: int = SPEC.opset
    exporter: str = "dynamo"  # or "tracer" (TorchScript, deprecated by PyTorch)
    force: bool = False
    progress: Callable[[str], None] = console_progress
    sign_key: Path | None = None  # sign every artifact written with this EC private key (csfm-edge sign)


def _check_request(request: ExportRequest, name: str) -> list[Path]:
    """Refuse bad requests before any work: precisions, output folder, existing files."""
    unknown = [p for p in request.precisions if p not in PRECISIONS]
    if unknown or not request.precisions:
        raise CsfmError(f"unknown precision {unknown or '(none)'}; choose from {', '.join(PRECISIONS)}")
    if request.calibration_data is not None and request.calibration_data.is_file():
        raise CsfmError(f"--calibration-data {request.calibration_data} is a file: name the folder of recordings")
    if request.calibration_data is not None and not request.calibration_data.is_dir():
        raise CsfmError(f"calibration data folder {request.calibration_data} does not exist")
    if "int8" in request.precisions:  # the calibrated precision
        check_positive("--calibration-windows", request.calibration_windows, integer=True)
    out = check_output_folder(request.out_dir)  # a file named as the folder, or a folder not writable
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CsfmError(f"output folder {out} cannot be made ({exc.strerror or exc})") from None
    targets = [out / f"{artifact_stem(name, p)}.onnx" for p in request.precisions]
    existing = [t.name for t in targets if t.exists() or t.with_suffix(".json").exists()]
    if existing and not request.force:
        raise CsfmError(f"{', '.join(existing)} {'already exists' if len(existing) == 1 else 'already exist'} in "
                        f"{out}: pass --force to overwrite")
    return targets


STAGING_PREFIX = ".csfm-export-"  # + the exporting process id: a hidden folder beside the artifacts


def remove_stale_exports(folder: Path) -> list[Path]:
    """Remove staging folders that exports killed hard (out of memory, SIGKILL) left behind: those whose
    process no longer runs. A live export's folder is left alone, so two exports may share an output folder."""
    removed = []
    for staging in folder.glob(f"{STAGING_PREFIX}*"):
        pid = staging.name[len(STAGING_PREFIX):].split("-")[0]
        if staging.is_dir() and (not pid.isdigit() or not _running(int(pid))):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _calibration_reader(request: ExportRequest) -> RecordingCalibrationReader:
    """The INT8 calibration windows, refused before any work when fewer than asked for (unless allowed), and
    the ``--int8-keep-float`` patterns checked."""
    keep_float_patterns(request.int8_keep_float)
    reader = RecordingCalibrationReader.from_data_dir(request.calibration_data or request.data_dir,
                                                      request.calibration_windows)
    if len(reader) < request.calibration_windows and not request.allow_small_calibration:
        raise CsfmError(f"only {len(reader)} real calibration windows, fewer than the {request.calibration_windows} "
                        "asked for: pass a larger --calibration-data folder, fewer --calibration-windows, or "
                        "--allow-small-calibration")
    covered = {int(i) for b in reader.batches for i in b.channel_ids}
    if missing := [name for i, name in enumerate(LEAD_NAMES) if i not in covered]:
        request.progress(f"[export] warning: the calibration windows hold no {', '.join(missing)}, which the INT8 "
                         "artifact accepts: its ranges are not calibrated on those leads (add recordings with them)")
    return reader


def load_model(size: str | None, checkpoint: Path | None, seed: int | None) -> CSFM:
    """The user's checkpoint (which must be ``size`` where one is named), or seeded random weights labelled
    untrained."""
    if checkpoint is not None:
        return load_checkpoint(checkpoint, size)
    return build(size, seed=seed)


def _weights_record(model: CSFM, checkpoint: Path | None, seed: int | None) -> WeightsInfo:
    return checkpoint_weights(model.load_report) if checkpoint is not None else untrained_weights(seed)


def _manifest(request: ExportRequest, model: CSFM, precision: str, how: dict, verification: VerificationRecord,
              calibration: CalibrationRecord | None) -> Manifest:
    return Manifest(
        artifact="onnx", created=now(), precision=precision, precision_detail=PrecisionDetail(**how),
        opset=request.opset,
        model=ModelInfo.of(model.config),
        weights=_weights_record(model, request.checkpoint, request.seed),
        inputs=model_inputs(), outputs=model_outputs(model.config),
        channel_ids={name: i for i, name in enumerate(LEAD_NAMES)},
        preprocessing=preprocessing_record(DEFAULT_PPG_ORDER),
        tools=installed_versions(), calibration=calibration, verification=verification)


def export(request: ExportRequest) -> list[Path]:
    """Export every requested precision of one size; return the artifact paths written."""
    say = request.progress
    started = time.perf_counter()
    model = None
    if request.size is None:  # the architecture the checkpoint holds, whatever its widths
        if request.checkpoint is None:
            raise CsfmError("name a --size (tiny, base, large), or pass --checkpoint to export the architecture it "
                            "holds")
        model = load_model(None, request.checkpoint, None)
    else:
        size_config(request.size)
    name = request.size if model is None else (model.config.name or custom_name(model.config))
    targets = _check_request(request, name)
    if request.sign_key is not None:  # a key that cannot sign fails before the long work
        signing_config(SigningKey(request.sign_key))
    remove_stale_exports(request.out_dir)
    weights = request.checkpoint or f"UNTRAINED random weights (seed {request.seed})"
    say(f"[export] loading CSFM {name} from {weights}")
    if model is None:
        model = load_model(request.size, request.checkpoint, request.seed)
    if request.checkpoint is not None:
        say(f"[export] {model.load_report.summary()}")
    calibrated = any(precision_record(p).calibrated for p in request.precisions)
    reader = _calibration_reader(request) if calibrated else None  # before the long work
    cases, data = verification_cases(request.data_dir)
    say(f"[export] verification data: {data}")
    say(f"[export] PyTorch reference on {len(cases)} cases")
    reference = run_cases(reference_backend(model), cases, "reference", say)
    written: list[Path] = []
    with staging_folder(request.out_dir, STAGING_PREFIX) as tmp:  # removed even after SIGKILL
        fp32 = Path(tmp) / "traced.onnx"
        say(f"[export] exporting to ONNX ({request.exporter}, opset {request.opset})")
        exported_by = export_fp32(model, fp32, request.opset, request.exporter)
        calibration = None
        for precision, target in zip(request.precisions, targets):
            candidate = Path(tmp) / f"{precision}.onnx"
            say(f"[export] making the {precision} graph")
            if precision == "fp32":
                shutil.copyfile(fp32, candidate)
                how = {"tool": exported_by, "note": "float32 throughout"}
            elif precision == "fp16":
                how = {**to_fp16(fp32, candidate), "exported_by": exported_by}
            elif not precision_record(precision).portable:
                how = export_cpu(model, precision, candidate, request.opset)
            else:
                say(f"[export] calibrating INT8 ({request.calibration_method}) on {len(reader)} real windows")
                how = {**to_int8(fp32, candidate, reader, request.calibration_method, request.int8_keep_float),
                       "exported_by": exported_by}
                calibration = reader.describe()
            manifest = _manifest(request, model, precision, how, None, None)
            backend = open_backend(candidate, manifest, BackendOptions(provider="cpu"))
            result = verify(reference, backend, cases, precision, data, say)
            backend.close()
            if not result.passed:
                raise VerificationError(
                    f"{target.name} misses its tolerance ({result.tolerance.describe()}), not written: "
                    + "; ".join(result.failures()[:4]))
            worst = result.worst()
            say(f"[export] {precision} verified: max abs {worst.max_abs:.2e}, "
                f"min cosine {worst.min_cosine:.6f} ({result.tolerance.describe()})")
            manifest = embed_manifest(candidate, _manifest(
                request, model, precision, how, result.record(),
                calibration if precision_record(precision).calibrated else None))
            os.replace(candidate, target)
            write_manifest(target, manifest)
            written.append(target)
    if request.sign_key is not None:
        # force: a signature left beside a graph this export just replaced is stale
        for signature in sign_artifacts(written, SigningKey(request.sign_key), force=True):
            say(f"[export] signed: {signature.name}")
    say(f"[export] done in {time.perf_counter() - started:.0f} s: " + ", ".join(p.name for p in written))
    return written


def ensure_artifacts(size: str, precisions: tuple[str, ...], out_dir: Path, seed: int = 0,
                     data_dir: Path | None = None) -> dict[str, Path]:
    """``{precision: path}`` of UNTRAINED seeded artifacts in ``out_dir``, exporting the missing ones
    (for the demo and the benchmarks, which reuse what an earlier run exported); ``data_dir`` as for export."""
    paths = {p: out_dir / f"{artifact_stem(size, p)}.onnx" for p in precisions}
    missing = tuple(p for p, path in paths.items() if not path.exists())
    if missing:
        export(ExportRequest(size=size, out_dir=out_dir, seed=seed, precisions=missing,
                             data_dir=data_dir or default_data_dir()))
    return paths
