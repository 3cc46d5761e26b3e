"""Artifact manifests: the record that says what an exported file is. The only code that knows its JSON.

Written by the exporter, the TensorRT builder and the Triton repository writer; read by every
backend. :class:`Manifest` is typed: reading validates every field (a missing or mistyped one is an
:class:`ArtifactError` naming it), and everything else reads attributes, never dict keys. A file whose
manifest is missing, of another layout version, or whose sha256 differs from the file's is refused:
a deployed artifact must explain itself, and a mismatch must not run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from csfm_edge.config import CSFMConfig, matching_size
from csfm_edge.errors import ArtifactError, CsfmError
from csfm_edge.fileio import sha256_of, write_atomically
from csfm_edge.metrics import Tolerance
from csfm_edge.profiles import Profile
from csfm_edge.runtime.preprocess import DEFAULT_PPG_ORDER, preprocessing_parameters
from csfm_edge.spec import PRECISIONS, SPEC, Precision, precision_record

MANIFEST_VERSION = 2


@dataclass(frozen=True)
class ModelInfo:
    """The encoder's widths; ``size`` is tiny/base/large, or a ``custom-...`` name."""

    size: str
    dim: int
    depth: int
    heads: int
    mlp_dim: int
    head_classes: int
    family: str = "CSFM"

    @classmethod
    def of(cls, config: CSFMConfig, size: str | None = None) -> ModelInfo:
        return cls(size or config.name or custom_name(config), config.dim, config.depth, config.heads,
                   config.mlp_dim, config.head_classes)

    def config(self) -> CSFMConfig:
        config = CSFMConfig(self.dim, self.depth, self.heads, self.mlp_dim, self.head_classes)
        return dataclasses.replace(config, name=matching_size(config))


def custom_name(config: CSFMConfig) -> str:
    """A name for an architecture that is none of the released sizes: ``custom-d64x2``."""
    return f"custom-d{config.dim}x{config.depth}"


@dataclass(frozen=True)
class WeightsInfo:
    """``untrained`` (seeded random weights) or ``checkpoint`` (file name and sha256)."""

    source: str
    seed: int | None = None
    name: str | None = None
    sha256: str | None = None
    keys_loaded: int | None = None
    keys_ignored: int | None = None
    warning: str | None = None

    @property
    def untrained(self) -> bool:
        return self.source == "untrained"

    def describe(self) -> str:
        if self.untrained:
            return f"UNTRAINED random, seed {self.seed}"
        return f"{self.name} (sha256 {str(self.sha256)[:16]}...)"


def untrained_weights(seed: int | None) -> WeightsInfo:
    return WeightsInfo("untrained", seed=seed, warning="UNTRAINED random weights: outputs are meaningless")


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    dims: list[str | int]
    ranges: dict[str, dict[str, int]] | None = None

    @property
    def width(self) -> int:
        """The fixed last dimension of an output ([batch, width])."""
        return int(self.dims[-1])


@dataclass(frozen=True)
class PreprocessingInfo:
    """Everything that defines the preprocessing (see :func:`csfm_edge.runtime.preprocess.preprocessing_parameters`)."""

    sample_rate_hz: float
    window_samples: int
    resample: str
    ecg: dict[str, Any]
    ppg: dict[str, Any]
    zscore_eps: float
    flat_std: float
    pad: str

    @property
    def ppg_order(self) -> int:
        order = self.ppg.get("order")
        if not isinstance(order, int) or isinstance(order, bool) or not 1 <= order <= 8:
            raise ArtifactError(f"field preprocessing.ppg.order is {order!r}: expected an integer 1..8")
        return order


@dataclass(frozen=True)
class FileInfo:
    name: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class TensorRTInfo:
    library: str
    version: str
    strongly_typed: bool
    target: str
    workspace_mb: int | None = None
    tf32: bool | None = None


@dataclass(frozen=True)
class GpuRecord:
    """The GPU an engine was built for: enough to tell an AGX Orin from an Orin NX (both compute 8.7)."""

    compute_capability: str
    name: str | None = None
    ahead_of_time: bool = False
    sm_count: int | None = None
    memory_bytes: int | None = None
    jetson_module: str | None = None  # /proc/device-tree/model on Jetson
    hardware_compatibility: str | None = None  # TensorRT's hardware-compatibility level ("NONE", "AMPERE_PLUS")


@dataclass(frozen=True)
class SourceOnnx:
    name: str
    sha256: str
    manifest: dict[str, Any]


