"""The manifest inside an ONNX file (``metadata_props``), written with ``onnx`` (no torch needed).

The runtime reads it back without ``onnx`` (:mod:`csfm_edge.runtime.onnx_file`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx

from csfm_edge.errors import CsfmError
from csfm_edge.runtime.manifest import EMBEDDED_KEY, Manifest, embedded_text
from csfm_edge.runtime.onnx_file import read_onnx_file


def set_embedded_manifest(model: onnx.ModelProto, text: str | None) -> None:
    """Put ``text`` into the model's metadata as its manifest (None: remove the manifest)."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != EMBEDDED_KEY]
    del model.metadata_props[:]
    for key, value in kept + ([(EMBEDDED_KEY, text)] if text is not None else []):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def embed_manifest(path: Path, manifest: Manifest) -> Manifest:
    """Write ``manifest`` (with the graph's sha256) into the ONNX file itself, so a renamed file explains
    itself; return it as embedded. The graph's bytes are checked unchanged by the rewrite."""
    graph_sha256 = read_onnx_file(path, hash_graph=True).graph_sha256
    manifest = dataclasses.replace(manifest, graph_sha256=graph_sha256)
    model = onnx.load(str(path), load_external_data=False)
    set_embedded_manifest(model, embedded_text(manifest))
    onnx.save(model, str(path))
    if read_onnx_file(path, hash_graph=True).graph_sha256 != graph_sha256:
        raise CsfmError(f"{path.name}: embedding the manifest changed the graph's bytes")
    return manifest
