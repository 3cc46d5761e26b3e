"""Execution backends behind one protocol, opened through one function.

As Polygraphy builds every runner from a loader with one lifecycle, :func:`open_backend` is the only
place that turns (artifact, manifest, :class:`BackendOptions`) into a backend: the session, export
verification, ``verify``, ``bench``, ``doctor``, the gateway and Ray workers all open through it, and
nothing outside ``runtime/`` constructs a backend class. Every backend class takes the same
``(path, manifest, options)``; :class:`~csfm_edge.runtime.session.Session` owns everything else.
"""

from __future__ import annotations

from pathlib import Path

from csfm_edge.errors import ArtifactError, BackendUnavailableError
from csfm_edge.runtime.backends.base import Backend
from csfm_edge.runtime.backends.options import PROVIDERS, BackendOptions, option_problem
from csfm_edge.runtime.manifest import Manifest

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
ENGINE_SUFFIXES = (".plan", ".engine")

def is_checkpoint(path: Path) -> bool:
    return Path(path).suffix.lower() in CHECKPOINT_SUFFIXES


def open_backend(artifact: Path, manifest: Manifest, options: BackendOptions | None = None) -> Backend:
    """The backend for ``artifact``: ``options.reference`` -> the PyTorch reference of the weights its
    manifest names; ``.plan`` -> TensorRT; ``.onnx`` -> ONNX Runtime or OpenVINO. (A checkpoint file is
    opened with its own manifest by :func:`~csfm_edge.runtime.backends.torch_ref.open_checkpoint`.)

    For ``.onnx`` with no provider: ONNX Runtime's GPU providers where present, else OpenVINO where
    installed and the graph is portable (the fastest CPU path measured), else ONNX Runtime's CPU provider.
    Output names always come from the manifest, never from a backend's renaming.
    """
    options = options or BackendOptions()
    artifact = Path(artifact)
    if options.reference:
        from csfm_edge.runtime.backends.torch_ref import open_reference

        return open_reference(artifact, manifest, options)
    suffix = artifact.suffix.lower()
    if suffix == ".onnx":
        from csfm_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend, choose_providers
        from csfm_edge.runtime.backends.openvino import OpenVINOBackend, openvino_available

        provider = options.provider
        on_cpu = provider in ("cpu", "openvino") or (provider is None
                                                      and choose_providers()[0] == "CPUExecutionProvider")
        if provider is None and on_cpu and manifest.precision_record.portable and openvino_available():
            provider = "openvino"
        problem = option_problem(options, f"{artifact.name} on {provider or 'cpu'}", on_gpu=not on_cpu,
                                 kind="openvino" if provider == "openvino" else "onnxruntime")
        if problem is not None:
            raise BackendUnavailableError(problem)
        if provider == "openvino":
            return OpenVINOBackend(artifact, manifest, options)
        return OnnxRuntimeBackend(artifact, manifest, options.with_provider(provider))
    if suffix in ENGINE_SUFFIXES:
        if options.provider not in (None, "tensorrt", "cuda"):
            raise BackendUnavailableError(f"{artifact.name} is a TensorRT engine: it runs on TensorRT only, "
                                          f"not on provider {options.provider!r}")
        problem = option_problem(options, f"{artifact.name} on TensorRT", on_gpu=True, kind="tensorrt")
        if problem is not None:
            raise BackendUnavailableError(problem)
        from csfm_edge.runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(artifact, manifest, options)
    raise ArtifactError(f"{artifact.name}: unknown artifact type {suffix!r} (expected .onnx, .plan or a checkpoint)")


def reference_backend(model, options: BackendOptions | None = None) -> Backend:
    """The PyTorch reference over a model already in memory (export verification, plain-PyTorch baselines)."""
    from csfm_edge.runtime.backends.torch_ref import open_reference

    return open_reference(None, None, options or BackendOptions(reference=True), model=model)


__all__ = ["Backend", "BackendOptions", "open_backend", "reference_backend", "is_checkpoint", "PROVIDERS"]
