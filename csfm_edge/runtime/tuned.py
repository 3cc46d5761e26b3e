"""Opening an export folder: its measured choice (``tuned.json``) on the machine it was measured on, else a rule.

``csfm-edge tune FOLDER`` times every verified artifact of a folder on every backend setting the machine
has and writes the fastest accurate one, with the machine's fingerprint, to ``FOLDER/tuned.json``.
``Session.open(FOLDER)`` opens that choice when the fingerprint matches this machine; otherwise (another
CPU, other ISA flags, another GPU, driver or backend library, no tuned file, or artifacts changed since)
it opens the rule-based default below and says which and why in ``Session.info()["selection"]``.

The rule-based default, first that applies (measured in docs/performance-cpu.md):

1. a TensorRT engine (``.plan``) that opens on this GPU: fp16, then int8, then fp32;
2. ONNX Runtime's CUDA provider: the fp16 graph, then fp32;
3. OpenVINO installed: the int8 graph where the CPU has int8 dot-product units (AMX-INT8, AVX512-VNNI,
   AVX-VNNI, Arm dot product), with bf16 float parts where it has bf16 units; else the fp16 graph run in
   bf16 where it has bf16 units; else the fp32 graph in f32;
4. ONNX Runtime's CPU provider: ``cpu-int8``/``int8`` with int8 dot-product units, else ``cpu-fp32``/``fp32``.

Only artifacts whose manifest records a passed verification are candidates. A ``tuned.json`` that is not
readable as one (truncated, edited, another layout) is refused with an error rather than replaced by the
default: the folder's owner asked for a measured choice, and a broken record is not one.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from csfm_edge.environment import installed_versions
from csfm_edge.errors import ArtifactError, BackendUnavailableError, CsfmError, ParameterError
from csfm_edge.fileio import sha256_of
from csfm_edge.runtime.backends import Backend, BackendOptions, open_backend
from csfm_edge.runtime.backends.options import INFERENCE_PRECISIONS, PROVIDERS
from csfm_edge.runtime.manifest import Manifest, read_manifest
from csfm_edge.runtime.trust import verify_artifact

TUNED_NAME = "tuned.json"
TUNED_VERSION = 1
ARTIFACT_SUFFIXES = (".onnx", ".plan", ".engine")
# The backend libraries whose version changes what runs (a new OpenVINO may fuse differently).
RUNTIME_LIBRARIES = ("onnxruntime", "openvino", "tensorrt", "tensorrt-rtx-cu12-bindings", "torch")
# CPU flags that change which kernels run: vector widths, matrix units, int8 dot products, half floats.
ISA_FLAG = re.compile(r"^(sse4|avx|amx|fma|f16c|asimd|sve|i8mm|bf16|fphp)")
INT8_UNITS = ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp")
BF16_UNITS = ("amx_bf16", "avx512_bf16", "bf16")


# --- the machine --------------------------------------------------------------------------------------

def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU's instruction-set flags that pick kernels (x86 ``flags``, Arm ``Features``), sorted."""
    for line in _cpuinfo():
        if line.startswith(("flags", "Features")):
            return sorted({f for f in line.split(":", 1)[1].split() if ISA_FLAG.match(f)})
    return []


