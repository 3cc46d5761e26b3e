"""The few CUDA calls the TensorRT backend needs: device query, device/pinned memory, a stream, copies.

Through cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` in older releases), or PyCUDA where
only it is installed. Every failure becomes a :class:`BackendUnavailableError` that says what is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csfm_edge.errors import BackendUnavailableError

DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.6"
    memory_bytes: int
    sm_count: int | None = None
    jetson_module: str | None = None


def jetson_module(model_file: Path = DEVICE_TREE_MODEL) -> str | None:
    """The Jetson module ("NVIDIA Jetson AGX Orin Developer Kit"): the device tree's model, without the
    trailing NUL the kernel writes; None off Jetson."""
    try:
        text = model_file.read_bytes().decode("utf-8", errors="replace")
    except OSError:
        return None
    text = text.replace("\x00", "").strip()
    return text or None


# cuda-python's CUDA major -> the oldest driver (as cudaDriverGetVersion reports it, 1000 x major + 10 x minor)
# that runs it: CUDA 12.x needs R525+ (12000), CUDA 13.x needs R580+ (13000). JetPack 6's driver 540 reports 12060.
BINDING_NEEDS_DRIVER = {12: 12000, 13: 13000}


NO_DRIVER = ("no NVIDIA driver is loaded (cudaDriverGetVersion reports 0): install the NVIDIA driver, or in a "
             "container run with the GPU passed through (docker run --gpus all)")


def binding_problem(binding_major: int | None, driver_cuda: int) -> str | None:
    """Why the installed CUDA binding cannot run on this driver, with the fix; None when it can.

    ``driver_cuda`` 0 is what cudaDriverGetVersion reports (with success) when no driver is loaded."""
    if driver_cuda <= 0:
        return NO_DRIVER
    if binding_major is None:
        return None
    needed = BINDING_NEEDS_DRIVER.get(binding_major, binding_major * 1000)
    if driver_cuda >= needed:
        return None
    supported = driver_cuda // 1000
    return (f"cuda-python {binding_major}.x needs a driver for CUDA {binding_major} or newer, this driver supports "
            f"CUDA {supported}.{driver_cuda % 1000 // 10}: pip install 'cuda-python>={supported},<{supported + 1}' "
            f"(the csfm-edge[tensorrt{'' if supported == 12 else '-cu' + str(supported)}] extra) or use PyCUDA")


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    return cudart


class CudaPython:
    """cuda-python calls return (error, value...) tuples; :meth:`_ok` turns errors into exceptions."""

    name = "cuda-python"

    def __init__(self, cudart):
        self.rt = cudart

    def _ok(self, result, what: str):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise BackendUnavailableError(f"CUDA {what} failed: {self.rt.cudaGetErrorString(err)[1].decode()}")
        return values[0] if len(values) == 1 else values

    def gpu(self) -> GpuInfo:
        if self._ok(self.rt.cudaGetDeviceCount(), "device query") < 1:
            raise BackendUnavailableError("no CUDA GPU on this machine")
        prop = self._ok(self.rt.cudaGetDeviceProperties(0), "device properties")
        name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
        return GpuInfo(name.rstrip("\x00"), f"{prop.major}.{prop.minor}", int(prop.totalGlobalMem),
                       int(prop.multiProcessorCount), jetson_module())

    def pci_bus_id(self) -> str:
        """The PCI bus id of the device this process computes on (what NVML needs: it counts in PCI order)."""
        value = self._ok(self.rt.cudaDeviceGetPCIBusId(32, 0), "PCI bus id")
        return normal_pci_bus_id((value.decode() if isinstance(value, bytes) else str(value)).rstrip("\x00"))

    def stream(self) -> int:
        """A non-blocking stream: work another thread puts on the legacy default stream neither waits for it
        nor invalidates a graph capture on it (a blocking stream synchronises with that stream)."""
        return int(self._ok(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking), "stream creation"))

    def device_alloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))

    def host_alloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._ok(self.rt.cudaMemcpyAsync(dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream),
                 "host-to-device copy")

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self._ok(self.rt.cudaMemcpyAsync(dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream),
                 "device-to-host copy")

    def synchronize(self, stream: int) -> None:
        self._ok(self.rt.cudaStreamSynchronize(stream), "stream synchronize")

    def _clear_error(self) -> None:
        """Reset the error a failed capture leaves for the next runtime call (trtexec's endCaptureOnError)."""
        self.rt.cudaGetLastError()

    def begin_capture(self, stream: int) -> bool:
        """Start capturing the stream's work into a graph; False (error cleared) where CUDA refuses."""
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        if int(self.rt.cudaStreamBeginCapture(stream, mode)[0]) != 0:
            self._clear_error()
            return False
        return True

    def end_capture(self, stream: int, enqueued: bool = True):
        """The instantiated graph, or None when the capture or the enqueue inside it failed (trtexec then
        launches plainly). Always ends the capture, destroys the captured graph and clears a sticky error,
        so the stream and the next CUDA call work as before."""
        error, graph = self.rt.cudaStreamEndCapture(stream)
        failed = int(error) != 0 or graph is None or not enqueued
        graph_exec = None
        if not failed:
            error, graph_exec = self.rt.cudaGraphInstantiate(graph, 0)
            failed = int(error) != 0 or graph_exec is None
        if graph is not None:
            self.rt.cudaGraphDestroy(graph)  # the executable keeps what it needs
        if failed:
            self._clear_error()
            return None
        return graph_exec

    def last_error(self) -> str | None:
        """The error the next runtime call would inherit (cudaPeekAtLastError), None when clear."""
        error = self.rt.cudaPeekAtLastError()[0]
        return None if int(error) == 0 else self.rt.cudaGetErrorString(error)[1].decode()

    def memory_info(self) -> tuple[int, int]:
        """Free and total device memory in bytes (all processes)."""
        free, total = self._ok(self.rt.cudaMemGetInfo(), "memory query")
        return int(free), int(total)

    def launch_graph(self, graph_exec, stream: int) -> None:
        self._ok(self.rt.cudaGraphLaunch(graph_exec, stream), "graph launch")

    def event(self):
        return self._ok(self.rt.cudaEventCreate(), "event creation")

    def record(self, event, stream: int) -> None:
        self._ok(self.rt.cudaEventRecord(event, stream), "event record")

    def elapsed_ms(self, start, end) -> float:
        """GPU time between two recorded events (waits for the second), as trtexec measures compute."""
        self._ok(self.rt.cudaEventSynchronize(end), "event synchronize")
        return float(self._ok(self.rt.cudaEventElapsedTime(start, end), "event elapsed time"))

    def activate(self):
        """The runtime API makes the device's primary context current in every thread by itself."""
        return contextlib.nullcontext()

    def free(self, device: list[int], host: list[int], stream: int | None = None, graphs: tuple = (),
             events: tuple = ()) -> None:
        for graph_exec in graphs:
            self.rt.cudaGraphExecDestroy(graph_exec)
        for event in events:
            self.rt.cudaEventDestroy(event)
        for ptr in device:
            self.rt.cudaFree(ptr)
        for ptr in host:
            self.rt.cudaFreeHost(ptr)
        if stream is not None:
            self.rt.cudaStreamDestroy(stream)


class PyCuda:
    """PyCUDA, for installs (some Jetson images) that have it instead of cuda-python. No graph capture
    (the TensorRT backend then launches plainly, and says so in ``describe()``)."""

    name = "pycuda"

    def __init__(self):
        try:
            import pycuda.driver as driver
            from pycuda import autoprimaryctx  # the device's primary context, which every thread can share
        except ImportError:
            raise
        except Exception as exc:  # pycuda.driver.Error and friends on a machine without a usable GPU
            raise BackendUnavailableError(f"PyCUDA cannot use a GPU here ({type(exc).__name__}: {exc})") from None
        self.drv = driver
        self.context = autoprimaryctx.context
        self._keep: dict[int, object] = {}

    def gpu(self) -> GpuInfo:
        device = self.drv.Device(0)
        major, minor = device.compute_capability()
        sm_count = device.get_attribute(self.drv.device_attribute.MULTIPROCESSOR_COUNT)
        return GpuInfo(device.name(), f"{major}.{minor}", device.total_memory(), int(sm_count), jetson_module())

    def pci_bus_id(self) -> str:
        return normal_pci_bus_id(self.drv.Device(0).pci_bus_id())

    def stream(self) -> int:
        stream = self.drv.Stream()
        self._keep[stream.handle] = stream
        return stream.handle

    def device_alloc(self, nbytes: int) -> int:
        allocation = self.drv.mem_alloc(nbytes)
        self._keep[int(allocation)] = allocation
        return int(allocation)

    def host_alloc(self, nbytes: int) -> int:
        array = self.drv.pagelocked_empty(nbytes, np.uint8)
        self._keep[array.ctypes.data] = array
        return array.ctypes.data

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.drv.memcpy_htod_async(dst, _view(src, nbytes), self._keep[stream])

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.drv.memcpy_dtoh_async(_view(dst, nbytes), src, self._keep[stream])

    def synchronize(self, stream: int) -> None:
        self._keep[stream].synchronize()

    def event(self):
        return self.drv.Event()

    def record(self, event, stream: int) -> None:
        event.record(self._keep[stream])

    def elapsed_ms(self, start, end) -> float:
        end.synchronize()
        return float(start.time_till(end))

    def last_error(self) -> str | None:
        return None  # PyCUDA raises every error where it happens

    def memory_info(self) -> tuple[int, int]:
        free, total = self.drv.mem_get_info()
        return int(free), int(total)

    def begin_capture(self, stream: int) -> bool:
        return False  # no stream capture through PyCUDA here (graph_replay_problem keeps replay off)

    def end_capture(self, stream: int, enqueued: bool = True):
        return None

    @contextlib.contextmanager
    def activate(self):
        """PyCUDA's context is current only in the thread that made it: push it in whichever thread runs."""
        self.context.push()
        try:
            yield
        finally:
            self.drv.Context.pop()

    def free(self, device: list[int], host: list[int], stream: int | None = None, graphs: tuple = (),
             events: tuple = ()) -> None:
        self._keep.clear()  # PyCUDA frees its allocations, streams and events when the last reference goes


def normal_pci_bus_id(text: str) -> str:
    """CUDA's ``0000:3b:00.0`` as nvidia-smi and NVML write it, ``00000000:3B:00.0`` (``nvidia-smi --id`` and
    ``nvmlDeviceGetHandleByPciBusId`` both take this form)."""
    parts = text.strip().split(":")
    if len(parts) == 2:  # no domain: domain 0
        parts = ["0", *parts]
    domain, bus, device_function = parts
    return f"{int(domain, 16):08X}:{bus.upper()}:{device_function.upper()}"


def _view(address: int, nbytes: int) -> np.ndarray:
    return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(address))


