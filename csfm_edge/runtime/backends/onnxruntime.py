"""ONNX Runtime backend: one ``InferenceSession`` with the best available execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from csfm_edge.errors import BackendUnavailableError

# Best first. The TensorRT provider builds its own engine from the ONNX file on first use.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDER_ALIASES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
                    "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def choose_providers(requested: str | None = None) -> list[str]:
    """The requested provider (a name or alias), or the best available; unknown names list the choices."""
    available = ort.get_available_providers()
    if requested is None:
        return [p for p in PREFERRED_PROVIDERS if p in available]
    name = PROVIDER_ALIASES.get(requested.lower(), requested)
    if name not in available:
        raise BackendUnavailableError(
            f"ONNX Runtime provider {requested!r} is not available here; available: {', '.join(available)}")
    return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]


class OnnxRuntimeBackend:
    """``run(feed)`` over an ``onnxruntime.InferenceSession`` (whose ``run`` is safe from several threads)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, provider: str | None = None, threads: int | None = None):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=choose_providers(provider))
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_names = [i.name for i in self.session.get_inputs()]

    def describe(self) -> dict:
        return {"backend": self.name, "provider": self.session.get_providers()[0],
                "onnxruntime": ort.__version__, "file": self.path.name}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, {k: feed[k] for k in self.input_names})
        return dict(zip(self.output_names, outputs))

    def close(self) -> None:
        self.session = None