def gpu_identity() -> dict | None:
    """GPU 0's name and driver from nvidia-smi, or None where there is no NVIDIA GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or not done.stdout.strip():
        return None
    name, _, driver = done.stdout.splitlines()[0].partition(",")
    return {"name": name.strip(), "driver": driver.strip()}


def fingerprint() -> dict:
    """What a measured choice depends on: CPU model and ISA flags, usable CPUs, GPU and driver, libraries."""
    versions = installed_versions()
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cpus": len(os.sched_getaffinity(0)),
            "gpu": gpu_identity(), "libraries": {k: versions.get(k) for k in RUNTIME_LIBRARIES}}


def fingerprint_differences(recorded: dict, here: dict) -> list[str]:
    """How this machine differs from the one a choice was measured on, readably (empty: the same)."""
    out = []
    for key in ("cpu", "cpus", "gpu"):
        if recorded.get(key) != here.get(key):
            out.append(f"{key} {recorded.get(key)!r} when tuned, {here.get(key)!r} here")
    was, now = set(recorded.get("cpu_flags") or []), set(here.get("cpu_flags") or [])
    if was != now:
        changes = [f"+{f}" for f in sorted(now - was)] + [f"-{f}" for f in sorted(was - now)]
        out.append("CPU flags " + ", ".join(changes))
    libs, mine = recorded.get("libraries") or {}, here.get("libraries") or {}
    out += [f"{k} {libs.get(k)} when tuned, {mine.get(k)} here" for k in sorted(set(libs) | set(mine))
            if libs.get(k) != mine.get(k)]
    return out


# --- settings: one way to run one artifact ------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """An artifact (file name inside the folder) and how to run it: backend/provider, OpenVINO inference
    precision (f32, bf16, f16; None: the backend's rule for the artifact's precision), threads (None: all)."""

    artifact: str
    provider: str
    inference_precision: str | None = None
    threads: int | None = None

    def label(self) -> str:
        parts = [f"{self.artifact} @{self.provider}"]
        if self.inference_precision:
            parts.append(self.inference_precision)
        if self.threads:
            parts.append(f"{self.threads} threads")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, where: str) -> Setting:
        if not isinstance(data, dict) or set(data) - {f.name for f in fields(cls)}:
            raise ArtifactError(f"{where} is not a setting (artifact, provider, inference_precision, threads)")
        ok = (isinstance(data.get("artifact"), str) and data.get("provider") in PROVIDERS
              and data.get("inference_precision") in (None, *INFERENCE_PRECISIONS)
              and (data.get("threads") is None or (isinstance(data["threads"], int) and data["threads"] > 0)))
        if not ok or "/" in data["artifact"]:
            raise ArtifactError(f"{where} has an invalid field: {data}")
        return cls(**data)


    def options(self) -> BackendOptions:
        return BackendOptions(provider=self.provider, threads=self.threads,
                              inference_precision=self.inference_precision)


def open_setting(path: Path, manifest: Manifest, setting: Setting) -> Backend:
    """The backend ``setting`` describes for the artifact at ``path`` (what tune times is what Session runs)."""
    if setting.inference_precision is not None and setting.provider != "openvino":
        raise ParameterError(f"an inference precision is an OpenVINO setting ({setting.label()})")
    return open_backend(path, manifest, setting.options())


# --- the folder -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    path: Path
    manifest: Manifest


def folder_artifacts(folder: Path) -> tuple[list[Candidate], list[dict]]:
    """The folder's verified artifacts of one model and weights, and the files left out with why."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder")
    found, skipped = [], []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in ARTIFACT_SUFFIXES and p.is_file()):
        try:
            manifest = read_manifest(path)
        except CsfmError as exc:
            skipped.append({"artifact": path.name, "reason": str(exc)})
            continue
        if manifest.verification is None or not manifest.verification.passed:
            skipped.append({"artifact": path.name, "reason": "its manifest records no passed verification"})
            continue
        found.append(Candidate(path, manifest))
    models = {(c.manifest.model, c.manifest.weights.describe()) for c in found}
    if len(models) > 1:
        raise ArtifactError(f"{folder} holds artifacts of {len(models)} different models or weights ("
                            + "; ".join(sorted(f"{m.size}, {w}" for m, w in models)) + "): keep one model per folder")
    if not found:
        why = "; ".join(f"{s['artifact']}: {s['reason']}" for s in skipped) or "no .onnx or .plan file"
        raise ArtifactError(f"{folder} holds no verified artifact ({why})")
    return found, skipped


@dataclass(frozen=True)
class Selection:
    """What ``Session.open(FOLDER)`` opened, and why: ``source`` is ``tuned`` or ``default``."""

    setting: Setting
    source: str
    reason: str

    def describe(self) -> dict:
        return {"choice": self.setting.label(), "source": self.source, "reason": self.reason}


