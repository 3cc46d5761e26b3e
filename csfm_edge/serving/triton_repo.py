"""``csfm-edge triton-repo``: a Triton Inference Server model repository from exported artifacts.

One model per lead set, with the lead set's channel ids folded into the graph as a constant: every
request to a model then has the same shape [channels, 2500], which is what Triton's dynamic batcher
needs to batch requests together. ``config.pbtxt`` files follow Triton's model-config schema (the
tests parse them with the protobuf that ships with ``tritonclient``). An optional preprocessing
ensemble (a Python-backend model running ``csfm_edge.runtime.preprocess``) lets clients send raw
signals at their own rate.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csfm_edge.config import WINDOW_SAMPLES
from csfm_edge.errors import ArtifactError, CsfmError
from csfm_edge.fileio import check_output_folder, staging_folder, write_atomically
from csfm_edge.leads import lead_names, lead_set
from csfm_edge.profiles import Profile
from csfm_edge.runtime.manifest import Manifest, TensorInfo, read_manifest, write_manifest
from csfm_edge.runtime.trust import signature_path, signed_files, verify_artifact
from csfm_edge.serving import MAX_BATCH, MAX_QUEUE_DELAY_US
from csfm_edge.spec import SPEC, AxisRange

PLATFORMS = ("onnxruntime_onnx", "tensorrt_plan", "python")
PYTHON_MODELS = Path(__file__).resolve().parent / "triton_models"  # copied into the repository as 1/model.py


@dataclass
class TritonRepoRequest:
    artifacts: list[Path]
    out: Path
    lead_sets: list[str] = field(default_factory=lambda: ["ii+ppg", "12lead"])
    platform: str = "onnxruntime_onnx"
    max_batch: int = MAX_BATCH
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US
    instances: int = 1
    kind: str | None = None  # default: KIND_GPU, but KIND_CPU for python (its Session picks its own device)
    preprocess: bool = False
    force: bool = False
    provider: str | None = None  # --platform python: the Session's backend (default: the best one installed)
    trust: Path | None = None  # artifacts must be signed by this key; python models check it again at load


def model_name(size: str, precision: str, lead_set: str) -> str:
    """Triton model names: letters, digits, '_' and '-'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", f"csfm-{size}-{precision}-{lead_set}")


def fold_channel_ids(source: Path, ids: np.ndarray, target: Path) -> None:
    """The graph with ``channel_ids`` replaced by a constant and ``signal`` fixed to [batch, C, 2500]."""
    import onnx  # export extra; the serving side (model_name, PyTriton) runs without it
    from onnx import numpy_helper

    from csfm_edge.export.embed import set_embedded_manifest

    model = onnx.load(str(source))
    graph = model.graph
    [channel_input] = [i for i in graph.input if i.name == SPEC.channel_ids]
    graph.input.remove(channel_input)
    graph.initializer.append(numpy_helper.from_array(np.asarray(ids, dtype=np.int64), name=SPEC.channel_ids))
    [signal] = [i for i in graph.input if i.name == SPEC.signal]
    dims = signal.type.tensor_type.shape.dim
    dims[1].ClearField("dim_param")
    dims[1].dim_value = len(ids)
    dims[2].ClearField("dim_param")
    dims[2].dim_value = WINDOW_SAMPLES
    set_embedded_manifest(model, None)  # the folded graph is another artifact: its manifest is the sidecar
    onnx.save(model, str(target))


def _output_blocks(outputs: dict[str, TensorInfo]) -> str:
    return ",\n".join(f'  {{ name: "{o}" data_type: TYPE_FP32 dims: [ {t.width} ] }}' for o, t in outputs.items())


def model_config(name: str, platform: str, channels: int, outputs: dict[str, TensorInfo],
                 request: TritonRepoRequest) -> str:
    """``config.pbtxt`` of one lead-set model (dims exclude the batch axis, as Triton's batching wants)."""
    preferred = sorted({b for b in (1, 4, 8, 16, 32, 64) if b <= request.max_batch} - {1}) or [request.max_batch]
    runs_on = 'backend: "python"' if platform == "python" else f'platform: "{platform}"'
    return (f'name: "{name}"\n{runs_on}\nmax_batch_size: {request.max_batch}\n'
            f'input [\n  {{ name: "{SPEC.signal}" data_type: TYPE_FP32 dims: [ {channels}, {WINDOW_SAMPLES} ] }}\n]\n'
            f"output [\n{_output_blocks(outputs)}\n]\n"
            f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
            f"  max_queue_delay_microseconds: {request.max_queue_delay_us}\n}}\n"
            f"instance_group [ {{ count: {request.instances} kind: {instance_kind(request)} }} ]\n")


def instance_kind(request: TritonRepoRequest) -> str:
    return request.kind or ("KIND_CPU" if request.platform == "python" else "KIND_GPU")


