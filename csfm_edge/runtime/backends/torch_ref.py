"""PyTorch reference backend: the only runtime path that imports torch (export extra), and lazily.

The model package is reached from here alone, so ``import csfm_edge.runtime`` never loads torch. It runs on
the CPU, or with provider ``cuda`` on an NVIDIA GPU (a GPU machine without TensorRT or onnxruntime-gpu then
still runs, verifies and benchmarks): float32 with TF32 off, as the reference must be, or FP16/BF16 autocast
when asked. Asking for CUDA where PyTorch has none is an error, never a quiet CPU run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csfm_edge.errors import BackendUnavailableError, ParameterError
from csfm_edge.runtime.backends.options import BackendOptions, option_problem
from csfm_edge.runtime.manifest import Manifest, checkpoint_weights, graph_manifest
from csfm_edge.spec import SPEC

AUTOCAST_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}


def _torch():
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError("the PyTorch reference needs torch: pip install 'csfm-edge[export]'") from None
    return torch


@dataclass(frozen=True)
class TorchCuda:
    """What this PyTorch says of CUDA: its build, whether a device works, how many, bf16 support of device 0."""

    torch_version: str
    cuda_version: str | None  # None: a CPU-only build
    available: bool
    device_count: int
    bf16_supported: bool

    @classmethod
    def of(cls, torch) -> TorchCuda:
        available = bool(torch.cuda.is_available())
        return cls(torch.__version__, torch.version.cuda, available, torch.cuda.device_count() if available else 0,
                   available and bool(torch.cuda.is_bf16_supported()))


def device_problem(provider: str | None, autocast: str | None, cuda: TorchCuda, device_id: int = 0) -> str | None:
    """Why the PyTorch reference cannot run on ``provider`` with ``autocast`` here, or None.

    Everything a user can ask for and not have: a provider the reference has no path for, FP16 autocast on
    the CPU, CUDA in a CPU-only PyTorch, a CUDA PyTorch that finds no GPU, a device that is not there, BF16
    on a GPU without it."""
    if provider in (None, "cpu"):
        return "fp16 autocast needs the PyTorch reference on CUDA (--provider cuda)" if autocast == "fp16" else None
    if provider != "cuda":
        return f"the PyTorch reference runs on cpu or cuda, not {provider!r}"
    if cuda.cuda_version is None:
        return (f"this PyTorch ({cuda.torch_version}) is built without CUDA: install a CUDA build of PyTorch, or "
                "run on the CPU (--provider cpu)")
    if not cuda.available or cuda.device_count == 0:
        return (f"PyTorch {cuda.torch_version} (CUDA {cuda.cuda_version}) finds no usable GPU: check nvidia-smi, "
                "the driver (it must support CUDA " + cuda.cuda_version.split(".")[0] + ") and CUDA_VISIBLE_DEVICES")
    if not 0 <= device_id < cuda.device_count:
        return f"PyTorch sees {cuda.device_count} CUDA GPU(s); there is no device {device_id}"
    if autocast == "bf16" and not cuda.bf16_supported:
        return "this GPU has no bfloat16 (Ampere or later needed): use fp16 autocast"
    return None


def check_device(options: BackendOptions) -> None:
    """Refuse, in one line, a device or autocast the PyTorch reference cannot have here (CUDA is asked about
    only when it is wanted: initialising it costs seconds)."""
    torch = _torch()
    cuda = TorchCuda.of(torch) if options.provider == "cuda" else \
        TorchCuda(torch.__version__, torch.version.cuda, False, 0, False)
    problem = device_problem(options.provider, options.autocast, cuda, options.device_id) or \
        option_problem(options, "the PyTorch reference", on_gpu=options.provider == "cuda", kind="torch")
    if problem is not None:
        raise BackendUnavailableError(problem)


def full_fp32(torch) -> None:
    """Matrix products and convolutions in IEEE float32 on CUDA: TF32 (on by default for cuDNN, and wherever a
    user allowed it) rounds to a 10-bit mantissa, which the FP32 tolerance does not allow. Process-wide, as
    PyTorch's settings are."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # PyTorch 2.9+
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