@dataclass(frozen=True)
class PrecisionDetail:
    """How the exporter made the graph of this precision (the tool, and what it kept in float)."""

    tool: str
    note: str | None = None
    exported_by: str | None = None
    io_types: str | None = None
    kept_fp32_ops: list[str] | None = None
    calibration_method: str | None = None
    percentile: float | None = None
    activations: str | None = None
    weights: str | None = None
    quantized_ops: list[str] | None = None
    float_ops: list[str] | None = None
    float_matmuls: dict[str, Any] | None = None
    runtime: str | None = None
    attention: str | None = None
    quantization: str | None = None


@dataclass(frozen=True)
class CaseRecord:
    """One verification case: its shape and how far the artifact's outputs were from the reference."""

    case: str
    shape: list[int]
    max_abs: float
    mean_cosine: float
    min_cosine: float
    logits_max_abs: float | None = None


@dataclass(frozen=True)
class WorstCase:
    max_abs: float
    min_mean_cosine: float
    min_cosine: float | None = None  # worst single window (manifests before this field: absent)


@dataclass(frozen=True)
class VerificationRecord:
    """The artifact against the PyTorch reference on real recordings, case by case, under its tolerance."""

    precision: str
    tolerance: Tolerance
    passed: bool
    data: str
    worst: WorstCase
    cases: list[CaseRecord]


@dataclass(frozen=True)
class LeadSetWindows:
    windows: int
    source: str


@dataclass(frozen=True)
class CalibrationRecord:
    """The real windows INT8 ranges were calibrated on: how many, from which lead sets and files."""

    windows: int
    lead_sets: dict[str, LeadSetWindows]
    files_sha256: dict[str, str]


@dataclass(frozen=True)
class Manifest:
    """What an artifact is: model, weights, precision and how it was made, tensors, preprocessing, checks."""

    artifact: str  # "onnx", "tensorrt_plan" or "checkpoint"
    precision: str
    model: ModelInfo
    weights: WeightsInfo
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    preprocessing: PreprocessingInfo
    created: str = ""
    precision_detail: PrecisionDetail | None = None
    opset: int | None = None
    channel_ids: dict[str, int] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    calibration: CalibrationRecord | None = None
    verification: VerificationRecord | None = None
    tensorrt: TensorRTInfo | None = None
    gpu: GpuRecord | None = None
    profiles: list[Profile] | None = None
    source_onnx: SourceOnnx | None = None
    build_seconds: float | None = None
    timing_cache: dict[str, Any] | None = None
    graph_sha256: str | None = None  # of the ONNX graph itself: checks a renamed file that has no sidecar
    file: FileInfo | None = None
    manifest_version: int = MANIFEST_VERSION

    @property
    def output_names(self) -> list[str]:
        return list(self.outputs)

    @property
    def has_head(self) -> bool:
        return SPEC.logits in self.outputs

    @property
    def precision_record(self) -> Precision:
        """What this precision is (portable or not, tolerance, TensorRT flags, OpenVINO hint)."""
        try:
            return precision_record(self.precision)
        except CsfmError as exc:
            raise ArtifactError(f"manifest: {exc}") from None

    def to_dict(self) -> dict:
        return _to_json(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> Manifest:
        if not isinstance(data, dict):
            raise ArtifactError(f"{where} is not a JSON object")
        if data.get("manifest_version") != MANIFEST_VERSION:
            raise ArtifactError(f"{where} is not a csfm-edge manifest of layout version {MANIFEST_VERSION} "
                                f"(found {data.get('manifest_version')!r}): re-export the artifact")
        try:
            manifest = _from_json(cls, data, "")
            manifest.preprocessing.ppg_order  # noqa: B018  (validates the one free-form field read back)
            return manifest
        except ArtifactError as exc:
            raise ArtifactError(f"{where}: {exc} (re-export the artifact or restore its manifest)") from None

    def with_file(self, artifact: Path) -> Manifest:
        """This manifest describing ``artifact`` (name, size, sha256), as written beside it."""
        return dataclasses.replace(self, file=FileInfo(artifact.name, artifact.stat().st_size, sha256_of(artifact)))

    def differences(self, other: Manifest) -> list[str]:
        """Top-level fields (``file`` aside) whose values differ: what a sidecar edit changed."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in sorted(set(mine) | set(theirs)) if k != "file" and mine.get(k) != theirs.get(k)]


def model_outputs(config: CSFMConfig) -> dict[str, TensorInfo]:
    """The outputs block for a model: ``features`` [batch, dim] and ``logits`` where it has a head."""
    return {name: TensorInfo(dtype, list(dims)) for name, (dtype, dims)
            in SPEC.outputs(config.dim, config.head_classes).items()}


def model_inputs() -> dict[str, TensorInfo]:
    """The inputs block: symbolic dims with their ranges, from :data:`SPEC`."""
    return {name: TensorInfo(dtype, list(dims), {d: dataclasses.asdict(SPEC.axes[d]) for d in dims})
            for name, (dtype, dims) in SPEC.inputs().items()}


def preprocessing_record(ppg_order: int) -> PreprocessingInfo:
    """This package's preprocessing with the given PPG filter order, as a manifest records it."""
    return PreprocessingInfo(**preprocessing_parameters(ppg_order))


def checkpoint_weights(report) -> WeightsInfo:
    """The weights record of a loaded checkpoint (its :class:`~csfm_edge.model.checkpoint.LoadReport`)."""
    return WeightsInfo("checkpoint", name=Path(report.path).name, sha256=report.sha256,
                       keys_loaded=len(report.loaded), keys_ignored=len(report.ignored))


def graph_manifest(config: CSFMConfig, precision: str, weights: WeightsInfo, artifact: str = "onnx") -> Manifest:
    """What a manifest says of a model's graph (or checkpoint) that has no manifest of its own yet: export's
    candidates before verification, benchmark graphs, checkpoints run directly."""
    return Manifest(artifact=artifact, precision=precision, model=ModelInfo.of(config), weights=weights,
                    inputs=model_inputs(), outputs=model_outputs(config),
                    preprocessing=preprocessing_record(DEFAULT_PPG_ORDER))


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# --- JSON <-> dataclasses, with every field checked ------------------------------------------------

def _to_json(value: Any) -> Any:
    """Dataclasses as JSON objects; optional fields left at None are left out (reading restores them)."""
    if dataclasses.is_dataclass(value):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (getattr(value, f.name) is None and f.default is None)}
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    return value


