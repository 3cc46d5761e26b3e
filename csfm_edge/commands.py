"""Subcommands of the ``csfm-edge`` CLI; each parses flags and calls library code."""

from __future__ import annotations

import argparse
import platform
from importlib import metadata

from csfm_edge.cli import command

PACKAGES = ("csfm-edge", "numpy", "scipy", "onnxruntime", "onnx", "torch", "tensorrt", "tensorrt-rtx-cu12-bindings",
            "cuda-python", "neurokit2", "wfdb")


def package_versions() -> dict[str, str | None]:
    """Installed versions (None where absent), read from metadata so nothing heavy is imported."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@command("env", "print Python, platform and package versions (for bug reports)", lambda p: None)
def env(args: argparse.Namespace) -> int:
    print(f"python      {platform.python_version()} ({platform.machine()}, {platform.platform()})")
    for name, version in package_versions().items():
        print(f"{name:26} {version or '-'}")
    return 0
