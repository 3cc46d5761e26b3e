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

from csfm_edge.errors import ArtifactError, BackendUnavailableError
from csfm_edge.profiles import Profile, select_profile
from csfm_edge.runtime.backends.options import BackendOptions
from csfm_edge.runtime.cuda import GpuInfo, cuda_api, host_array
from csfm_edge.runtime.manifest import Manifest
from csfm_edge.runtime.tensorrt_lib import RTX, load_tensorrt
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
    problem = identity_problem(wanted, gpu)
    if problem is not None:
        raise ArtifactError(f"engine built for {problem}: {rebuild}")


def launch_plan(key: tuple, last_key: tuple | None, captured: bool) -> str:
    """How to run this inference with CUDA graphs: ``plain`` after any shape or profile change (TensorRT
    applies them on the next enqueue, which a replayed graph skips), then ``capture`` once, then ``replay``."""
    if key != last_key:
        return "plain"
    return "replay" if captured else "capture"


def graph_replay_problem(library: str, cuda_api: str) -> str | None:
    """Why CUDA-graph replay is off for this engine, or None when it can be used.

    PyCUDA has no stream capture here; TensorRT for RTX captures only engines built with
    ``REQUIRE_USER_ALLOCATION`` and run on user-managed device memory, which csfm-edge's builds do not use."""
    if cuda_api != "cuda-python":
        return "CUDA-graph replay needs cuda-python (PyCUDA has no stream capture here)"
    if library == RTX:
        return "TensorRT for RTX captures only engines built with REQUIRE_USER_ALLOCATION; these run plainly"
    return None


TRT_DTYPES = {"FLOAT": "float32", "INT64": "int64", "INT32": "int32", "HALF": "float16"}


def engine_tensor_problem(engine_tensors: dict[str, str], manifest: Manifest) -> str | None:
    """The engine's own I/O tensors against the manifest's; an int32 ``channel_ids`` (TensorRT 8.6's parser
    turns INT64 inputs into INT32) is fed as int32, anything else that differs is refused."""
    expected = {name: t.dtype for name, t in {**manifest.inputs, **manifest.outputs}.items()}
    if set(engine_tensors) != set(expected):
        return f"engine tensors {sorted(engine_tensors)} are not the manifest's {sorted(expected)}"
    for name, dtype in engine_tensors.items():
        if dtype != expected[name] and not (name == SPEC.channel_ids and dtype == "int32"):
            return f"engine tensor {name} is {dtype}, the manifest says {expected[name]}"
    return None


