"""Installed package versions, read from package metadata so nothing heavy is imported.

Recorded in manifests and benchmark results and printed by ``csfm-edge env``: a result or an
artifact says which tools made it.
"""

from __future__ import annotations

from importlib import metadata

PACKAGES = ("csfm-edge", "numpy", "scipy", "onnxruntime", "onnxruntime-gpu", "onnx", "openvino", "torch", "tensorrt",
            "tensorrt-rtx-cu12-bindings", "cuda-python", "cuda-bindings", "pycuda", "nvidia-ml-py", "neurokit2", "wfdb",
            "pyedflib", "pyarrow")


def package_versions() -> dict[str, str | None]:
    """Installed versions (None where absent)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def installed_versions() -> dict[str, str]:
    """Only the packages that are installed (for manifests and machine records)."""
    return {k: v for k, v in package_versions().items() if v}
