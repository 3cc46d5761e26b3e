"""``csfm-edge verify``: re-run an artifact's verification on any later day, from its manifest."""

from __future__ import annotations

from pathlib import Path

from csfm_edge.errors import ArtifactError, CheckpointError
from csfm_edge.export.verify import Verification, run_cases, verification_cases, verify
from csfm_edge.model import CSFM, build, load_checkpoint
from csfm_edge.progress import console_progress
from csfm_edge.runtime.backends.torch_ref import TorchBackend
from csfm_edge.runtime.manifest import read_manifest
from csfm_edge.runtime.session import open_backend


def reference_model(manifest: dict, checkpoint: Path | None) -> CSFM:
    """Rebuild the weights the manifest names: the same checkpoint (sha256 checked) or the same seed."""
    weights, size = manifest["weights"], manifest["model"]["size"]
    if weights["source"] == "untrained":
        return build(size, seed=weights["seed"])
    if checkpoint is None:
        raise CheckpointError(f"the artifact was exported from {weights['name']}: pass --checkpoint")
    model = load_checkpoint(checkpoint, size)
    if model.load_report.sha256 != weights["sha256"]:
        raise CheckpointError(f"{checkpoint.name} is not the checkpoint the artifact was exported from "
                              f"({weights['name']}, sha256 {weights['sha256'][:12]}...)")
    return model


def reverify(artifact: Path, checkpoint: Path | None, data_dir: Path | None,
             provider: str | None = None) -> Verification:
    manifest = read_manifest(artifact)
    if "precision" not in manifest:
        raise ArtifactError(f"manifest of {artifact.name} names no precision")
    backend = open_backend(artifact, manifest, provider)  # first: an artifact that cannot run fails fast
    try:
        cases, data = verification_cases(data_dir)
        reference = run_cases(TorchBackend(reference_model(manifest, checkpoint)), cases, "reference",
                              console_progress)
        return verify(reference, backend, cases, manifest["precision"], data, console_progress)
    finally:
        backend.close()
