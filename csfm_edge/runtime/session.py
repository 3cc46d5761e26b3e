"""Opening artifacts: the manifest decides what an artifact is; the suffix picks the backend."""

from __future__ import annotations

from pathlib import Path

from csfm_edge.errors import ArtifactError
from csfm_edge.runtime.backends.base import Backend


def open_backend(artifact: Path, manifest: dict, provider: str | None = None) -> Backend:
    """``.onnx`` -> ONNX Runtime (best provider unless ``provider``), ``.plan`` -> TensorRT."""
    suffix = artifact.suffix.lower()
    if suffix == ".onnx":
        from csfm_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(artifact, provider)
    if suffix in (".plan", ".engine"):
        from csfm_edge.runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(artifact, manifest)
    raise ArtifactError(f"{artifact.name}: unknown artifact type {suffix!r} (expected .onnx or .plan)")
