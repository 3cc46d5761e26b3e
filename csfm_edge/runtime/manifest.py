"""Artifact manifests: the JSON beside every exported file that says what it is.

Written by the exporter and the TensorRT builder, read by every runtime backend. A file whose
manifest is missing, unreadable, of another format version, or whose sha256 differs from the file's
is refused: a deployed artifact must explain itself, and a mismatch must not run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from csfm_edge.errors import ArtifactError

MANIFEST_VERSION = 1


def manifest_path(artifact: str | Path) -> Path:
    """``model.onnx`` -> ``model.json`` (same stem, beside it)."""
    return Path(artifact).with_suffix(".json")


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(artifact: str | Path, *, check_hash: bool = True) -> dict:
    """Load and check the manifest of ``artifact``; raise :class:`ArtifactError` on any mismatch."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise ArtifactError(f"artifact {artifact} does not exist")
    path = manifest_path(artifact)
    if not path.is_file():
        raise ArtifactError(f"{artifact.name} has no manifest {path.name} beside it: refusing to run an "
                            "artifact that cannot say what it is (re-export it with csfm-edge export)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"manifest {path} is not readable JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("manifest_version") != MANIFEST_VERSION:
        raise ArtifactError(f"manifest {path} is not a csfm-edge manifest of version {MANIFEST_VERSION}")
    if manifest.get("file", {}).get("name") != artifact.name:
        raise ArtifactError(f"manifest {path.name} describes {manifest.get('file', {}).get('name')!r}, "
                            f"not {artifact.name}")
    if check_hash:
        actual = sha256_of(artifact)
        if actual != manifest["file"].get("sha256"):
            raise ArtifactError(f"{artifact.name} does not match its manifest (sha256 {actual[:12]}... vs "
                                f"{str(manifest['file'].get('sha256'))[:12]}...): file changed or corrupt")
    return manifest


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename: no half-written file survives."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_manifest(artifact: Path, manifest: dict) -> Path:
    """Add the format version and the file's name, size and sha256, then write atomically."""
    manifest = {"manifest_version": MANIFEST_VERSION, **manifest,
                "file": {"name": artifact.name, "bytes": artifact.stat().st_size, "sha256": sha256_of(artifact)}}
    path = manifest_path(artifact)
    write_atomically(path, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())
    return path


def describe_manifest(manifest: dict) -> str:
    """A readable summary of a manifest for ``csfm-edge info``."""
    model, weights = manifest["model"], manifest["weights"]
    lines = [
        f"file        {manifest['file']['name']} ({manifest['file']['bytes'] / 1e6:.1f} MB, "
        f"sha256 {manifest['file']['sha256'][:16]}...)",
        f"artifact    {manifest['artifact']}, {manifest['precision']}",
        f"model       CSFM {model['size']} (dim {model['dim']}, depth {model['depth']}, heads {model['heads']}, "
        f"MLP {model['mlp_dim']}), head: {model['head_classes'] or 'none'}",
        "weights     " + (f"UNTRAINED random, seed {weights['seed']}" if weights["source"] == "untrained"
                          else f"{weights['name']} (sha256 {weights['sha256'][:16]}...)"),
        "inputs      " + ", ".join(f"{n} {t['dtype']}{t['dims']}" for n, t in manifest["inputs"].items()),
        "outputs     " + ", ".join(f"{n} {t['dtype']}{t['dims']}" for n, t in manifest["outputs"].items()),
        f"preprocess  {manifest['preprocessing']['sample_rate_hz']:g} Hz, {manifest['preprocessing']['window_samples']}"
        f" samples, PPG order {manifest['preprocessing']['ppg']['order']}",
    ]
    if "tensorrt" in manifest:
        trt, gpu = manifest["tensorrt"], manifest["gpu"]
        lines.append(f"tensorrt    {trt['library']} {trt['version']}, target {trt['target']}, "
                     f"GPU {gpu.get('name') or '-'} (compute {gpu['compute_capability']})")
        lines.append("profiles    " + "; ".join(
            f"{p['name']} b{p['batch']['min']}-{p['batch']['max']} c{p['channels']['min']}-{p['channels']['max']}"
            for p in manifest["profiles"]))
    verification = manifest.get("verification")
    if verification:
        worst = verification["worst"]
        lines.append(f"verified    {'PASS' if verification['passed'] else 'FAIL'} on {len(verification['cases'])} "
                     f"cases: max abs {worst['max_abs']:.2e}, min mean cosine {worst['min_mean_cosine']:.6f}")
    if manifest.get("calibration"):
        lines.append(f"calibrated  {manifest['precision_detail']['calibration_method']} on "
                     f"{manifest['calibration']['windows']} real windows")
    return "\n".join(lines)
