"""Writing and comparing :class:`~csfm_edge.runtime.session.EmbedResult` s."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from csfm_edge.fileio import write_atomically
from csfm_edge.metrics import Comparison, Tolerance, compare
from csfm_edge.runtime.session import EmbedResult


def compare_results(reference: EmbedResult, candidate: EmbedResult, tolerance: Tolerance | None = None) -> Comparison:
    """The features of two runs over the same windows, compared (windows unscored in both left out)."""
    scored = ~(np.isnan(reference.features).all(axis=1) & np.isnan(candidate.features).all(axis=1))
    return compare(reference.features[scored], candidate.features[scored], tolerance)


def write_results(path: Path, result: EmbedResult, info: dict) -> None:
    """``.npz`` (arrays) or ``.json`` (lists); written whole or not at all."""
    aggregate = result.aggregate
    if path.suffix.lower() == ".json":
        payload = {
            "artifact": info, "leads": result.leads, "start_s": result.start_s.tolist(), "flags": result.flags,
            "dropped": [{"lead": d.lead, "reason": d.reason} for d in result.dropped],
            "features": result.features.tolist(),
            "logits": None if result.logits is None else result.logits.tolist(),
            "aggregate": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in aggregate.items()},
        }
        write_atomically(path, json.dumps(payload).encode())
        return
    arrays = {"features": result.features, "start_s": result.start_s, "leads": np.asarray(result.leads),
              "flags": np.asarray(["; ".join(f) for f in result.flags]),
              "artifact": np.asarray(json.dumps(info)), "clean_windows": np.asarray(aggregate["clean_windows"]),
              "dropped": np.asarray([f"{d.lead}: {d.reason}" for d in result.dropped], dtype=str)}
    if result.logits is not None:
        arrays["logits"] = result.logits
    if aggregate["features"] is not None:
        arrays["aggregate_features"] = aggregate["features"]
    if aggregate["logits"] is not None:
        arrays["aggregate_logits"] = aggregate["logits"]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomically(path, buffer.getvalue())
