"""The one accuracy contract: what a tolerance bounds and how two outputs are compared.

Export verification, ``verify``, ``doctor``, ``bench``, ``run --check``, ``tune`` and the tests all compare
through :func:`compare` (Polygraphy's habit: running apart from comparing, one comparator), so a tolerance
means the same thing everywhere: ``max_abs`` bounds the largest absolute difference of any feature, and
``min_cosine`` the cosine of the worst window (never an average).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """What an output must reach against its reference: max abs error and/or worst-window cosine."""

    max_abs: float | None = None
    min_cosine: float | None = None

    def describe(self) -> str:
        parts = []
        if self.max_abs is not None:
            parts.append(f"max abs <= {self.max_abs:g}")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g} in every window")
        return " and ".join(parts)


@dataclass(frozen=True)
class Comparison:
    """Two [rows, dim] outputs compared: worst absolute difference, mean and worst per-row cosine, and
    whether they are within the tolerance (NaN, inf or a shape mismatch never is)."""

    max_abs: float
    mean_cosine: float
    min_cosine: float
    passed: bool

    def describe(self) -> str:
        return (f"max abs {self.max_abs:.3g}, min cosine {self.min_cosine:.6f}, mean cosine {self.mean_cosine:.6f}"
                + ("" if self.passed else " (outside tolerance)"))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)


def compare(reference: np.ndarray, outputs: np.ndarray, tolerance: Tolerance | None = None) -> Comparison:
    """``outputs`` against ``reference`` (both [rows, dim]) under ``tolerance`` (None: just the figures,
    passed when they are finite)."""
    reference, outputs = np.asarray(reference, np.float64), np.asarray(outputs, np.float64)
    if reference.shape != outputs.shape or not reference.size:
        return Comparison(float("inf"), float("-inf"), float("-inf"), False)
    cosine = cosine_rows(reference, outputs)
    max_abs = float(np.abs(reference - outputs).max())
    mean_cos, min_cos = float(cosine.mean()), float(cosine.min())
    passed = bool(np.isfinite([max_abs, min_cos]).all())
    if tolerance is not None:
        passed = passed and (tolerance.max_abs is None or max_abs <= tolerance.max_abs) \
            and (tolerance.min_cosine is None or min_cos >= tolerance.min_cosine)
    return Comparison(max_abs, mean_cos, min_cos, passed)
