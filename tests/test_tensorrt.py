"""TensorRT: every exported graph through the real ONNX parser and builder (TensorRT for RTX, ahead of
time, no GPU needed), profiles, manifests, compatibility checks and clear errors. Execution needs a GPU."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import quiet

from csfm_edge.config import SIZES
from csfm_edge.errors import ArtifactError, BackendUnavailableError, CsfmError
from csfm_edge.export.tensorrt_build import BuildRequest, build_engine
from csfm_edge.profiles import PRESETS, parse_profile, select_profile
from csfm_edge.runtime.backends.tensorrt import check_engine_fits, plan_buffers
from csfm_edge.runtime.cuda import GpuInfo
from csfm_edge.runtime.manifest import (
    GpuRecord,
    Manifest,
    ModelInfo,
    SourceOnnx,
    TensorRTInfo,
    model_inputs,
    model_outputs,
    preprocessing_record,
    read_manifest,
    untrained_weights,
    write_manifest,
)
from csfm_edge.runtime.tensorrt_lib import load_tensorrt


def rtx_available() -> bool:
    try:
        load_tensorrt("tensorrt_rtx")
    except BackendUnavailableError:
        return False
    return True


needs_rtx = pytest.mark.skipif(not rtx_available(), reason="TensorRT for RTX is not installed (x86-64 Linux/Windows "
                                                           "only): pip install 'csfm-edge[tensorrt-rtx]'")


def gpu_present() -> bool:
    try:
        from csfm_edge.runtime.cuda import cuda_api

        cuda_api().gpu()
    except BackendUnavailableError:
        return False
    return True


def native_engine_problem() -> str | None:
    """Why no native engine can be built and run here (no GPU, no TensorRT, or TensorRT for RTX on a GPU it has
    no target for, such as an H100/H200): doctor's own decision, so tests skip exactly where doctor does."""
    from csfm_edge.doctor import engine_skip_reason, machine

    record = machine()
    return engine_skip_reason("fp32", record["tensorrt"], record["gpu"])


@needs_rtx
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_graph_builds_with_every_preset(tiny_artifacts, tmp_path, precision, preset):
    plan = build_engine(BuildRequest(tiny_artifacts[precision], tmp_path / f"{precision}.{preset}.plan",
                                     [PRESETS[preset]], target="rtx-sm86", progress=quiet))
    manifest = read_manifest(plan)
    assert plan.stat().st_size > 1_000_000
    assert manifest.artifact == "tensorrt_plan" and manifest.precision == precision
    assert manifest.tensorrt.library == "tensorrt_rtx" and manifest.tensorrt.strongly_typed
    gpu = manifest.gpu
    assert (gpu.name, gpu.compute_capability, gpu.ahead_of_time) == (None, "8.6", True)
    assert gpu.hardware_compatibility is None and manifest.tensorrt.tf32 == (precision != "fp32")
    assert manifest.profiles == [PRESETS[preset]]
    assert manifest.source_onnx.sha256 == read_manifest(tiny_artifacts[precision]).file.sha256


@needs_rtx
def test_all_presets_in_one_engine_with_timing_cache(tiny_artifacts, tmp_path):
    cache = tmp_path / "timing.cache"
    plan = build_engine(BuildRequest(tiny_artifacts["int8"], tmp_path / "all.plan", target="rtx-sm89",
                                     timing_cache=cache, progress=quiet))
    manifest = read_manifest(plan)
    assert [p.name for p in manifest.profiles] == list(PRESETS)
    assert manifest.timing_cache == {"path": str(cache), "used": False,
                                        "note": "TensorRT for RTX has no timing cache"}
    with pytest.raises(CsfmError, match="already exists"):
        build_engine(BuildRequest(tiny_artifacts["int8"], plan, target="rtx-sm89", progress=quiet))