def host_array(address: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A NumPy view of pinned host memory (no copy)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    return _view(address, count * dtype.itemsize).view(dtype)[:count].reshape(shape)


def binding_major() -> int | None:
    """The CUDA major of the installed cuda-python (from its metadata; None when absent)."""
    from importlib import metadata

    for name in ("cuda-bindings", "cuda-python"):
        try:
            return int(metadata.version(name).split(".")[0])
        except (metadata.PackageNotFoundError, ValueError):
            continue
    return None


def cuda_api() -> CudaPython | PyCuda:
    """cuda-python where it fits this driver, else PyCUDA; else an error that says what to install.

    cuda-python 13 imports fine on a driver for CUDA 12 (JetPack 6, R535-R570 hosts) and fails at the first
    call, so the driver is asked first and a mismatch falls back to PyCUDA or names the fix. Without a
    driver at all neither can work: that is said, not a version advice."""
    cudart = _cudart()
    problem = None
    if cudart is not None:
        error, driver = cudart.cudaDriverGetVersion()
        problem = binding_problem(binding_major(), int(driver or 0)) if int(error) == 0 else None
        if problem == NO_DRIVER:
            raise BackendUnavailableError(problem)
        if problem is None:
            return CudaPython(cudart)
    try:
        return PyCuda()
    except ImportError:
        raise BackendUnavailableError(problem or MISSING_BINDING) from None


MISSING_BINDING = ("no CUDA binding for Python (cuda-python or PyCUDA) is installed: pip install "
                   "'csfm-edge[tensorrt]' (driver for CUDA 12) or 'csfm-edge[tensorrt-cu13]' (CUDA 13, R580+ drivers)")
