"""Accuracy measures shared by verification, ``run --check``, benchmarks and serving tests."""

from __future__ import annotations

import numpy as np


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity in float64 (the accuracy measure of verification, checks and benchmarks)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)


def deviation(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs difference and mean/min per-row cosine of two [rows, dim] arrays."""
    cosine = cosine_rows(reference, candidate)
    diff = np.abs(np.asarray(reference, np.float64) - np.asarray(candidate, np.float64))
    return {"max_abs": float(diff.max()), "mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min())}