@needs_rtx
def test_graph_with_zero_points_is_rejected(tiny_artifacts, tmp_path):
    """ONNX Runtime's dynamic int8 (asymmetric, non-zero zero points) is no graph TensorRT takes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from csfm_edge.export.embed import embed_manifest

    dynamic = tmp_path / "csfm-tiny.dynamic.onnx"
    quantize_dynamic(str(tiny_artifacts["fp32"]), str(dynamic), weight_type=QuantType.QUInt8)
    # labelled int8 (a quantized graph labelled fp32 is refused before TensorRT, as an edited manifest)
    labelled = dataclasses.replace(read_manifest(tiny_artifacts["fp32"]), precision="int8")
    write_manifest(dynamic, embed_manifest(dynamic, labelled))
    with pytest.raises(ArtifactError, match="TensorRT's ONNX parser rejected csfm-tiny.dynamic.onnx"):
        build_engine(BuildRequest(dynamic, tmp_path / "dynamic.plan", target="rtx-sm86", progress=quiet))


def test_profile_parsing_and_selection():
    custom = parse_profile("ecg-cart:batch=1,4,16:channels=12:time=2500")
    assert custom.batch.max == 16 and custom.channels.opt == 12 and custom.time.min == 2500
    assert custom.shapes()["signal"] == ((1, 12, 2500), (4, 12, 2500), (16, 12, 2500))
    for text, message in [("huge", "unknown profile"), ("x:batch=4,2,1", "min <= opt <= max"),
                          ("x:channels=1,2,14", "up to 13"), ("x:time=1000,2510,2510", "multiples of 25"),
                          ("x:depth=3", "unknown"), ("x:batch=a", "integers")]:
        with pytest.raises(CsfmError, match=message):
            parse_profile(text)
    profiles = list(PRESETS.values())
    assert profiles[select_profile(profiles, 1, 2, 2500)].name == "wearable"
    assert profiles[select_profile(profiles, 6, 3, 2500)].name == "bedside"
    assert profiles[select_profile(profiles, 16, 12, 2500)].name == "clinic"
    assert profiles[select_profile(profiles, 40, 12, 2500)].name == "server"
    with pytest.raises(CsfmError, match=r"fits no profile.*rebuild"):
        select_profile(profiles, 65, 2, 2500)
    with pytest.raises(CsfmError, match="fits no profile"):
        select_profile([PRESETS["clinic"]], 1, 2, 2500)


def _plan_manifest(library: str = "tensorrt", version: str = "10.3.0", cc: str = "8.7") -> Manifest:
    config = SIZES["tiny"].with_head(1)
    return Manifest(artifact="tensorrt_plan", precision="fp16", model=ModelInfo.of(config),
                    weights=untrained_weights(0), inputs=model_inputs(), outputs=model_outputs(config),
                    preprocessing=preprocessing_record(3), tensorrt=TensorRTInfo(library, version, True, "native"),
                    gpu=GpuRecord(cc, "Orin"),
                    source_onnx=SourceOnnx("csfm-tiny.fp16.onnx", "0" * 64, {}),
                    profiles=[PRESETS["wearable"], PRESETS["bedside"]])


def test_engine_compatibility_is_checked():
    orin = GpuInfo("Orin", "8.7", 64 << 30)
    check_engine_fits(_plan_manifest(), "tensorrt", "10.3.0", orin)
    with pytest.raises(ArtifactError, match=r"built with tensorrt 10\.3\.0, this machine has tensorrt 10\.7\.0.*"
                                            r"csfm-edge build csfm-tiny\.fp16\.onnx"):
        check_engine_fits(_plan_manifest(), "tensorrt", "10.7.0", orin)
    with pytest.raises(ArtifactError, match=r"compute capability 8\.7 \(Orin\), this GPU is NVIDIA L4 \(8\.9\)"):
        check_engine_fits(_plan_manifest(), "tensorrt", "10.3.0", GpuInfo("NVIDIA L4", "8.9", 24 << 30))


def test_buffers_fit_the_largest_profile_shape():
    buffers = {b.name: b for b in plan_buffers(_plan_manifest())}
    assert buffers["signal"].max_shape == (8, 3, 2500) and buffers["signal"].nbytes == 8 * 3 * 2500 * 4
    assert buffers["channel_ids"].max_shape == (3,) and buffers["channel_ids"].dtype == np.int64
    assert buffers["features"].max_shape == (8, 768) and buffers["logits"].max_shape == (8, 1)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csfm_edge", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_build_without_tensorrt_names_what_to_install(tiny_artifacts, tmp_path):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    for module in ("tensorrt", "tensorrt_rtx_bindings"):  # as if neither library were installed
        (shadow / f"{module}.py").write_text("raise ImportError('not installed')\n")
    env = {"PYTHONPATH": str(shadow), "PATH": "/usr/bin:/bin"}
    done = _cli("build", str(tiny_artifacts["fp16"]), "--target", "rtx-sm86", "--out", str(tmp_path / "x.plan"),
                env=env)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "no TensorRT library (tensorrt_rtx_bindings) is installed" in done.stderr
    assert "pip install 'csfm-edge[tensorrt-rtx]'" in done.stderr and "JetPack" in done.stderr
    assert not (tmp_path / "x.plan").exists()


@pytest.mark.skipif(gpu_present(), reason="checks the message on a machine without a GPU")
def test_native_build_and_plan_run_without_gpu_fail_clearly(tiny_artifacts, tmp_path):
    done = _cli("build", str(tiny_artifacts["fp16"]), "--out", str(tmp_path / "n.plan"))
    assert done.returncode == 1 and "Traceback" not in done.stderr and "--target rtx-smXX" in done.stderr
    if rtx_available():
        plan = build_engine(BuildRequest(tiny_artifacts["fp16"], tmp_path / "w.plan", [PRESETS["wearable"]],
                                         target="rtx-sm86", progress=quiet))
        done = _cli("verify", str(plan))
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "cuda-python" in done.stderr or "no CUDA GPU" in done.stderr


def test_corrupt_plan_is_refused(tiny_artifacts, tmp_path):
    plan = tmp_path / "corrupt.plan"
    plan.write_bytes(b"\x00" * 4096)
    fp16 = read_manifest(tiny_artifacts["fp16"])
    manifest = dataclasses.replace(_plan_manifest(), model=fp16.model, weights=fp16.weights, precision=fp16.precision,
                                   preprocessing=fp16.preprocessing, channel_ids=fp16.channel_ids)
    write_manifest(plan, manifest)
    done = _cli("verify", str(plan))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("csfm-edge verify: error:")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_matches_reference_on_gpu(tiny_artifacts, tmp_path, data_dir, precision):
    problem = native_engine_problem()
    if problem is not None:
        pytest.skip(f"running a TensorRT engine here: {problem}")
    from csfm_edge.export.reverify import reverify

    plan = build_engine(BuildRequest(tiny_artifacts[precision], tmp_path / f"{precision}.plan",
                                     [PRESETS["bedside"], PRESETS["server"]], progress=quiet))
    result = reverify(plan, None, data_dir)
    assert result.passed, result.failures()
    assert json.loads(plan.with_suffix(".json").read_text())["gpu"]["ahead_of_time"] is False


def test_cuda_binding_must_fit_the_driver():
    """cudaDriverGetVersion reports 1000 x major + 10 x minor: JetPack 6's driver 540 says 12060 (CUDA 12.6)."""
    from csfm_edge.runtime.cuda import binding_problem

    assert binding_problem(12, 12060) is None and binding_problem(None, 12060) is None
    problem = binding_problem(13, 12060)  # cuda-python 13 on JetPack 6: "CUDA driver version is insufficient"
    assert "CUDA 12.6" in problem and "cuda-python>=12,<13" in problem
    assert binding_problem(13, 13000) is None and binding_problem(12, 13000) is None