def python_parameters(artifact: str, set_name: str, provider: str | None, trust: Path | None = None) -> str:
    """The ``parameters`` block telling ``triton_models/csfm_model.py`` what to open, which leads it serves, and
    the key its signature must verify with (absolute; the server's $CSFM_EDGE_TRUST where none is written)."""
    values = {"artifact": artifact, "lead_set": set_name, "provider": provider or ""}
    if trust is not None:
        values["trust"] = str(Path(trust).resolve())
    return "parameters [\n" + ",\n".join(f'  {{ key: "{k}" value: {{ string_value: "{v}" }} }}'
                                          for k, v in values.items()) + "\n]\n"


def preprocess_config(name: str, channels: int, leads: str, ppg_order: int, request: TritonRepoRequest) -> str:
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: {request.max_batch}\n'
            f'input [\n  {{ name: "raw" data_type: TYPE_FP32 dims: [ {channels}, -1 ] }},\n'
            f'  {{ name: "fs" data_type: TYPE_FP32 dims: [ 1 ] }}\n]\n'
            f'output [\n  {{ name: "{SPEC.signal}" data_type: TYPE_FP32 dims: [ {channels}, {WINDOW_SAMPLES} ] }}\n]\n'
            f'parameters [\n  {{ key: "leads" value: {{ string_value: "{leads}" }} }},\n'
            f'  {{ key: "ppg_order" value: {{ string_value: "{ppg_order}" }} }}\n]\n'
            f"instance_group [ {{ count: {request.instances} kind: KIND_CPU }} ]\n")


def ensemble_config(name: str, preprocess_name: str, model: str, channels: int, outputs: dict[str, TensorInfo],
                    request: TritonRepoRequest) -> str:
    output_maps = "\n".join(f'      output_map {{ key: "{o}" value: "{o}" }}' for o in outputs)
    return (f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {request.max_batch}\n'
            f'input [\n  {{ name: "raw" data_type: TYPE_FP32 dims: [ {channels}, -1 ] }},\n'
            f'  {{ name: "fs" data_type: TYPE_FP32 dims: [ 1 ] }}\n]\n'
            f"output [\n{_output_blocks(outputs)}\n]\n"
            f"ensemble_scheduling {{\n  step [\n"
            f'    {{\n      model_name: "{preprocess_name}"\n      model_version: -1\n'
            f'      input_map {{ key: "raw" value: "raw" }}\n      input_map {{ key: "fs" value: "fs" }}\n'
            f'      output_map {{ key: "{SPEC.signal}" value: "preprocessed" }}\n    }},\n'
            f'    {{\n      model_name: "{model}"\n      model_version: -1\n'
            f'      input_map {{ key: "{SPEC.signal}" value: "preprocessed" }}\n{output_maps}\n    }}\n  ]\n}}\n')


def _check_request(request: TritonRepoRequest) -> None:
    """Everything Triton would refuse only at load, refused here before anything is written."""
    if request.platform not in PLATFORMS:
        raise CsfmError(f"unknown platform {request.platform!r}; choose {', '.join(PLATFORMS)}")
    if request.max_batch < 1 or request.instances < 1:
        raise CsfmError("--max-batch and --instances must be >= 1")
    if request.max_queue_delay_us < 0:
        raise CsfmError(f"--max-queue-delay-us must be >= 0, got {request.max_queue_delay_us}")
    if request.provider is not None:
        from csfm_edge.runtime.backends.options import PROVIDERS

        if request.platform != "python":
            raise CsfmError("--provider applies to --platform python (the other platforms run on Triton's own "
                            "ONNX Runtime or TensorRT backend)")
        if request.provider not in PROVIDERS:
            raise CsfmError(f"unknown --provider {request.provider!r}: choose {', '.join(PROVIDERS)}")
    check_output_folder(request.out)
    if request.out.is_dir() and any(request.out.iterdir()) and not request.force:
        raise CsfmError(f"{request.out} is not empty: pass --force to write into it")
    if request.platform != "python":
        import onnx  # noqa: F401  (the export extra folds the graphs: missing, nothing has been written yet)


