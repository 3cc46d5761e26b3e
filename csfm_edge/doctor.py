"""``csfm-edge doctor``: what this machine has, and whether csfm-edge works on it, in one report.

The report names the platform, driver, CUDA runtime and binding, TensorRT library and version, and the
GPU (with the Jetson module and power mode), then runs checks that each end ``pass``, ``fail`` or
``skipped`` with a one-line reason: ONNX Runtime and OpenVINO run each artifact; TensorRT parses and
builds it (ahead of time with TensorRT for RTX where there is no GPU); with a GPU, a native engine per
artifact and preset verified against the artifact on ONNX Runtime (no torch needed on a Jetson),
CUDA-graph and plain runs equal across alternating shapes and profiles, two threads equal to one, and
GPU compute time at batch 1 and 8. Every decision it reports comes from the library's own functions.
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from csfm_edge import __version__
from csfm_edge.bench.machine import command_output
from csfm_edge.environment import installed_versions
from csfm_edge.errors import CsfmError
from csfm_edge.metrics import Comparison, Tolerance, compare
from csfm_edge.profiles import PRESETS
from csfm_edge.recordings.datasets import lead_set_batches, shaped_batch
from csfm_edge.runtime.backends import BackendOptions, open_backend
from csfm_edge.spec import SPEC, precision_record


@dataclass
class Check:
    name: str
    status: str  # "pass", "fail" or "skipped"
    detail: str


@dataclass
class Report:
    machine: dict
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)

    def to_dict(self) -> dict:
        return {"csfm_edge": __version__, "machine": self.machine, "checks": [asdict(c) for c in self.checks],
                "passed": not self.failed}


def machine() -> dict:
    """Platform, driver, CUDA, TensorRT and GPU identity, each None (with why) where absent."""
    from csfm_edge.runtime.cuda import binding_major, cuda_api, jetson_module
    from csfm_edge.runtime.tensorrt_lib import load_tensorrt

    info: dict = {"platform": platform.platform(), "python": platform.python_version(),
                  "packages": installed_versions(), "cuda_binding_major": binding_major(),
                  "jetson_module": jetson_module(),
                  "nvidia_smi": command_output("nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total",
                                     "--format=csv,noheader"),
                  "nvpmodel": command_output("nvpmodel", "-q")}
    try:
        trt = load_tensorrt()
        info["tensorrt"] = {"library": trt.library, "version": trt.version}
    except CsfmError as exc:
        info["tensorrt"] = {"missing": str(exc).split(":")[0]}
    try:
        api = cuda_api()
        gpu = api.gpu()
        info["gpu"] = {**asdict(gpu), "cuda_api": api.name}
    except CsfmError as exc:
        info["gpu"] = {"missing": gpu_missing_reason(info["nvidia_smi"], str(exc))}
    return info


def gpu_missing_reason(nvidia_smi: str | None, cuda_error: str) -> str:
    """Why csfm-edge cannot use a GPU here: none at all, or one nvidia-smi sees that CUDA cannot be used on
    from Python (no binding, a binding for another driver), which a user fixes differently."""
    if nvidia_smi:
        name = nvidia_smi.splitlines()[0].split(",")[0].strip()
        return f"an NVIDIA GPU is present ({name}) but CUDA is not usable from Python: {cuda_error}"
    return f"no usable NVIDIA GPU ({cuda_error})"


def engine_skip_reason(precision: str, tensorrt: dict, gpu: dict) -> str | None:
    """Why no native TensorRT engine can be built and run for an artifact of ``precision`` here (from the
    machine record's ``tensorrt`` and ``gpu`` entries), or None when the engine check can run.

    A GPU without TensorRT (a common data-center image), a ``cpu-*`` graph (ONNX Runtime contrib operators
    that TensorRT's parser rejects) and a GPU TensorRT for RTX has no target for (Hopper, data-center
    Blackwell, Jetson) are facts of the machine or the artifact, not failures."""
    from csfm_edge.runtime.tensorrt_lib import native_build_problem

    if not precision_record(precision).portable:
        return "ONNX Runtime CPU graph: not a TensorRT artifact"
    if "missing" in gpu:
        return gpu["missing"]
    if "missing" in tensorrt:
        return tensorrt["missing"] + " (no TensorRT: nothing to build with)"
    problem = native_build_problem(tensorrt["library"], gpu["compute_capability"])
    return None if problem is None else problem.split(";")[0]


def _check(report: Report, name: str, run: Callable[[], str]) -> None:
    """Run one check: its return value is the pass detail; a CsfmError is a fail; SkipCheck a skip."""
    try:
        report.checks.append(Check(name, "pass", run()))
    except SkipCheck as skip:
        report.checks.append(Check(name, "skipped", str(skip)))
    except (CsfmError, ModuleNotFoundError, OSError, RuntimeError, ValueError) as exc:
        report.checks.append(Check(name, "fail", f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))


class SkipCheck(Exception):
    """A check that cannot run on this machine; the message says why."""


def _real_feed(data_dir: Path | None, batch: int, channels: int) -> dict[str, np.ndarray]:
    signal, ids = shaped_batch(lead_set_batches(data_dir), batch, channels, SPEC.axes["time"].max)
    return SPEC.feed(signal, ids)


def _agreement(reference: dict, candidate: dict, tolerance: Tolerance) -> Comparison:
    return compare(reference[SPEC.features], candidate[SPEC.features], tolerance)


def _run_once(artifact: Path, manifest, options: BackendOptions, feeds: list[dict]) -> list[dict]:
    backend = open_backend(artifact, manifest, options)
    try:
        return [backend.run(feed) for feed in feeds]
    finally:
        backend.close()


def artifact_checks(report: Report, artifact: Path, data_dir: Path | None) -> None:
    from csfm_edge.runtime.backends.openvino import openvino_available
    from csfm_edge.runtime.manifest import read_manifest

    name = artifact.name
    manifest = read_manifest(artifact)
    feed = _real_feed(data_dir, 2, 2)
    outputs: dict[str, dict] = {}

    def onnxruntime() -> str:
        outputs["reference"] = _run_once(artifact, manifest, BackendOptions(provider="cpu"), [feed])[0]
        return f"ran lead II + PPG batch 2 on real windows: features {outputs['reference'][SPEC.features].shape}"

    def openvino() -> str:
        if not openvino_available():
            raise SkipCheck("openvino is not installed (pip install 'csfm-edge[openvino]')")
        if not manifest.precision_record.portable:
            raise SkipCheck("ONNX Runtime CPU graph (contrib ops): not for OpenVINO")
        if "reference" not in outputs:
            raise SkipCheck("ONNX Runtime did not run it: nothing to compare with")
        agreement = _agreement(outputs["reference"],
                               _run_once(artifact, manifest, BackendOptions(provider="openvino"), [feed])[0],
                               manifest.precision_record.tolerance)
        if not agreement.passed:
            raise CsfmError(f"OpenVINO and ONNX Runtime disagree: {agreement.describe()}")
        return f"equals ONNX Runtime: min cosine {agreement.min_cosine:.6f}"

    _check(report, f"{name}: onnxruntime", onnxruntime)
    _check(report, f"{name}: openvino", openvino)
    _check(report, f"{name}: tensorrt build", lambda: _build_check(artifact, manifest, report.machine["gpu"]))
    skip = engine_skip_reason(manifest.precision, report.machine["tensorrt"], report.machine["gpu"])
    if skip is None:
        _check(report, f"{name}: tensorrt engine", lambda: _engine_checks(artifact, manifest, data_dir))
    else:
        report.checks.append(Check(f"{name}: tensorrt engine", "skipped", skip))


def _build_check(artifact: Path, manifest, gpu_record: dict) -> str:
    from csfm_edge.export.tensorrt_build import BuildRequest, build_engine
    from csfm_edge.runtime.tensorrt_lib import library_for_target, load_tensorrt, native_build_problem

    if not manifest.precision_record.portable:
        raise SkipCheck("ONNX Runtime CPU graph: not a TensorRT artifact")
    gpu = "missing" not in gpu_record
    target = "native" if gpu else "rtx-sm86"
    try:
        trt = load_tensorrt(library_for_target(target))
    except CsfmError as exc:
        raise SkipCheck(str(exc).split(":")[0] + " (no TensorRT: nothing to build with)") from None
    if gpu and native_build_problem(trt.library, gpu_record["compute_capability"]):
        gpu, target = False, "rtx-sm86"  # TensorRT for RTX on a GPU it has no target for: prove the graph builds
    with tempfile.TemporaryDirectory() as tmp:
        plan = build_engine(BuildRequest(artifact, Path(tmp) / "doctor.plan", [PRESETS["bedside"]], target,
                                         progress=lambda message: None))
        size = plan.stat().st_size / 1e6
    return f"parsed and built ({'this GPU' if gpu else 'ahead of time for SM86'}, bedside preset): {size:.1f} MB"


def _engine_checks(artifact: Path, manifest, data_dir: Path | None) -> str:
    """Native engine: within its precision's tolerance of the ONNX graph on ONNX Runtime, graph replay equal
    to plain launches, two threads equal to one."""
    from csfm_edge.export.tensorrt_build import BuildRequest, build_engine
    from csfm_edge.runtime.manifest import read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        plan = build_engine(BuildRequest(artifact, Path(tmp) / "doctor.plan", [PRESETS["bedside"], PRESETS["clinic"]],
                                         progress=lambda message: None))
        plan_manifest = read_manifest(plan)
        feeds = [_real_feed(data_dir, 2, 2), _real_feed(data_dir, 8, 12), _real_feed(data_dir, 1, 1)]
        expected = _run_once(artifact, manifest, BackendOptions(provider="cpu"), feeds)
        plain = open_backend(plan, plan_manifest, BackendOptions())
        graphed = open_backend(plan, plan_manifest, BackendOptions(cuda_graph=True))
        try:
            tolerance = manifest.precision_record.tolerance
            worst = min((_agreement(e, plain.run(f), tolerance) for e, f in zip(expected, feeds)),
                        key=lambda c: (c.passed, c.min_cosine))
            if not worst.passed:
                raise CsfmError(f"engine vs ONNX Runtime: {worst.describe()}")
            for _ in range(3):  # alternating shapes and profiles: replay must follow every change
                for f in feeds:
                    a, b = plain.run(f)[SPEC.features], graphed.run(f)[SPEC.features]
                    if not np.allclose(a, b, atol=1e-5):
                        raise CsfmError("CUDA-graph replay differs from plain launches after a shape change")
            with ThreadPoolExecutor(2) as pool:
                threaded = list(pool.map(lambda f: plain.run(f)[SPEC.features], feeds * 2))
            if not all(np.allclose(t, plain.run(f)[SPEC.features], atol=1e-5) for t, f in zip(threaded, feeds * 2)):
                raise CsfmError("two threads on one engine give other results than one")
            times = {}
            for batch in (1, 8):
                plain.run(_real_feed(data_dir, batch, 2))
                times[batch] = float(np.median([plain.gpu_compute_ms() for _ in range(20)]))
        finally:
            plain.close()
            graphed.close()
    return (f"verified vs ONNX Runtime (min cosine {worst.min_cosine:.6f}); graph replay = plain across shapes; "
            f"2 threads = 1; GPU compute {times[1]:.2f} ms at batch 1, {times[8]:.2f} ms at batch 8 (II+PPG)")


def run_doctor(artifacts: list[Path], data_dir: Path | None) -> Report:
    report = Report(machine())
    gpu = "missing" not in report.machine["gpu"]
    tensorrt = report.machine["tensorrt"]
    report.checks.append(Check("tensorrt library", "pass" if "missing" not in tensorrt else "skipped",
                               f"{tensorrt['library']} {tensorrt['version']}" if "missing" not in tensorrt
                               else tensorrt["missing"]))
    report.checks.append(Check("gpu", "pass" if gpu else "skipped",
                               report.machine["gpu"].get("name", "") if gpu else report.machine["gpu"]["missing"]))
    for artifact in artifacts:
        _check(report, f"{artifact.name}: manifest", lambda a=artifact: _manifest_check(a))
        if report.checks[-1].status == "pass":
            artifact_checks(report, artifact, data_dir)
    return report


def _manifest_check(artifact: Path) -> str:
    from csfm_edge.runtime.manifest import read_manifest

    manifest = read_manifest(artifact)
    return f"CSFM {manifest.model.size} {manifest.precision}, weights {manifest.weights.describe()}"