def _capability(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def identity_problem(built, here: GpuInfo) -> str | None:
    """Why an engine built for ``built`` (the manifest's GPU record) may not run on ``here``, or None.

    A hardware-compatible engine is judged by its level first: ``AMPERE_PLUS`` runs on any GPU of compute
    capability 8.0 or later (an engine built on an A100 runs on an H100), ``SAME_COMPUTE_CAPABILITY`` on any
    of the same capability. Otherwise compute capability alone does not tell AGX Orin, Orin NX and Orin Nano
    apart (all 8.7), and TensorRT refuses "an engine plan file across different models of devices".
    """
    level = built.hardware_compatibility
    if level == "AMPERE_PLUS":
        if _capability(here.compute_capability) < (8, 0):
            return f"Ampere or later (hardware compatibility AMPERE_PLUS), this GPU is {here.name} " \
                   f"({here.compute_capability})"
        return None
    if built.compute_capability != here.compute_capability:
        return f"compute capability {built.compute_capability} ({built.name or 'target'}), this GPU is {here.name} " \
               f"({here.compute_capability})"
    if level not in (None, "NONE"):  # SAME_COMPUTE_CAPABILITY: any GPU of this capability
        return None
    if built.jetson_module and here.jetson_module and built.jetson_module != here.jetson_module:
        return f"Jetson module {built.jetson_module}, this is {here.jetson_module}"
    if not built.ahead_of_time and built.name and built.name != here.name:
        return f"GPU {built.name}, this GPU is {here.name}"
    if built.sm_count and here.sm_count and built.sm_count != here.sm_count:
        return f"a GPU with {built.sm_count} SMs, this one has {here.sm_count}"
    return None


def engine_profile_problem(engine_shapes: list[dict[str, tuple]], profiles: list[Profile]) -> str | None:
    """The deserialized engine's optimization profiles against the manifest's, or None where they agree.

    ``engine_shapes``: per engine profile, each input's (min, opt, max) shapes as
    ``ICudaEngine.get_tensor_profile_shape`` reports them. Profile selection and buffer sizes come from the
    manifest, so an engine whose profiles differ (a plan swapped beside another's manifest) would be fed
    shapes it cannot take or selected into the wrong profile."""
    if len(engine_shapes) != len(profiles):
        return f"the engine has {len(engine_shapes)} optimization profiles, the manifest lists {len(profiles)}"
    for index, (found, profile) in enumerate(zip(engine_shapes, profiles)):
        for name, wanted in profile.shapes().items():
            got = tuple(tuple(int(d) for d in shape) for shape in found.get(name, ()))
            if got != wanted:
                return f"profile {index} ({profile.name}) of the engine has {name} shapes {got}, the manifest {wanted}"
    return None


def switch_profile(context, index: int, stream: int, errors: list[str]) -> None:
    """Make optimization profile ``index`` active on ``stream``. The bindings return False or (TensorRT 10/11:
    ``PY_ASSERT_RUNTIME_ERROR``) raise RuntimeError when TensorRT refuses; both become one clear error."""
    try:
        ok = context.set_optimization_profile_async(index, stream)
    except RuntimeError as exc:
        ok, errors = False, [*errors, str(exc)]
    if not ok:
        raise ArtifactError(f"TensorRT could not switch to optimization profile {index}: "
                            + ("; ".join(errors[-2:]) or "no reason given"))


class TensorRTBackend:
    """``run(feed)`` through ``execute_async_v3``; optional CUDA-graph replay for repeated shapes."""

    name = "tensorrt"
    on_gpu = True
    device_timing = True  # gpu_compute_ms and execute_only: GPU time without the host copies
    streams = 1  # inferences it is set up to run at once (BackendOptions.streams is OpenVINO's alone)

    def __init__(self, plan: Path, manifest: Manifest, options: BackendOptions):
        use_cuda_graph = options.cuda_graph
        if options.device_id != 0:  # the CUDA layer computes on the first visible GPU
            raise BackendUnavailableError(f"the TensorRT backend runs on the first visible GPU, not device "
                                          f"{options.device_id}: choose the GPU with CUDA_VISIBLE_DEVICES")
        engine_profiles(manifest)  # a plan's manifest must say how and for what it was built
        self.trt = load_tensorrt(manifest.tensorrt.library)
        self.cuda = cuda_api()
        self.gpu = self.cuda.gpu()
        check_engine_fits(manifest, self.trt.library, self.trt.version, self.gpu)
        self.plan = Path(plan)
        self._lock = threading.Lock()  # one context, stream and buffer set: one inference at a time
        self.stream: int | None = None
        self.device: dict[str, int] = {}
        self.host: dict[str, int] = {}
        self.graphs: dict[tuple, object] = {}
        self.events: tuple = ()
        self.context = self.engine = None
        with self.cuda.activate():  # PyCUDA: every allocation in this thread's current context
            try:
                self._load(manifest)
            except BaseException:
                self._release()  # a refusal halfway leaks neither buffers nor the stream
                raise
        self.active_profile = -1
        self.graph_problem = graph_replay_problem(self.trt.library, self.cuda.name) if use_cuda_graph else None
        self.use_cuda_graph = use_cuda_graph and self.graph_problem is None
        self.uncapturable: set[tuple] = set()
        self.last_key: tuple | None = None

    def _load(self, manifest: Manifest) -> None:
        """Deserialize, check the engine's tensors and profiles against the manifest, allocate, bind."""
        self.logger = self.trt.logger()
        self.runtime = self.trt.module.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self.engine is None:
            why = self.logger.errors[-1] if self.logger.errors else "unknown reason"
            raise ArtifactError(f"{self.plan.name} is not a loadable engine (corrupt or incompatible): {why}")
        tensors = {self.engine.get_tensor_name(i): TRT_DTYPES.get(
            self.engine.get_tensor_dtype(self.engine.get_tensor_name(i)).name, "?")
            for i in range(self.engine.num_io_tensors)}
        problem = engine_tensor_problem(tensors, manifest) or engine_profile_problem(
            [{name: self.engine.get_tensor_profile_shape(name, i) for name in manifest.inputs}
             for i in range(self.engine.num_optimization_profiles)], manifest.profiles)
        if problem is not None:
            raise ArtifactError(f"{self.plan.name}: {problem}; rebuild it with csfm-edge build")
        self.context = self.engine.create_execution_context()
        if self.context is None:  # out of device memory (small Jetsons with a wide profile)
            raise BackendUnavailableError(f"TensorRT could not create an execution context for {self.plan.name} "
                                          "(GPU memory?): rebuild with narrower profiles")
        self.input_dtypes = {name: np.dtype(tensors[name]) for name in manifest.inputs}
        self.profiles = manifest.profiles
        self.input_names = list(manifest.inputs)
        self.output_names = manifest.output_names
        self.stream = self.cuda.stream()
        self.buffers = {b.name: b for b in plan_buffers(manifest)}
        for name, buffer in self.buffers.items():
            self.device[name] = self.cuda.device_alloc(buffer.nbytes)
            self.host[name] = self.cuda.host_alloc(buffer.nbytes)
        for name, address in self.device.items():
            if not self.context.set_tensor_address(name, address):
                raise ArtifactError(f"TensorRT refused the address of tensor {name}: " + "; ".join(self.logger.errors))

    def describe(self) -> dict:
        return {"backend": self.name, "provider": f"{self.trt.library} {self.trt.version}",
                "gpu": self.gpu.name, "compute_capability": self.gpu.compute_capability,
                "cuda": self.cuda.name, "cuda_graph": self.use_cuda_graph or self.graph_problem or False,
                "file": self.plan.name}

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise ArtifactError("TensorRT execution failed: " + "; ".join(self.logger.errors[-2:]))

    def _execute(self, key: tuple) -> None:
        """A plain enqueue, or a CUDA graph: captured once per shape and replayed, with a plain enqueue after
        every shape or profile change; a failed capture falls back to plain launches for that shape."""
        action = launch_plan(key, self.last_key, key in self.graphs) if self.use_cuda_graph else "plain"
        self.last_key = key
        if action == "capture" and key not in self.uncapturable:
            graph = None
            if self.cuda.begin_capture(self.stream):
                enqueued = self.context.execute_async_v3(self.stream)
                graph = self.cuda.end_capture(self.stream, enqueued)  # ends the capture whatever happened
            if graph is not None:
                self.graphs[key] = graph
            else:
                self.uncapturable.add(key)
        if key in self.graphs and action != "plain":
            self.cuda.launch_graph(self.graphs[key], self.stream)
        else:
            self._enqueue()

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock, self.cuda.activate():
            feed = SPEC.feed(feed[SPEC.signal], feed[SPEC.channel_ids])
            return self._run({name: array.astype(self.input_dtypes[name], copy=False) for name, array in feed.items()})

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch, channels, time = feed[SPEC.signal].shape
        profile = select_profile(self.profiles, batch, channels, time)
        if profile != self.active_profile:
            switch_profile(self.context, profile, self.stream, self.logger.errors)
            self.active_profile = profile
        for name, array in feed.items():
            if not self.context.set_input_shape(name, array.shape):
                raise ArtifactError(f"TensorRT refused input shape {array.shape} for {name}: "
                                    + "; ".join(self.logger.errors[-2:]))
        for name, array in feed.items():
            host_array(self.host[name], array.shape, array.dtype)[...] = array
            self.cuda.copy_to_device(self.device[name], self.host[name], array.nbytes, self.stream)
        self._execute((profile, (batch, channels, time)))
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = host_array(self.host[name], shape, self.buffers[name].dtype)
            self.cuda.copy_to_host(self.host[name], self.device[name], out.nbytes, self.stream)
            outputs[name] = out
        self.cuda.synchronize(self.stream)
        return {name: array.copy() for name, array in outputs.items()}

    def gpu_compute_ms(self) -> float:
        """GPU time of one inference of the last shape (inputs already on the GPU), between CUDA events on the
        stream, as trtexec reports "GPU Compute Time"; host enqueue time is not in it. The two events are
        made once and destroyed in :meth:`close` (a benchmark calls this thousands of times)."""
        with self._lock, self.cuda.activate():
            if not self.events:
                self.events = (self.cuda.event(), self.cuda.event())
            start, end = self.events
            self.cuda.record(start, self.stream)
            self._execute((self.active_profile, tuple(self.context.get_tensor_shape(SPEC.signal))))
            self.cuda.record(end, self.stream)
            return self.cuda.elapsed_ms(start, end)

    def execute_only(self) -> None:
        """Re-run the last shape with its inputs already on the GPU: compute time without host copies."""
        with self._lock, self.cuda.activate():
            self._execute((self.active_profile, tuple(self.context.get_tensor_shape(SPEC.signal))))
            self.cuda.synchronize(self.stream)

    def close(self) -> None:
        """Release graphs, events, buffers and the stream (then the context and engine); waits for a running
        inference, and a second call does nothing."""
        with self._lock, self.cuda.activate():
            self._release()

    def _release(self) -> None:
        if self.stream is not None:
            self.cuda.synchronize(self.stream)
        if self.stream is not None or self.device or self.host:
            self.cuda.free(list(self.device.values()), list(self.host.values()), self.stream,
                           tuple(self.graphs.values()), self.events)
        self.stream, self.device, self.host, self.graphs, self.events = None, {}, {}, {}, ()
        self.context = self.engine = None
