"""ONNX Runtime backend: one ``InferenceSession`` with the best available execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from csfm_edge.errors import BackendUnavailableError
from csfm_edge.runtime.backends.options import BackendOptions
from csfm_edge.runtime.manifest import Manifest

# Best first. The TensorRT provider builds its own engine from the ONNX file on first use.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
PROVIDER_ALIASES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
                    "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def choose_providers(requested: str | None = None) -> list[str]:
    """The requested provider (a name or alias), or the best available; unknown names list the choices."""
    available = ort.get_available_providers()
    if requested is None:
        return [p for p in PREFERRED_PROVIDERS if p in available]
    name = PROVIDER_ALIASES.get(requested.lower(), requested)
    if name not in available:
        hint = ("; onnxruntime-gpu has it, or run the PyTorch reference on the GPU (a .pth checkpoint with "
                "--provider cuda, or reference=True in Python)") if name == "CUDAExecutionProvider" else ""
        raise BackendUnavailableError(
            f"ONNX Runtime provider {requested!r} is not available here; available: {', '.join(available)}{hint}")
    return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]


def provider_list(names: list[str], device_id: int) -> list:
    """Providers with their options: the GPU ones on ``device_id``."""
    return [(name, {"device_id": device_id}) if name in GPU_PROVIDERS else name for name in names]


class OnnxRuntimeBackend:
    """``run(feed)`` over an ``onnxruntime.InferenceSession`` (whose ``run`` is safe from several threads).

    A provider that was asked for but did not start (ONNX Runtime then falls back to the CPU with only a
    warning, e.g. the CUDA provider without its CUDA libraries) is refused: a request for a GPU never
    quietly runs on the CPU."""

    name = "onnxruntime"
    device_timing = False
    streams = 1  # inferences it is set up to run at once (BackendOptions.streams is OpenVINO's alone)

    def __init__(self, path: str | Path, manifest: Manifest, options: BackendOptions):
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.threads:
            session_options.intra_op_num_threads = options.threads
        self.path = Path(path)
        providers = choose_providers(options.provider)
        self.session = ort.InferenceSession(str(path), sess_options=session_options,
                                            providers=provider_list(providers, options.device_id))
        started = self.session.get_providers()[0]
        if options.provider is not None and started != providers[0]:
            raise BackendUnavailableError(f"ONNX Runtime could not start {providers[0]} for {self.path.name} (it "
                                          f"fell back to {started}); check its CUDA/TensorRT libraries")
        self.on_gpu = started in GPU_PROVIDERS
        self.output_names = list(manifest.output_names)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def describe(self) -> dict:
        return {"backend": self.name, "provider": self.session.get_providers()[0],
                "onnxruntime": ort.__version__, "file": self.path.name}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, {k: feed[k] for k in self.input_names})
        return dict(zip(self.output_names, outputs))

    def close(self) -> None:
        self.session = None