def read_tuned(path: Path) -> dict:
    """A tuned record, checked; anything unreadable is an :class:`ArtifactError` in one line."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not a readable tuned record ({exc}): re-run csfm-edge tune, or delete "
                            "it to open the rule-based default") from None
    if not isinstance(data, dict) or data.get("tuned_version") != TUNED_VERSION:
        raise ArtifactError(f"{path} is not a csfm-edge tuned record of layout version {TUNED_VERSION}: re-run "
                            "csfm-edge tune, or delete it to open the rule-based default")
    choice = data.get("choice")
    if not isinstance(choice, dict) or not isinstance(choice.get("sha256"), str) \
            or not isinstance(data.get("fingerprint"), dict):
        raise ArtifactError(f"{path} lacks its choice or fingerprint: re-run csfm-edge tune")
    Setting.from_dict(choice.get("setting"), f"{path}: choice.setting")
    return data


def _has(flags: list[str], units: tuple[str, ...]) -> bool:
    return any(u in flags for u in units)


def default_setting(candidates: list[Candidate], flags: list[str]) -> tuple[Setting, str]:
    """The rule-based choice (see the module docstring) and the rule that made it."""
    by_precision: dict[tuple[str, str], Candidate] = {}
    for c in candidates:
        by_precision.setdefault((c.path.suffix.lower(), c.manifest.precision), c)
    onnx = {p: c for (s, p), c in by_precision.items() if s == ".onnx"}
    gpu = gpu_identity()
    for precision in ("fp16", "int8", "fp32"):
        plan = by_precision.get((".plan", precision)) or by_precision.get((".engine", precision))
        built = plan.manifest.gpu if plan is not None else None
        if built is not None and gpu is not None and (built.ahead_of_time or built.name == gpu["name"]):
            return Setting(plan.path.name, "tensorrt"), f"a TensorRT engine ({precision}) built for this GPU"
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    if "CUDAExecutionProvider" in providers:
        for precision in ("fp16", "fp32"):
            if precision in onnx:
                return Setting(onnx[precision].path.name, "cuda"), f"ONNX Runtime CUDA, the {precision} graph"
    int8, bf16 = _has(flags, INT8_UNITS), _has(flags, BF16_UNITS)
    from csfm_edge.runtime.backends.openvino import openvino_available

    if openvino_available():
        if int8 and "int8" in onnx:
            return Setting(onnx["int8"].path.name, "openvino"), \
                "OpenVINO, the int8 graph: the CPU has int8 dot-product units" + (" and bf16 units" if bf16 else "")
        if bf16 and "fp16" in onnx:
            return Setting(onnx["fp16"].path.name, "openvino", "bf16"), \
                "OpenVINO, the fp16 graph in bf16: the CPU has bf16 units"
        if "fp32" in onnx:
            return Setting(onnx["fp32"].path.name, "openvino", "f32"), "OpenVINO, the fp32 graph in f32"
    order = ("cpu-int8", "int8", "cpu-fp32", "fp32") if int8 else ("cpu-fp32", "fp32", "cpu-int8", "int8")
    for precision in order:
        if precision in onnx:
            return Setting(onnx[precision].path.name, "cpu"), f"ONNX Runtime CPU, the {precision} graph"
    raise ArtifactError("no artifact in the folder runs on this machine by the default rule (it holds "
                        + ", ".join(sorted(f"{p}{s}" for s, p in by_precision)) + ")")


def select(folder: Path) -> Selection:
    """The tuned choice where ``FOLDER/tuned.json`` was measured here on these very artifacts, else the default."""
    folder = Path(folder)
    candidates, _ = folder_artifacts(folder)
    here = fingerprint()
    tuned_path = folder / TUNED_NAME
    why = f"no {TUNED_NAME} in the folder (run csfm-edge tune {folder})"
    if tuned_path.exists():
        record = read_tuned(tuned_path)
        setting = Setting.from_dict(record["choice"]["setting"], f"{tuned_path}: choice.setting")
        differences = fingerprint_differences(record["fingerprint"], here)
        chosen = folder / setting.artifact
        if differences:
            why = f"{TUNED_NAME} was measured on another machine: " + "; ".join(differences)
        elif not chosen.is_file() or sha256_of(chosen) != record["choice"]["sha256"]:
            why = f"{setting.artifact}, the tuned choice, is missing or changed since tuning: re-run csfm-edge tune"
        elif all(c.path != chosen for c in candidates):
            why = f"{setting.artifact}, the tuned choice, is no longer a verified artifact"
        else:
            return Selection(setting, "tuned", f"measured on this machine ({record.get('created', '?')}): "
                                               + record["choice"].get("why", "fastest accurate candidate"))
    setting, rule = default_setting(candidates, here["cpu_flags"])
    return Selection(setting, "default", f"{why}; rule-based default: {rule}")


def open_folder(folder: Path, options: BackendOptions | None = None, trust: str | Path | None = None
                ) -> tuple[Backend, Manifest, Selection]:
    """The backend and manifest of the folder's selected artifact (see :func:`select`); with ``trust`` (or
    ``$CSFM_EDGE_TRUST``) the selected artifact opens only if its signature verifies."""
    if options is not None and options != BackendOptions():
        raise ParameterError("a folder opens its tuned (or default) choice: name an artifact file to pick the "
                             "provider or the PyTorch reference")
    selection = select(folder)
    path = Path(folder) / selection.setting.artifact
    verify_artifact(path, trust)
    manifest = read_manifest(path)
    try:
        return open_setting(path, manifest, selection.setting), manifest, selection
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(f"{selection.setting.label()} ({selection.source}: {selection.reason}) "
                                      f"cannot open: {exc}") from None
