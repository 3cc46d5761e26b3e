"""``csfm-edge verify``: re-run an artifact's verification on any later day, from its manifest."""

from __future__ import annotations

from pathlib import Path

from csfm_edge.export.verify import Verification, run_cases, verification_cases, verify
from csfm_edge.progress import console_progress
from csfm_edge.runtime.backends import BackendOptions, open_backend
from csfm_edge.runtime.manifest import read_manifest
from csfm_edge.runtime.trust import verify_artifact


def reverify(artifact: Path, checkpoint: Path | None, data_dir: Path | None,
             options: BackendOptions | None = None, trust: Path | None = None) -> Verification:
    """The artifact on ``options``' backend against the PyTorch reference (on the CPU) of the weights its
    manifest names (``checkpoint`` for a trained one); only if signed by ``trust`` where one is given."""
    verify_artifact(artifact, trust)
    manifest = read_manifest(artifact)
    backend = open_backend(artifact, manifest, options)  # first: an artifact that cannot run fails fast
    try:
        cases, data = verification_cases(data_dir, manifest.profiles)
        reference_options = BackendOptions(reference=True, checkpoint=checkpoint)
        reference = open_backend(artifact, manifest, reference_options)
        outputs = run_cases(reference, cases, "reference", console_progress)
        reference.close()
        return verify(outputs, backend, cases, manifest.precision, data, console_progress)
    finally:
        backend.close()
