"""``csfm-edge verify``: re-run an artifact's verification on any later day, from its manifest."""

from __future__ import annotations

from pathlib import Path

from csfm_edge.export.verify import Verification, run_cases, verification_cases, verify
from csfm_edge.progress import console_progress
from csfm_edge.runtime.backends.torch_ref import TorchBackend
from csfm_edge.runtime.manifest import read_manifest
from csfm_edge.runtime.session import open_backend


def reverify(artifact: Path, checkpoint: Path | None, data_dir: Path | None,
             provider: str | None = None) -> Verification:
    manifest = read_manifest(artifact)
    backend = open_backend(artifact, manifest, provider)  # first: an artifact that cannot run fails fast
    try:
        cases, data = verification_cases(data_dir, manifest.profiles)
        reference = run_cases(TorchBackend.for_manifest(manifest, checkpoint), cases, "reference", console_progress)
        return verify(reference, backend, cases, manifest.precision, data, console_progress)
    finally:
        backend.close()