def test_device_identity_tells_orin_modules_apart(tmp_path):
    from csfm_edge.runtime.backends.tensorrt import identity_problem
    from csfm_edge.runtime.cuda import jetson_module

    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")  # as the device tree stores it
    assert jetson_module(model) == "NVIDIA Jetson AGX Orin Developer Kit"
    assert jetson_module(tmp_path / "absent") is None
    agx = GpuRecord("8.7", "Orin (nvgpu)", sm_count=16, jetson_module="NVIDIA Jetson AGX Orin Developer Kit",
                    hardware_compatibility="NONE")
    nano = GpuInfo("Orin (nvgpu)", "8.7", 8 << 30, 8, "NVIDIA Jetson Orin Nano Developer Kit")
    assert "Jetson module NVIDIA Jetson AGX Orin" in identity_problem(agx, nano)
    same = GpuInfo("Orin (nvgpu)", "8.7", 64 << 30, 16, "NVIDIA Jetson AGX Orin Developer Kit")
    assert identity_problem(agx, same) is None
    a100 = GpuRecord("8.0", "NVIDIA A100-SXM4-80GB", sm_count=108, hardware_compatibility="NONE")
    assert "GPU NVIDIA A100-SXM4-80GB" in identity_problem(a100, GpuInfo("NVIDIA A100 80GB PCIe", "8.0", 80 << 30, 108))
    portable = GpuRecord("8.0", "NVIDIA A100-SXM4-80GB", hardware_compatibility="AMPERE_PLUS")
    assert identity_problem(portable, GpuInfo("NVIDIA A100 80GB PCIe", "8.0", 80 << 30, 108)) is None
    rtx = GpuRecord("8.6", None, ahead_of_time=True)  # built ahead of time for any SM86 GPU
    assert identity_problem(rtx, GpuInfo("NVIDIA RTX A4000", "8.6", 16 << 30, 48)) is None


