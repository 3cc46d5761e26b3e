"""``csfm-edge build``: a serialized TensorRT engine from an exported ONNX graph, with its manifest.

Strongly typed networks (precision from the FP16/INT8 graph), one optimization profile per preset,
an optional timing cache that is read before and written after the build. ``--target rtx-smXX``
compiles ahead of time with TensorRT for RTX, without a GPU; ``native`` builds for the GPU present.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from csfm_edge.environment import installed_versions
from csfm_edge.errors import ArtifactError, BackendUnavailableError, CsfmError
from csfm_edge.fileio import sha256_of, write_atomically
from csfm_edge.profiles import PRESETS, Profile
from csfm_edge.progress import console_progress
from csfm_edge.runtime.manifest import GpuRecord, SourceOnnx, TensorRTInfo, now, read_manifest, write_manifest
from csfm_edge.runtime.tensorrt_lib import RTX, library_for_target, load_tensorrt, native_build_problem


@dataclass
class BuildRequest:
    onnx: Path
    out: Path | None = None
    profiles: list[Profile] = field(default_factory=lambda: list(PRESETS.values()))
    target: str = "native"
    workspace_mb: int | None = None  # None: TensorRT's default (the device's memory)
    timing_cache: Path | None = None
    force: bool = False
    progress: Callable[[str], None] = console_progress

    def plan_path(self) -> Path:
        suffix = "" if self.target == "native" else f".{self.target}"
        return self.out or self.onnx.with_name(f"{self.onnx.stem}{suffix}.plan")


def _gpu_record(target: str) -> GpuRecord:
    """The GPU the engine is for: the one present (native) or the RTX compute capability named."""
    if target != "native":
        sm = target.removeprefix("rtx-sm")
        return GpuRecord(f"{sm[:-1]}.{sm[-1]}", None, ahead_of_time=True)
    from csfm_edge.runtime.cuda import cuda_api

    try:
        gpu = cuda_api().gpu()
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(f"a native build needs this machine's GPU ({exc}); without one, build ahead "
                                      "of time for an RTX GPU with --target rtx-smXX (TensorRT for RTX)") from None
    return GpuRecord(gpu.compute_capability, gpu.name, sm_count=gpu.sm_count, memory_bytes=gpu.memory_bytes,
                     jetson_module=gpu.jetson_module)


def _timing_cache_record(path: Path | None, used: bool, rejected: bool = False) -> dict | None:
    if path is None:
        return None
    if rejected:
        return {"path": str(path), "used": False, "note": "rejected: made on another device or TensorRT; kept as is"}
    if not used:
        return {"path": str(path), "used": False, "note": "TensorRT for RTX has no timing cache"}
    return {"path": str(path), "used": True, "sha256": sha256_of(path)}


def attach_timing_cache(config, cache_bytes: bytes):
    """Give the builder the timing cache made from ``cache_bytes`` and return it (the caller keeps it alive
    until the build ends, as TensorRT requires); None where TensorRT cannot read the bytes
    (``create_timing_cache`` returns None, as Polygraphy checks) or refuses the cache (``set_timing_cache``
    is False: made on another device or TensorRT)."""
    cache = config.create_timing_cache(cache_bytes)
    return cache if cache is not None and config.set_timing_cache(cache, False) else None


def build_engine(request: BuildRequest) -> Path:
    """Parse, configure, build and write the plan and its manifest; return the plan's path."""
    onnx_manifest = read_manifest(request.onnx)
    plan = request.plan_path()
    if plan.exists() and not request.force:
        raise CsfmError(f"{plan} already exists: pass --force to overwrite")
    if not request.profiles:
        raise CsfmError("no optimization profile given")
    trt = load_tensorrt(library_for_target(request.target))
    gpu = _gpu_record(request.target)
    if request.target == "native" and native_build_problem(trt.library, gpu.compute_capability):
        raise BackendUnavailableError(native_build_problem(trt.library, gpu.compute_capability))
    say = request.progress
    say(f"[build] {request.onnx.name} with {trt.library} {trt.version} for "
        f"{gpu.name or 'compute capability ' + gpu.compute_capability}, profiles "
        + ", ".join(p.name for p in request.profiles))

    logger = trt.logger(ignore=trt.ahead_of_time_noise(request.target))
    builder = trt.module.Builder(logger)
    network = builder.create_network(trt.network_flags())
    parser = trt.module.OnnxParser(network, logger)
    if not parser.parse_from_file(str(request.onnx)):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors)) or \
            "; ".join(logger.errors)
        raise ArtifactError(f"TensorRT's ONNX parser rejected {request.onnx.name}: {errors}")

    config = builder.create_builder_config()
    if request.workspace_mb is not None:
        config.set_memory_pool_limit(trt.module.MemoryPoolType.WORKSPACE, request.workspace_mb << 20)
    trt.weakly_typed_precision_flags(config, onnx_manifest.precision)
    tf32 = trt.allow_tf32(config, onnx_manifest.precision)
    trt.set_target(config, request.target)
    for profile in request.profiles:
        optimization_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.shapes().items():
            optimization_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(optimization_profile)
    use_cache = request.timing_cache is not None and trt.library != RTX  # RTX tunes kernels at run time
    rejected = False
    if use_cache:
        cache_bytes = request.timing_cache.read_bytes() if request.timing_cache.exists() else b""
        timing_cache = attach_timing_cache(config, cache_bytes)
        rejected = timing_cache is None
        if rejected:  # another device's or TensorRT's cache, or not one: build without it, leave the file alone
            say(f"[build] timing cache {request.timing_cache} was made for another device or TensorRT, or is not a "
                "timing cache: not used, not overwritten")
            timing_cache = attach_timing_cache(config, b"")
            if timing_cache is None:
                raise BackendUnavailableError("TensorRT could not create an empty timing cache; build without "
                                              "--timing-cache")
    elif request.timing_cache is not None:
        say("[build] TensorRT for RTX has no timing cache: --timing-cache is ignored")

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        why = logger.errors[-1] if logger.errors else "see its log above"
        hint = " (raise --workspace or narrow the profiles)" if "OutOfMemory" in why else ""
        raise BackendUnavailableError(f"TensorRT could not build {request.onnx.name}: {why}{hint}")
    write_atomically(plan, bytes(serialized))
    if use_cache and not rejected:
        write_atomically(request.timing_cache, bytes(config.get_timing_cache().serialize()))
    source = dataclasses.replace(onnx_manifest, file=None).to_dict()
    write_manifest(plan, dataclasses.replace(
        onnx_manifest, artifact="tensorrt_plan", created=now(),
        tensorrt=TensorRTInfo(trt.library, trt.version, bool(trt.network_flags()), request.target,
                              request.workspace_mb, tf32),
        gpu=dataclasses.replace(gpu, hardware_compatibility=trt.hardware_compatibility(config)),
        profiles=list(request.profiles), tools=installed_versions(),
        source_onnx=SourceOnnx(request.onnx.name, sha256_of(request.onnx), source),
        build_seconds=round(seconds, 2),
        timing_cache=_timing_cache_record(request.timing_cache, use_cache, rejected),
        verification=None, calibration=None))
    say(f"[build] wrote {plan.name} ({plan.stat().st_size / 1e6:.1f} MB) in {seconds:.1f} s")
    return plan
