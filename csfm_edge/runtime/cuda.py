"""The few CUDA calls the TensorRT backend needs: device query, device/pinned memory, a stream, copies.

Through cuda-python (``cuda.bindings.runtime``, or ``cuda.cudart`` in older releases), or PyCUDA where
only it is installed. Every failure becomes a :class:`BackendUnavailableError` that says what is missing.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from csfm_edge.errors import BackendUnavailableError


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.6"
    memory_bytes: int


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
        return GpuInfo(name.rstrip("\x00"), f"{prop.major}.{prop.minor}", int(prop.totalGlobalMem))

    def stream(self) -> int:
        return int(self._ok(self.rt.cudaStreamCreate(), "stream creation"))

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

    def begin_capture(self, stream: int) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._ok(self.rt.cudaStreamBeginCapture(stream, mode), "graph capture")

    def end_capture(self, stream: int) -> int:
        graph = self._ok(self.rt.cudaStreamEndCapture(stream), "graph capture")
        return self._ok(self.rt.cudaGraphInstantiate(graph, 0), "graph instantiation")

    def launch_graph(self, graph_exec, stream: int) -> None:
        self._ok(self.rt.cudaGraphLaunch(graph_exec, stream), "graph launch")

    def free(self, device: list[int], host: list[int]) -> None:
        for ptr in device:
            self.rt.cudaFree(ptr)
        for ptr in host:
            self.rt.cudaFreeHost(ptr)


class PyCuda:
    """PyCUDA, for installs (some Jetson images) that have it instead of cuda-python. No graph capture."""

    name = "pycuda"

    def __init__(self):
        import pycuda.autoinit  # noqa: F401  (creates the context)
        import pycuda.driver as driver

        self.drv = driver
        self._keep: dict[int, object] = {}

    def gpu(self) -> GpuInfo:
        device = self.drv.Device(0)
        major, minor = device.compute_capability()
        return GpuInfo(device.name(), f"{major}.{minor}", device.total_memory())

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

    def free(self, device: list[int], host: list[int]) -> None:
        self._keep.clear()


def _view(address: int, nbytes: int) -> np.ndarray:
    return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(address))


def host_array(address: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A NumPy view of pinned host memory (no copy)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    return _view(address, count * dtype.itemsize).view(dtype)[:count].reshape(shape)


def cuda_api() -> CudaPython | PyCuda:
    """cuda-python if importable, else PyCUDA; else an error naming both."""
    cudart = _cudart()
    if cudart is not None:
        return CudaPython(cudart)
    try:
        return PyCuda()
    except ImportError:
        raise BackendUnavailableError("the TensorRT backend needs cuda-python (pip install 'csfm-edge[tensorrt]') "
                                      "or PyCUDA") from None