def test_cuda_graph_replay_waits_for_a_plain_enqueue_after_shape_changes():
    from csfm_edge.runtime.backends.tensorrt import launch_plan

    a, b = (0, (1, 2, 2500)), (1, (8, 12, 2500))
    steps, last, captured = [], None, set()
    for key in (a, a, a, b, b, a, a):
        action = launch_plan(key, last, key in captured)
        captured |= {key} if action == "capture" else set()
        steps.append(action)
        last = key
    assert steps == ["plain", "capture", "replay", "plain", "capture", "plain", "replay"]


def test_graph_replay_is_off_where_it_cannot_capture():
    from csfm_edge.runtime.backends.tensorrt import graph_replay_problem

    assert graph_replay_problem("tensorrt", "cuda-python") is None
    assert "PyCUDA" in graph_replay_problem("tensorrt", "pycuda")
    assert "REQUIRE_USER_ALLOCATION" in graph_replay_problem("tensorrt_rtx", "cuda-python")


def test_engine_tensors_are_checked_against_the_manifest():
    from csfm_edge.runtime.backends.tensorrt import engine_tensor_problem

    manifest = _plan_manifest()
    tensors = {"signal": "float32", "channel_ids": "int64", "features": "float32", "logits": "float32"}
    assert engine_tensor_problem(tensors, manifest) is None
    assert engine_tensor_problem({**tensors, "channel_ids": "int32"}, manifest) is None  # TensorRT 8.6's parser
    assert "features is float16" in engine_tensor_problem({**tensors, "features": "float16"}, manifest)
    assert "are not the manifest's" in engine_tensor_problem({"input": "float32", **tensors}, manifest)


def test_verification_of_an_engine_uses_only_shapes_its_profiles_admit(data_dir):
    from csfm_edge.export.verify import verification_cases

    cases, _ = verification_cases(data_dir, [PRESETS["clinic"]])
    assert cases and all(c.signal.shape[1] == 12 and c.signal.shape[2] == 2500 for c in cases)
    wearable, _ = verification_cases(data_dir, [PRESETS["wearable"]])
    assert {c.signal.shape for c in wearable} == {(1, 1, 2500), (1, 2, 2500)}
    assert len(verification_cases(data_dir)[0]) == 20


def test_doctor_runs_here_and_skips_gpu_checks_with_reasons(tiny_artifacts, tmp_path, data_dir):
    report_path = tmp_path / "doctor.json"
    done = _cli("doctor", str(tiny_artifacts["int8"]), "--data", str(data_dir), "--json", str(report_path))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert report["passed"] and checks["csfm-tiny.int8.onnx: onnxruntime"]["status"] == "pass"
    assert checks["csfm-tiny.int8.onnx: tensorrt engine"]["status"] in ("pass", "skipped")
    assert all(c["detail"] for c in report["checks"]) and "gpu" in report["machine"]
    if not gpu_present():
        assert checks["gpu"]["status"] == "skipped" and "no usable NVIDIA GPU" in checks["gpu"]["detail"]
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a graph")
    failed = _cli("doctor", str(broken))
    assert failed.returncode == 1 and "fail" in failed.stdout and "Traceback" not in failed.stderr


# --- GPU decisions, on recorded GPUs (no GPU needed) ---------------------------------------------------

H200 = {"name": "NVIDIA H200", "compute_capability": "9.0", "memory_bytes": 141 << 30, "sm_count": 132,
        "jetson_module": None, "cuda_api": "cuda-python"}
A4000 = {**H200, "name": "NVIDIA RTX A4000", "compute_capability": "8.6", "sm_count": 48}
NO_TENSORRT = {"missing": "no TensorRT library (tensorrt or tensorrt_rtx_bindings) is installed"}


def test_engine_check_skips_where_no_engine_can_be_built():
    """A1-A3: a GPU without TensorRT, a cpu-* graph, and TensorRT for RTX on a GPU it has no target for (Hopper)
    are skips with the reason; the check runs only where an engine can be built for this GPU."""
    from csfm_edge.doctor import engine_skip_reason

    rtx, full = {"library": "tensorrt_rtx", "version": "1.7.1.116"}, {"library": "tensorrt", "version": "11.1.0"}
    assert "no TensorRT: nothing to build with" in engine_skip_reason("fp16", NO_TENSORRT, H200)
    assert "CPU graph" in engine_skip_reason("cpu-int8", full, H200)
    assert "no target for compute capability 9.0" in engine_skip_reason("fp32", rtx, H200)
    assert engine_skip_reason("fp32", rtx, A4000) is None and engine_skip_reason("int8", full, H200) is None
    assert engine_skip_reason("fp32", full, {"missing": "no usable NVIDIA GPU (x)"}) == "no usable NVIDIA GPU (x)"