def write_repository(request: TritonRepoRequest) -> list[Path]:
    """Write every (artifact, lead set) model, plus preprocessing ensembles when asked; return config paths.

    Everything is written into a hidden staging folder beside the repository and moved in only when whole: a
    failure (or SIGKILL) leaves the repository as it was. With ``force`` the models an earlier ``triton-repo``
    wrote there (``csfm-*``) are replaced, none kept to be served by mistake; other models stay."""
    _check_request(request)
    lead_sets = {name: np.asarray(lead_set(name), dtype=np.int64) for name in request.lead_sets}
    manifests: dict[Path, Manifest] = {}
    for artifact in request.artifacts:
        if artifact.suffix.lower() != ".onnx" and not (request.platform == "python"
                                                       and artifact.suffix.lower() == ".plan"):
            raise ArtifactError(f"{artifact.name}: pass the exported .onnx; Triton models fold the lead set into "
                                "the graph, and TensorRT plans are built from that folded graph on the server")
        verify_artifact(artifact, request.trust)
        manifests[artifact] = read_manifest(artifact)
        if not manifests[artifact].precision_record.portable and request.platform == "tensorrt_plan":
            raise ArtifactError(f"{artifact.name} is an ONNX Runtime CPU graph; TensorRT needs a portable one")
    request.out.parent.mkdir(parents=True, exist_ok=True)
    with staging_folder(request.out.parent, f".{request.out.name}.staging-") as staging:
        configs = _write_models(dataclasses.replace(request, out=staging), manifests, lead_sets)
        request.out.mkdir(exist_ok=True)
        for old in request.out.glob("csfm-*/config.pbtxt"):
            shutil.rmtree(old.parent)
        for model in sorted(staging.iterdir()):
            os.replace(model, request.out / model.name)
    return [request.out / c.relative_to(staging) for c in configs]


def _write_models(request: TritonRepoRequest, manifests: dict[Path, Manifest],
                  lead_sets: dict[str, np.ndarray]) -> list[Path]:
    configs = []
    for artifact, manifest in manifests.items():
        for set_name, ids in lead_sets.items():
            name = model_name(manifest.model.size, manifest.precision, set_name)
            folder = request.out / name
            (folder / "1").mkdir(parents=True, exist_ok=True)
            if request.platform == "onnxruntime_onnx":
                fold_channel_ids(artifact, ids, folder / "1" / "model.onnx")
            elif request.platform == "python":
                _copy_artifact(artifact, folder / "1")
                shutil.copyfile(PYTHON_MODELS / "csfm_model.py", folder / "1" / "model.py")
            else:  # the plan is built on the server's GPU from this folded graph (see BUILD.txt)
                source = folder / "source.onnx"
                fold_channel_ids(artifact, ids, source)
                write_manifest(source, dataclasses.replace(manifest, graph_sha256=None, inputs={
                    SPEC.signal: TensorInfo("float32", ["batch", len(ids), WINDOW_SAMPLES])}))
                profile = Profile("triton", AxisRange(1, min(8, request.max_batch), request.max_batch),
                                  AxisRange(len(ids), len(ids), len(ids)),
                                  AxisRange(WINDOW_SAMPLES, WINDOW_SAMPLES, WINDOW_SAMPLES))
                write_atomically(folder / "BUILD.txt", (
                    "Build the engine on the serving GPU (same TensorRT as the Triton server), e.g. inside the NGC "
                    f"container:\n  csfm-edge build {name}/source.onnx --profile {_profile_flag(profile)} "
                    f"--out {name}/1/model.plan\n").encode())
            config = folder / "config.pbtxt"
            text = model_config(name, request.platform, len(ids), manifest.outputs, request)
            if request.platform == "python":
                text += python_parameters(artifact.name, set_name, request.provider, request.trust)
            write_atomically(config, text.encode())
            configs.append(config)
            if request.preprocess:
                configs += _write_ensemble(request, name, ids, manifest)
    return configs


def _copy_artifact(artifact: Path, folder: Path) -> None:
    """The artifact, its sidecar and its signature, byte for byte under their own names: the model's Session
    checks the manifest, and the signature where a key is configured, exactly as on the exporting machine."""
    for source in (*signed_files(artifact), signature_path(artifact)):
        if source.is_file():
            shutil.copyfile(source, folder / source.name)


def _profile_flag(profile: Profile) -> str:
    b, c = profile.batch, profile.channels
    return f"triton:batch={b.min},{b.opt},{b.max}:channels={c.min}:time={WINDOW_SAMPLES}"


def _write_ensemble(request: TritonRepoRequest, name: str, ids: np.ndarray, manifest: Manifest) -> list[Path]:
    pre_name = f"{name}-preprocess"
    pre = request.out / pre_name
    (pre / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PYTHON_MODELS / "preprocess_model.py", pre / "1" / "model.py")
    ppg_order = manifest.preprocessing.ppg_order
    write_atomically(pre / "config.pbtxt", preprocess_config(pre_name, len(ids), ",".join(lead_names(ids)),
                                                             ppg_order, request).encode())
    ensemble = request.out / f"{name}-raw"
    (ensemble / "1").mkdir(parents=True, exist_ok=True)
    write_atomically(ensemble / "config.pbtxt", ensemble_config(f"{name}-raw", pre_name, name, len(ids),
                                                                manifest.outputs, request).encode())
    return [pre / "config.pbtxt", ensemble / "config.pbtxt"]