def _from_json(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ArtifactError(f"field {where or 'manifest'} must be an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        path = f"{where}.{f.name}" if where else f.name
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ArtifactError(f"field {path} is missing")
            continue
        values[f.name] = _convert(data[f.name], hints[f.name], path)
    return cls(**values)


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options[:-1]:
            try:
                return _convert(value, option, where)
            except ArtifactError:
                pass
        return _convert(value, options[-1], where)
    if dataclasses.is_dataclass(hint):
        return _from_json(hint, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ArtifactError(f"field {where} must be an object, got {type(value).__name__}")
        return {k: _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ArtifactError(f"field {where} must be a list, got {type(value).__name__}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    ok = {float: isinstance(value, (int, float)) and not isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          str: isinstance(value, str), bool: isinstance(value, bool)}.get(hint)
    if not ok:
        raise ArtifactError(f"field {where} must be {getattr(hint, '__name__', hint)}, got {value!r}")
    return float(value) if hint is float else value


# --- files --------------------------------------------------------------------------------------

EMBEDDED_KEY = "csfm_edge.manifest"  # the ONNX metadata property that carries the manifest


def manifest_path(artifact: str | Path) -> Path:
    """``model.onnx`` -> ``model.json`` (same stem, beside it)."""
    return Path(artifact).with_suffix(".json")


def embedded_text(manifest: Manifest) -> str:
    """The manifest as an ONNX file carries it inside (everything but the file's own hash)."""
    return json.dumps(dataclasses.replace(manifest, file=None).to_dict(), sort_keys=True)


def _parse(text: str, where: str) -> Manifest:
    try:
        data = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{where} is not readable JSON ({exc})") from None
    return Manifest.from_dict(data, where)


def read_manifest(artifact: str | Path, *, check_hash: bool = True) -> Manifest:
    """Load, validate and check what ``artifact`` is; raise :class:`ArtifactError` on any mismatch.

    An ONNX file carries its manifest inside (so a renamed file still opens) and a sidecar JSON beside
    it; where both exist they must agree, or the artifact is refused naming the fields that differ. The
    sidecar's sha256 (or, without a sidecar, the embedded graph hash) must match the file.
    """
    artifact = Path(artifact)
    if artifact.is_dir():
        raise ArtifactError(f"artifact {artifact} is a folder, not an exported file")
    if not artifact.is_file():
        raise ArtifactError(f"artifact {artifact} is a broken symlink or a symlink loop" if artifact.is_symlink()
                            else f"artifact {artifact} does not exist")
    manifest = _read(artifact, check_hash)
    problems = contradictions(manifest, _graph_facts(artifact))
    if problems:
        raise ArtifactError(f"{artifact.name}: its manifest contradicts the model itself: {'; '.join(problems)} "
                            "(an edited manifest?): refusing to run")
    return manifest


def _graph_facts(artifact: Path):
    if artifact.suffix.lower() != ".onnx":
        return None
    from csfm_edge.runtime.onnx_file import read_graph_facts

    return read_graph_facts(artifact)


def contradictions(manifest: Manifest, facts=None) -> list[str]:
    """Claims of ``manifest`` that its own other fields, this package's tables, or the graph's ``facts``
    (:class:`~csfm_edge.runtime.onnx_file.GraphFacts`) prove false. What no graph can prove (weights, filter
    orders) is what signatures are for (:mod:`csfm_edge.runtime.trust`)."""
    from csfm_edge.config import SIZES
    from csfm_edge.leads import LEAD_NAMES

    model, problems = manifest.model, []
    known = SIZES.get(model.size)
    if known is not None and (known.dim, known.depth, known.heads, known.mlp_dim) != (
            model.dim, model.depth, model.heads, model.mlp_dim):
        problems.append(f"size {model.size} has dim {known.dim}, depth {known.depth}, heads {known.heads}, MLP "
                        f"{known.mlp_dim}, not {model.dim}, {model.depth}, {model.heads}, {model.mlp_dim}")
    features = manifest.outputs.get(SPEC.features)
    if features is None or features.width != model.dim:
        problems.append(f"features are {features.width if features else 'missing'} wide for dim {model.dim}")
    logits = manifest.outputs.get(SPEC.logits)
    if (logits.width if logits else 0) != model.head_classes:
        problems.append(f"logits {logits.width if logits else 'missing'} for a {model.head_classes}-class head")
    if manifest.channel_ids and manifest.channel_ids != {name: i for i, name in enumerate(LEAD_NAMES)}:
        problems.append("its channel table is not CSFM's")
    if facts is None:
        return problems
    for name, tensor in manifest.outputs.items():
        if name not in facts.output_widths:
            problems.append(f"the graph has no output {name!r}")
        elif facts.output_widths[name] not in (None, tensor.width):
            problems.append(f"the graph's {name} are {facts.output_widths[name]} wide, not {tensor.width}")
    extra = sorted(set(facts.output_widths) - set(manifest.outputs))
    if extra:
        problems.append(f"the graph has outputs {', '.join(extra)} the manifest does not name")
    if facts.attention_blocks and facts.attention_blocks != model.depth:
        problems.append(f"the graph has {facts.attention_blocks} attention blocks, not depth {model.depth}")
    record = PRECISIONS.get(manifest.precision)
    if record is None:
        return [*problems, f"precision {manifest.precision!r} is none of {', '.join(PRECISIONS)}"]
    if facts.quantized != record.quantized:
        problems.append(f"precision {manifest.precision}, but the graph is "
                        + ("quantized (Q/DQ or integer ops)" if facts.quantized else "not quantized"))
    if facts.float16 != (record.compute == "fp16"):
        problems.append(f"precision {manifest.precision}, but the graph "
                        + ("holds float16 weights" if facts.float16 else "holds no float16 weights"))
    return problems


def _read(artifact: Path, check_hash: bool) -> Manifest:
    path = manifest_path(artifact)
    if not path.is_file():
        return _embedded_only(artifact, path, check_hash)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ArtifactError(f"manifest {path} is not readable ({exc.strerror or exc})") from None
    manifest = _parse(text, f"manifest {path.name}")
    if manifest.file is None:
        raise ArtifactError(f"manifest {path.name} names no file (field file is missing)")
    if check_hash:
        actual = sha256_of(artifact)
        if actual != manifest.file.sha256 and manifest.file.name != artifact.name:
            raise ArtifactError(f"manifest {path.name} describes {manifest.file.name!r}, not {artifact.name} (sha256 "
                                f"{manifest.file.sha256[:12]}... vs {actual[:12]}...)")
        if actual != manifest.file.sha256:
            raise ArtifactError(f"{artifact.name} does not match its manifest {path.name} (sha256 {actual[:12]}... "
                                f"vs {manifest.file.sha256[:12]}...): file changed or corrupt")
    embedded = _embedded(artifact, hash_graph=False)[0] if artifact.suffix.lower() == ".onnx" else None
    if embedded is not None and (differing := embedded.differences(manifest)):
        raise ArtifactError(f"manifest {path.name} disagrees with the manifest inside {artifact.name} in "
                            f"{', '.join(differing)}: the JSON was edited; refusing to run")
    if manifest.source_onnx is not None:
        source = Manifest.from_dict(manifest.source_onnx.manifest, f"source manifest in {path.name}")
        differing = [f for f in ("model", "weights", "precision", "preprocessing", "outputs")
                     if getattr(source, f) != getattr(manifest, f)]
        if differing:
            raise ArtifactError(f"manifest {path.name} disagrees with the ONNX manifest it was built from in "
                                f"{', '.join(differing)}: the JSON was edited; refusing to run")
    return manifest


def _embedded(artifact: Path, hash_graph: bool) -> tuple[Manifest | None, str | None]:
    """The manifest inside an ONNX file (None where it has none) and its graph's sha256 (where asked)."""
    from csfm_edge.runtime.onnx_file import read_onnx_file

    info = read_onnx_file(artifact, hash_graph=hash_graph)
    if EMBEDDED_KEY not in info.metadata:
        return None, info.graph_sha256
    return _parse(info.metadata[EMBEDDED_KEY], f"manifest embedded in {artifact.name}"), info.graph_sha256


def _embedded_only(artifact: Path, path: Path, check_hash: bool) -> Manifest:
    """An artifact without a sidecar: its embedded manifest, checked against its graph's bytes."""
    embedded, reason = None, ""
    if artifact.suffix.lower() == ".onnx":
        try:
            embedded, graph_sha256 = _embedded(artifact, hash_graph=check_hash)
        except ArtifactError as exc:
            reason = f" ({exc})"
    elif artifact.suffix.lower() not in (".plan", ".engine"):
        try:  # an exported graph under another suffix (.bin, .model): say so, rather than "none readable"
            found = _embedded(artifact, hash_graph=False)[0]
        except ArtifactError:
            found = None
        if found is not None:
            raise ArtifactError(f"{artifact.name} is an exported ONNX graph under another suffix: name it "
                                f"{artifact.stem}.onnx (csfm-edge picks the runtime by the suffix)")
    if embedded is None:
        raise ArtifactError(f"{artifact.name} has no manifest {path.name} beside it and none readable inside{reason}: "
                            "refusing to run an artifact that cannot say what it is (re-export it with csfm-edge "
                            "export)")
    if check_hash and embedded.graph_sha256 != graph_sha256:
        raise ArtifactError(f"{artifact.name}: its graph does not match the manifest inside it: file changed or "
                            "corrupt")
    return embedded


def write_manifest(artifact: Path, manifest: Manifest) -> Path:
    """Record the file's name, size and sha256, then write the manifest beside it atomically."""
    path = manifest_path(artifact)
    text = json.dumps(manifest.with_file(artifact).to_dict(), indent=2) + "\n"
    write_atomically(path, text.encode())
    return path


def describe_manifest(manifest: Manifest) -> str:
    """A readable summary of a manifest for ``csfm-edge info``."""
    model, pre = manifest.model, manifest.preprocessing
    lines = []
    if manifest.file is not None:
        f = manifest.file
        lines.append(f"file        {f.name} ({f.bytes / 1e6:.1f} MB, sha256 {f.sha256[:16]}...)")
    lines += [
        f"artifact    {manifest.artifact}, {manifest.precision}",
        f"model       CSFM {model.size} (dim {model.dim}, depth {model.depth}, heads {model.heads}, "
        f"MLP {model.mlp_dim}), head: {model.head_classes or 'none'}",
        f"weights     {manifest.weights.describe()}",
        "inputs      " + ", ".join(f"{n} {t.dtype}{t.dims}" for n, t in manifest.inputs.items()),
        "outputs     " + ", ".join(f"{n} {t.dtype}{t.dims}" for n, t in manifest.outputs.items()),
        f"preprocess  {pre.sample_rate_hz:g} Hz, {pre.window_samples} samples, PPG order {pre.ppg_order}",
    ]
    if manifest.tensorrt is not None and manifest.gpu is not None:
        trt, gpu = manifest.tensorrt, manifest.gpu
        lines.append(f"tensorrt    {trt.library} {trt.version}, target {trt.target}, "
                     f"GPU {gpu.name or '-'} (compute {gpu.compute_capability})")
        lines.append("profiles    " + "; ".join(
            f"{p.name} b{p.batch.min}-{p.batch.max} c{p.channels.min}-{p.channels.max}"
            for p in manifest.profiles or []))
    verification = manifest.verification
    if verification:
        worst = verification.worst
        cosine = f"min cosine {worst.min_cosine:.6f}" if worst.min_cosine is not None \
            else f"min mean cosine {worst.min_mean_cosine:.6f}"
        lines.append(f"verified    {'PASS' if verification.passed else 'FAIL'} on {len(verification.cases)} "
                     f"cases: max abs {worst.max_abs:.2e}, {cosine}")
    if manifest.calibration:
        method = manifest.precision_detail.calibration_method if manifest.precision_detail else None
        lines.append(f"calibrated  {method} on {manifest.calibration.windows} real windows")
    return "\n".join(lines)