def test_doctor_on_a_gpu_without_tensorrt_passes(tiny_artifacts, data_dir, monkeypatch):
    """A1, reproduced as the review did: a simulated H200, TensorRT hidden; doctor must pass with skips."""
    from csfm_edge import doctor
    from csfm_edge.runtime import tensorrt_lib

    real = doctor.machine()
    monkeypatch.setattr(doctor, "machine", lambda: {**real, "gpu": H200, "tensorrt": NO_TENSORRT})
    monkeypatch.setattr(tensorrt_lib, "_import", lambda library: None)
    report = doctor.run_doctor([tiny_artifacts["int8"]], data_dir)
    checks = {c.name: c for c in report.checks}
    assert not report.failed, [c for c in report.checks if c.status == "fail"]
    assert checks["gpu"].status == "pass" and checks["gpu"].detail == "NVIDIA H200"
    engine = checks["csfm-tiny.int8.onnx: tensorrt engine"]
    assert engine.status == "skipped" and "no TensorRT" in engine.detail
    assert checks["csfm-tiny.int8.onnx: tensorrt build"].status == "skipped"


def test_gpu_missing_reason_tells_absent_from_unusable():
    """C8: a GPU nvidia-smi sees but Python cannot use is not 'no usable NVIDIA GPU'."""
    from csfm_edge.doctor import gpu_missing_reason
    from csfm_edge.runtime.cuda import MISSING_BINDING

    seen = gpu_missing_reason("NVIDIA H200, 580.65.06, 9.0, 143771 MiB\nNVIDIA H200, 580.65.06, 9.0, 143771 MiB",
                              MISSING_BINDING)
    assert seen.startswith("an NVIDIA GPU is present (NVIDIA H200) but CUDA is not usable from Python: no CUDA binding")
    assert "tensorrt-cu13" in seen
    assert gpu_missing_reason(None, "no CUDA GPU here") == "no usable NVIDIA GPU (no CUDA GPU here)"


def test_native_build_needs_a_library_with_a_target_for_the_gpu():
    """A3: TensorRT for RTX targets SM75/80/86/89/120/121 only; the install hint names cu13 for R580 (C10)."""
    from csfm_edge.runtime.tensorrt_lib import INSTALL_HINT, native_build_problem

    assert native_build_problem("tensorrt_rtx", "8.6") is None and native_build_problem("tensorrt", "9.0") is None
    for cc in ("9.0", "10.0", "8.7"):  # H100/H200, B200, Jetson Orin
        assert f"no target for compute capability {cc}" in native_build_problem("tensorrt_rtx", cc)
    assert "tensorrt-cu13" in INSTALL_HINT and "R580" in INSTALL_HINT and "tensorrt-cu12" in INSTALL_HINT


def test_hardware_compatible_engines_are_judged_by_their_level_first():
    """B2: an AMPERE_PLUS engine built on an A100 (8.0) runs on an H100 (9.0); not on a Turing T4."""
    from csfm_edge.runtime.backends.tensorrt import identity_problem

    plus = GpuRecord("8.0", "NVIDIA A100-SXM4-80GB", sm_count=108, hardware_compatibility="AMPERE_PLUS")
    assert identity_problem(plus, GpuInfo("NVIDIA H100 80GB HBM3", "9.0", 80 << 30, 132)) is None
    assert "Ampere or later" in identity_problem(plus, GpuInfo("Tesla T4", "7.5", 16 << 30, 40))
    same = GpuRecord("8.0", "NVIDIA A100-SXM4-80GB", hardware_compatibility="SAME_COMPUTE_CAPABILITY")
    assert identity_problem(same, GpuInfo("NVIDIA A100 80GB PCIe", "8.0", 80 << 30, 108)) is None
    assert "compute capability 8.0" in identity_problem(same, GpuInfo("NVIDIA H100", "9.0", 80 << 30, 132))
    plain = GpuRecord("8.0", "NVIDIA A100-SXM4-80GB", hardware_compatibility="NONE")
    assert "compute capability 8.0" in identity_problem(plain, GpuInfo("NVIDIA H100", "9.0", 80 << 30, 132))


def test_engine_profiles_are_compared_with_the_manifest():
    """C9: the deserialized engine's profile count and shapes against the manifest's."""
    from csfm_edge.runtime.backends.tensorrt import engine_profile_problem

    profiles = [PRESETS["wearable"], PRESETS["bedside"]]
    as_engine = [{name: [list(s) for s in shapes] for name, shapes in p.shapes().items()} for p in profiles]
    assert engine_profile_problem(as_engine, profiles) is None
    assert "has 1 optimization profiles, the manifest lists 2" in engine_profile_problem(as_engine[:1], profiles)
    swapped = engine_profile_problem(as_engine[::-1], profiles)
    assert "profile 0 (wearable) of the engine has signal shapes" in swapped


