"""Writing and comparing :class:`~csfm_edge.runtime.session.EmbedResult` s."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from csfm_edge.runtime.manifest import write_atomically
from csfm_edge.runtime.session import EmbedResult


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity in float64 (the accuracy measure of verification, checks and benchmarks)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)


def compare_results(reference: EmbedResult, candidate: EmbedResult) -> dict:
    """Max abs difference and per-window cosine of the features of two runs over the same windows."""
    a, b = reference.features.astype(np.float64), candidate.features.astype(np.float64)
    cosine = cosine_rows(a, b)
    return {"max_abs": float(np.abs(a - b).max()), "mean_cosine": float(cosine.mean()),
            "min_cosine": float(cosine.min())}


def write_results(path: Path, result: EmbedResult, info: dict) -> None:
    """``.npz`` (arrays) or ``.json`` (lists); written whole or not at all."""
    aggregate = result.aggregate
    if path.suffix.lower() == ".json":
        payload = {
            "artifact": info, "leads": result.leads, "start_s": result.start_s.tolist(), "flags": result.flags,
            "features": result.features.tolist(),
            "logits": None if result.logits is None else result.logits.tolist(),
            "aggregate": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in aggregate.items()},
        }
        write_atomically(path, json.dumps(payload).encode())
        return
    arrays = {"features": result.features, "start_s": result.start_s, "leads": np.asarray(result.leads),
              "flags": np.asarray(["; ".join(f) for f in result.flags]),
              "artifact": np.asarray(json.dumps(info)), "clean_windows": np.asarray(aggregate["clean_windows"])}
    if result.logits is not None:
        arrays["logits"] = result.logits
    if aggregate["features"] is not None:
        arrays["aggregate_features"] = aggregate["features"]
    if aggregate["logits"] is not None:
        arrays["aggregate_logits"] = aggregate["logits"]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomically(path, buffer.getvalue())
