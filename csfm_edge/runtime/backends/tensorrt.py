"""TensorRT backend: a deserialized engine, pinned host and device buffers, one stream, async copies.

Before anything runs, the engine's manifest is checked against the TensorRT library and the GPU of
this machine; a mismatch is refused with what to rebuild, since an engine is tied to one TensorRT
version and one GPU architecture. Buffers are sized once for the largest shape of every profile.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csfm_edge.errors import ArtifactError
from csfm_edge.profiles import Profile, select_profile
from csfm_edge.runtime.cuda import GpuInfo, cuda_api, host_array
from csfm_edge.runtime.manifest import Manifest
from csfm_edge.runtime.tensorrt_lib import load_tensorrt
from csfm_edge.spec import SPEC

DTYPES = {"float32": np.float32, "int64": np.int64}


@dataclass(frozen=True)
class Buffer:
    name: str
    max_shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.max_shape)) * np.dtype(self.dtype).itemsize


def plan_buffers(manifest: Manifest) -> list[Buffer]:
    """One buffer per engine input/output, sized for the largest shape any profile admits."""
    profiles = engine_profiles(manifest)
    batch = max(p.batch.max for p in profiles)
    channels = max(p.channels.max for p in profiles)
    time = max(p.time.max for p in profiles)
    sizes = {"batch": batch, "channels": channels, "time": time}
    buffers = []
    for tensors in (manifest.inputs, manifest.outputs):
        for name, tensor in tensors.items():
            shape = tuple(sizes[d] if isinstance(d, str) else int(d) for d in tensor.dims)
            buffers.append(Buffer(name, shape, np.dtype(DTYPES[tensor.dtype])))
    return buffers


def engine_profiles(manifest: Manifest) -> list[Profile]:
    """The engine's optimization profiles; a plan manifest without its build record is refused."""
    if manifest.tensorrt is None or manifest.gpu is None or not manifest.profiles:
        raise ArtifactError("manifest of a TensorRT engine lacks its tensorrt, gpu or profiles field")
    return manifest.profiles


def check_engine_fits(manifest: Manifest, library: str, version: str, gpu: GpuInfo) -> None:
    """Refuse an engine built by another TensorRT or for another GPU architecture, saying what to rebuild."""
    engine_profiles(manifest)
    built, wanted = manifest.tensorrt, manifest.gpu
    source = manifest.source_onnx.name if manifest.source_onnx else "the ONNX file"
    rebuild = f"rebuild it here with: csfm-edge build {source}"
    if built.library != library or built.version != version:
        raise ArtifactError(f"engine built with {built.library} {built.version}, this machine has {library} "
                            f"{version}; engines are tied to one TensorRT version: {rebuild}")
    if wanted.compute_capability != gpu.compute_capability:
        raise ArtifactError(f"engine built for compute capability {wanted.compute_capability} "
                            f"({wanted.name or built.target}), this GPU is {gpu.name} "
                            f"({gpu.compute_capability}): {rebuild}")


class TensorRTBackend:
    """``run(feed)`` through ``execute_async_v3``; optional CUDA-graph replay for repeated shapes."""

    name = "tensorrt"

    def __init__(self, plan: Path, manifest: Manifest, use_cuda_graph: bool = False):
        engine_profiles(manifest)  # a plan's manifest must say how and for what it was built
        self.trt = load_tensorrt(manifest.tensorrt.library)
        self.cuda = cuda_api()
        self.gpu = self.cuda.gpu()
        check_engine_fits(manifest, self.trt.library, self.trt.version, self.gpu)
        self.plan = Path(plan)
        self.logger = self.trt.logger()
        self.runtime = self.trt.module.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            why = self.logger.errors[-1] if self.logger.errors else "unknown reason"
            raise ArtifactError(f"{self.plan.name} is not a loadable engine (corrupt or incompatible): {why}")
        self.context = self.engine.create_execution_context()
        self.profiles = manifest.profiles
        self.input_names = list(manifest.inputs)
        self.output_names = manifest.output_names
        self._lock = threading.Lock()  # one context, stream and buffer set: one inference at a time
        self.stream = self.cuda.stream()
        self.buffers = {b.name: b for b in plan_buffers(manifest)}
        self.device = {name: self.cuda.device_alloc(b.nbytes) for name, b in self.buffers.items()}
        self.host = {name: self.cuda.host_alloc(b.nbytes) for name, b in self.buffers.items()}
        for name, address in self.device.items():
            self.context.set_tensor_address(name, address)
        self.active_profile = -1
        self.use_cuda_graph = use_cuda_graph and hasattr(self.cuda, "begin_capture")
        self.graphs: dict[tuple, object] = {}

    def describe(self) -> dict:
        return {"backend": self.name, "provider": f"{self.trt.library} {self.trt.version}",
                "gpu": self.gpu.name, "compute_capability": self.gpu.compute_capability,
                "cuda_graph": self.use_cuda_graph, "file": self.plan.name}

    def _execute(self, key: tuple) -> None:
        if not self.use_cuda_graph:
            if not self.context.execute_async_v3(self.stream):
                raise ArtifactError("TensorRT execution failed: " + "; ".join(self.logger.errors[-2:]))
            return
        if key not in self.graphs:  # run once after a shape change, then capture the same launch
            self.context.execute_async_v3(self.stream)
            self.cuda.begin_capture(self.stream)
            self.context.execute_async_v3(self.stream)
            self.graphs[key] = self.cuda.end_capture(self.stream)
        self.cuda.launch_graph(self.graphs[key], self.stream)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            return self._run(SPEC.feed(feed[SPEC.signal], feed[SPEC.channel_ids]))

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        signal, ids = feed[SPEC.signal], feed[SPEC.channel_ids]
        batch, channels, time = signal.shape
        profile = select_profile(self.profiles, batch, channels, time)
        if profile != self.active_profile:
            self.context.set_optimization_profile_async(profile, self.stream)
            self.active_profile = profile
        self.context.set_input_shape(SPEC.signal, signal.shape)
        self.context.set_input_shape(SPEC.channel_ids, ids.shape)
        for name, array in feed.items():
            host_array(self.host[name], array.shape, array.dtype)[...] = array
            self.cuda.copy_to_device(self.device[name], self.host[name], array.nbytes, self.stream)
        self._execute((profile, signal.shape))
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = host_array(self.host[name], shape, self.buffers[name].dtype)
            self.cuda.copy_to_host(self.host[name], self.device[name], out.nbytes, self.stream)
            outputs[name] = out
        self.cuda.synchronize(self.stream)
        return {name: array.copy() for name, array in outputs.items()}

    def execute_only(self) -> None:
        """Re-run the last shape with its inputs already on the GPU: compute time without host copies."""
        self._execute((self.active_profile, tuple(self.context.get_tensor_shape(SPEC.signal))))
        self.cuda.synchronize(self.stream)

    def close(self) -> None:
        if getattr(self, "device", None):
            self.cuda.free(list(self.device.values()), list(self.host.values()))
            self.device, self.host = {}, {}
        self.context = self.engine = None