def test_profile_switch_failure_is_one_clear_error():
    """TensorRT 10/11's binding raises RuntimeError where the switch fails, older ones return False."""
    from csfm_edge.runtime.backends.tensorrt import switch_profile

    class Context:
        def __init__(self, outcome):
            self.outcome = outcome

        def set_optimization_profile_async(self, index, stream):
            if isinstance(self.outcome, Exception):
                raise self.outcome
            return self.outcome

    switch_profile(Context(True), 1, 0, [])
    with pytest.raises(ArtifactError, match="profile 1: Error in set optimization profile"):
        switch_profile(Context(RuntimeError("Error in set optimization profile.")), 1, 0, [])
    with pytest.raises(ArtifactError, match="profile 2: bad index"):
        switch_profile(Context(False), 2, 0, ["bad index"])


def test_timing_cache_that_tensorrt_cannot_read_is_not_used():
    """create_timing_cache returns None for bytes it cannot parse (Polygraphy checks it); set_timing_cache
    False for another device's cache: either way no cache, and the caller builds without it."""
    from csfm_edge.export.tensorrt_build import attach_timing_cache

    class Config:
        def __init__(self, readable: bool, accepted: bool):
            self.readable, self.accepted, self.attached = readable, accepted, None

        def create_timing_cache(self, data):
            return ("cache", data) if self.readable or data == b"" else None

        def set_timing_cache(self, cache, ignore_mismatch):
            assert cache is not None and ignore_mismatch is False
            self.attached = cache
            return self.accepted or cache[1] == b""

    ok = Config(True, True)
    assert attach_timing_cache(ok, b"abc") == ("cache", b"abc") and ok.attached == ("cache", b"abc")
    assert attach_timing_cache(Config(False, True), b"garbage") is None
    assert attach_timing_cache(Config(True, False), b"other device") is None
    assert attach_timing_cache(Config(False, False), b"") == ("cache", b"")