class TorchBackend:
    """Runs a :class:`csfm_edge.model.CSFM` in eval mode on the CPU: float32, or with ``autocast="bf16"``
    (the fastest plain-PyTorch path together with a model built with fused attention).

    Opened from ``(path, manifest, options)`` like every backend (through :func:`open_reference`, which
    picks the CUDA class for provider ``cuda``): the weights the manifest names (the same seed, or
    ``options.checkpoint``), or the checkpoint ``path`` itself when given ``model`` already loaded from it."""

    name = "torch"
    on_gpu = False
    device_timing = False
    streams = 1  # inferences it is set up to run at once (BackendOptions.streams is OpenVINO's alone)

    def __init__(self, path: Path | None, manifest: Manifest | None, options: BackendOptions, *, model=None):
        self._torch = _torch()
        check_device(options)
        if model is None:
            from csfm_edge.model import rebuild_weights

            weights = manifest.weights
            model = rebuild_weights(manifest.model.config(), weights.source, seed=weights.seed, sha256=weights.sha256,
                                    name=weights.name, checkpoint=options.checkpoint)
        self.autocast = options.autocast
        self.device = self._place(options)
        self.model = model.eval().to(self.device)
        self._lock = threading.Lock()  # one forward at a time: results equal sequential ones

    def _place(self, options: BackendOptions):
        return self._torch.device("cpu")

    def _placement(self) -> str:
        return "cpu"

    def describe(self) -> dict:
        core = self.model.transformer.layers[0][0].core.__name__.replace("_", " ")
        mode = f"{core}, " + (f"{self.autocast} autocast" if self.autocast else "fp32 eager")
        return {"backend": self.name, "provider": f"{self._placement()}, {mode}", "torch": self._torch.__version__,
                "weights": self.model.provenance}

    def _inputs(self, feed: dict[str, np.ndarray]):
        torch = self._torch
        signal = torch.from_numpy(np.ascontiguousarray(feed[SPEC.signal], dtype=np.float32))
        ids = torch.from_numpy(np.asarray(feed[SPEC.channel_ids], dtype=np.int64))
        return signal.to(self.device), ids.to(self.device)

    def _forward(self, signal, ids) -> dict:
        torch = self._torch
        dtype = getattr(torch, AUTOCAST_DTYPES[self.autocast]) if self.autocast else None
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            features = self.model(signal, ids)
            out = {SPEC.features: features}
            if self.model.head is not None:
                out[SPEC.logits] = self.model.head(features)
        return out

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            out = self._forward(*self._inputs(feed))
            return {name: value.float().cpu().numpy() for name, value in out.items()}

    def close(self) -> None:
        self.model = None


class TorchCudaBackend(TorchBackend):
    """The reference on an NVIDIA GPU. Like TensorRT's backend it re-runs the last inputs already on the GPU
    (:meth:`execute_only`) and times them between CUDA events (:meth:`gpu_compute_ms`), so benchmarks report
    the same figures for both."""

    on_gpu = True
    device_timing = True

    def __init__(self, path: Path | None, manifest: Manifest | None, options: BackendOptions, *, model=None):
        self._last = self._events = None  # the last inputs on the GPU, and the two timing events
        super().__init__(path, manifest, options, model=model)

    def _place(self, options: BackendOptions):
        if options.autocast is None:
            full_fp32(self._torch)
        device = self._torch.device("cuda", options.device_id)
        self.gpu = self._torch.cuda.get_device_name(device)
        return device

    def _placement(self) -> str:
        return f"cuda:{self.device.index}" + ("" if self.autocast else ", TF32 off")

    def describe(self) -> dict:
        props = self._torch.cuda.get_device_properties(self.device)
        return {**super().describe(), "gpu": self.gpu, "compute_capability": f"{props.major}.{props.minor}",
                "cuda": self._torch.version.cuda}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self._last = self._inputs(feed)
            out = self._forward(*self._last)
            return {name: value.float().cpu().numpy() for name, value in out.items()}

    def _again(self) -> dict:
        if self._last is None:
            raise ParameterError("run() once before timing: there are no inputs on the GPU yet")
        return self._forward(*self._last)

    def execute_only(self) -> None:
        """The last inputs again, already on the GPU: compute without host copies (waits for the GPU)."""
        with self._lock:
            self._again()
            self._torch.cuda.synchronize(self.device)

    def gpu_compute_ms(self) -> float:
        """GPU time of one inference of the last inputs between two CUDA events (made once) on the current
        stream, as trtexec's "GPU Compute Time"."""
        torch = self._torch
        with self._lock:
            if self._events is None:
                self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            start, end = self._events
            stream = torch.cuda.current_stream(self.device)
            start.record(stream)
            self._again()
            end.record(stream)
            end.synchronize()
            return float(start.elapsed_time(end))

    def close(self) -> None:
        with self._lock:
            self.model = self._last = self._events = None
            self._torch.cuda.empty_cache()


def open_reference(path: Path | None, manifest: Manifest | None, options: BackendOptions, *,
                   model=None) -> TorchBackend:
    """The reference backend for ``options.provider``: the CPU (None or "cpu") or the GPU ("cuda")."""
    backend = TorchCudaBackend if options.provider == "cuda" else TorchBackend
    return backend(path, manifest, options, model=model)


def open_checkpoint(path: Path, options: BackendOptions) -> tuple[TorchBackend, Manifest]:
    """A checkpoint run directly, with what a manifest would say of it."""
    check_device(options)  # before a possibly large load
    from csfm_edge.model import load_checkpoint

    model = load_checkpoint(path)
    manifest = graph_manifest(model.config, "fp32", checkpoint_weights(model.load_report), artifact="checkpoint")
    return open_reference(path, manifest, options, model=model), manifest