def test_gpu_record_is_the_cuda_device_not_the_first(tmp_path, monkeypatch):
    """B1: nvidia-smi is asked for the GPU CUDA computes on (by PCI bus id), not its first one."""
    from csfm_edge.bench import machine

    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\ncase "$1" in\n  --id=00000000:C1:00.0) echo "NVIDIA H200, 143771, 580.65.06, 9.0, '
                    '1980, 1980, 700.00, 00000000:C1:00.0";;\n  --id=*) exit 6;;\n  *) echo "NVIDIA A2, 15356, '
                    '580.65.06, 8.6, 1770, 210, 60.00, 00000000:01:00.0";;\nesac\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.setattr(machine, "_cuda_pci_bus_id", lambda: "00000000:C1:00.0")
    record = machine.gpu_record()
    assert record["name"] == "NVIDIA H200" and record["power_limit_w"] == "700.00"
    assert record["selected_by"] == "CUDA's device (00000000:C1:00.0)"
    monkeypatch.setattr(machine, "_cuda_pci_bus_id", lambda: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # an index: CUDA's order is not nvidia-smi's
    record = machine.gpu_record()
    assert record["name"] == "NVIDIA A2" and "not identified" in record["selected_by"]
    assert machine.smi_device_id(None, "GPU-8f1e, GPU-11aa") == "GPU-8f1e"
    assert machine.smi_device_id(None, "MIG-1234") is None and machine.smi_device_id(None, None) is None


# --- the CUDA layer and the engine's lifecycle, on fake bindings (the real ones need a GPU) ------------


class FakeCudart:
    """cuda.bindings.runtime as far as CudaPython uses it: (error, value...) tuples, 0 = cudaSuccess."""

    cudaStreamNonBlocking = 1

    class cudaStreamCaptureMode:  # noqa: N801  (the binding's name)
        cudaStreamCaptureModeThreadLocal = 2

    def __init__(self, begin: int = 0, end: int = 0, instantiate: int = 0, driver: int = 13000):
        self.begin, self.end, self.instantiate, self.driver = begin, end, instantiate, driver
        self.calls: list = []

    def cudaDriverGetVersion(self):  # noqa: N802
        return 0, self.driver

    def cudaGetErrorString(self, error):  # noqa: N802
        return 0, b"fake failure"

    def cudaStreamCreateWithFlags(self, flags):  # noqa: N802
        self.calls.append(("stream", flags))
        return 0, 7

    def cudaStreamBeginCapture(self, stream, mode):  # noqa: N802
        return (self.begin,)

    def cudaStreamEndCapture(self, stream):  # noqa: N802
        self.calls.append("end capture")
        return (self.end, None) if self.end else (0, "graph")

    def cudaGraphInstantiate(self, graph, flags):  # noqa: N802
        return (self.instantiate, None) if self.instantiate else (0, "graph exec")

    def cudaGraphDestroy(self, graph):  # noqa: N802
        self.calls.append(("destroy", graph))
        return (0,)

    def cudaGetLastError(self):  # noqa: N802
        self.calls.append("clear error")
        return (0,)


def test_stream_is_non_blocking():
    """C6: legacy-default-stream work of another thread must not invalidate a capture on our stream."""
    from csfm_edge.runtime.cuda import CudaPython

    rt = FakeCudart()
    assert CudaPython(rt).stream() == 7 and rt.calls == [("stream", FakeCudart.cudaStreamNonBlocking)]


@pytest.mark.parametrize(("fake", "enqueued", "expected", "calls"), [
    (FakeCudart(), True, "graph exec", ["end capture", ("destroy", "graph")]),
    (FakeCudart(), False, None, ["end capture", ("destroy", "graph"), "clear error"]),  # TensorRT failed inside
    (FakeCudart(end=901), True, None, ["end capture", "clear error"]),  # cudaErrorStreamCaptureInvalidated
    (FakeCudart(instantiate=1), True, None, ["end capture", ("destroy", "graph"), "clear error"]),
])
def test_failed_capture_is_ended_destroyed_and_cleared(fake, enqueued, expected, calls):
    """C2, as trtexec's endCaptureOnError: the capture always ends, a captured graph is destroyed, the sticky
    error is cleared, and no graph is instantiated from a failed enqueue."""
    from csfm_edge.runtime.cuda import CudaPython

    assert CudaPython(fake).end_capture(7, enqueued) == expected
    assert fake.calls == calls


def test_refused_capture_falls_back_instead_of_raising():
    from csfm_edge.runtime.cuda import CudaPython

    fake = FakeCudart(begin=900)
    assert CudaPython(fake).begin_capture(7) is False and fake.calls == ["clear error"]
    assert CudaPython(FakeCudart()).begin_capture(7) is True


def test_no_driver_is_said_plainly(monkeypatch):
    """C7: cudaDriverGetVersion reports (cudaSuccess, 0) without a driver: no 'cuda-python>=0,<1' advice."""
    from csfm_edge.runtime import cuda

    assert cuda.binding_problem(13, 0) == cuda.NO_DRIVER
    monkeypatch.setattr(cuda, "_cudart", lambda: FakeCudart(driver=0))
    with pytest.raises(BackendUnavailableError, match="no NVIDIA driver is loaded") as error:
        cuda.cuda_api()
    assert "cuda-python>=0" not in str(error.value)
    monkeypatch.setattr(cuda, "_cudart", lambda: None)
    monkeypatch.setattr(cuda, "PyCuda", lambda: (_ for _ in ()).throw(ImportError("no pycuda")))
    with pytest.raises(BackendUnavailableError, match="no CUDA binding for Python.*tensorrt-cu13"):
        cuda.cuda_api()


class FakeCuda:
    """The CUDA layer's interface: records what is alive, and whether each call ran in the active context."""

    name = "cuda-python"

    def __init__(self, capture: bool = True):
        self.capture, self.depth = capture, 0
        self.alive: set = set()
        self.outside_context: list[str] = []
        self.events_made = 0
        self._next = 100

    def _new(self, kind: str):
        if self.depth == 0:
            self.outside_context.append(kind)
        self._next += 1
        handle = (kind, self._next)
        self.alive.add(handle)
        return handle

    def gpu(self):
        return GpuInfo("Orin", "8.7", 64 << 30)

    def stream(self):
        return self._new("stream")

    def device_alloc(self, nbytes):
        return self._new("device")

    def host_alloc(self, nbytes):
        return self._new("host")

    def event(self):
        self.events_made += 1
        return self._new("event")

    def record(self, event, stream):
        pass

    def elapsed_ms(self, start, end):
        return 1.5

    def synchronize(self, stream):
        pass

    def begin_capture(self, stream):
        return self.capture

    def end_capture(self, stream, enqueued=True):
        return self._new("graph") if enqueued else None

    def launch_graph(self, graph, stream):
        pass

    def activate(self):
        fake = self

        class Active:
            def __enter__(self):
                fake.depth += 1

            def __exit__(self, *exc):
                fake.depth -= 1

        return Active()

    def free(self, device, host, stream=None, graphs=(), events=()):
        for handle in (*device, *host, *graphs, *events, *([stream] if stream else [])):
            self.alive.remove(handle)


class FakeEngine:
    def __init__(self, manifest: Manifest, refuse_address: str | None = None, profiles=None):
        self.names = [*manifest.inputs, *manifest.outputs]
        self.dtypes = {name: t.dtype for name, t in {**manifest.inputs, **manifest.outputs}.items()}
        self.profiles = manifest.profiles if profiles is None else profiles
        self.refuse_address = refuse_address
        self.num_io_tensors = len(self.names)
        self.num_optimization_profiles = len(self.profiles)

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_dtype(self, name):
        return type("DataType", (), {"name": {"float32": "FLOAT", "int64": "INT64"}[self.dtypes[name]]})

    def get_tensor_profile_shape(self, name, index):
        return list(self.profiles[index].shapes()[name])

    def create_execution_context(self):
        engine = self

        class Context:
            enqueued = 0

            def set_tensor_address(self, name, address):
                return name != engine.refuse_address

            def execute_async_v3(self, stream):
                Context.enqueued += 1
                return True

            def get_tensor_shape(self, name):
                return (1, 2, 2500)

        return Context()


def _fake_backend(monkeypatch, cuda: FakeCuda, engine: FakeEngine, use_cuda_graph: bool = False):
    from types import SimpleNamespace

    from csfm_edge.runtime.backends import tensorrt as backend_module

    logger = SimpleNamespace(errors=[])
    module = SimpleNamespace(Runtime=lambda log: SimpleNamespace(deserialize_cuda_engine=lambda data: engine))
    trt = SimpleNamespace(library="tensorrt", version="10.3.0", module=module, logger=lambda: logger)
    monkeypatch.setattr(backend_module, "load_tensorrt", lambda library: trt)
    monkeypatch.setattr(backend_module, "cuda_api", lambda: cuda)
    from csfm_edge.runtime.backends import BackendOptions

    return backend_module.TensorRTBackend(__file__, _plan_manifest(), BackendOptions(cuda_graph=use_cuda_graph))


def test_engine_lifecycle_releases_everything(monkeypatch):
    """C1 two events for any number of timings, destroyed in close; C4 allocations in the active context;
    C5 close waits for a running inference; a second close does nothing."""
    import threading

    cuda = FakeCuda()
    backend = _fake_backend(monkeypatch, cuda, FakeEngine(_plan_manifest()))
    assert cuda.outside_context == [] and len(cuda.alive) == 9  # stream + 4 device + 4 host buffers
    backend.active_profile = 0
    assert [backend.gpu_compute_ms() for _ in range(50)] == [1.5] * 50 and cuda.events_made == 2
    backend._lock.acquire()  # an inference in flight
    closer = threading.Thread(target=backend.close)
    closer.start()
    closer.join(timeout=0.3)
    assert closer.is_alive() and len(cuda.alive) == 11  # close waits for it
    backend._lock.release()
    closer.join(timeout=5)
    assert cuda.alive == set() and backend.context is None
    backend.close()


def test_refusal_halfway_through_construction_leaks_nothing(monkeypatch):
    """C3: TensorRT refusing a tensor address after the buffers and stream exist releases them all."""
    cuda = FakeCuda()
    with pytest.raises(ArtifactError, match="refused the address of tensor logits"):
        _fake_backend(monkeypatch, cuda, FakeEngine(_plan_manifest(), refuse_address="logits"))
    assert cuda.alive == set()


def test_engine_with_other_profiles_than_its_manifest_is_refused(monkeypatch):
    """C9 in the backend: checked right after deserializing, before anything is allocated."""
    cuda = FakeCuda()
    with pytest.raises(ArtifactError, match="1 optimization profiles, the manifest lists 2.*rebuild"):
        _fake_backend(monkeypatch, cuda, FakeEngine(_plan_manifest(), profiles=[PRESETS["bedside"]]))
    assert cuda.alive == set()


def test_failed_capture_runs_plainly_and_is_not_retried(monkeypatch):
    """C2 in the backend: a capture CUDA refuses falls back to a plain enqueue for that shape, for good."""
    cuda = FakeCuda(capture=False)
    backend = _fake_backend(monkeypatch, cuda, FakeEngine(_plan_manifest()), use_cuda_graph=True)
    backend.active_profile = 0
    for _ in range(4):
        backend.execute_only()
    assert backend.graphs == {} and len(backend.uncapturable) == 1
    assert type(backend.context).enqueued == 4  # every inference ran, none twice
    backend.close()
    assert cuda.alive == set()
