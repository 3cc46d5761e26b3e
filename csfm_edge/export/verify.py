"""Verification: run the PyTorch reference and a candidate backend on the same real inputs, compare.

Running is apart from comparing (as in Polygraphy): :func:`compare` is a pure function of two output
dicts; :func:`verify` runs both backends over the cases and checks the precision's tolerance from
:data:`csfm_edge.export.spec.SPEC`. The figures go into the artifact's manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from csfm_edge.errors import VerificationError
from csfm_edge.metrics import cosine_rows
from csfm_edge.profiles import Profile
from csfm_edge.recordings.datasets import lead_set_batches, shaped_batch
from csfm_edge.runtime.backends.base import Backend
from csfm_edge.spec import SPEC, Tolerance


@dataclass(frozen=True)
class Case:
    name: str
    signal: np.ndarray
    channel_ids: np.ndarray

    def feed(self) -> dict[str, np.ndarray]:
        return SPEC.feed(self.signal, self.channel_ids)


@dataclass(frozen=True)
class CaseResult:
    case: str
    shape: list[int]
    max_abs: float
    mean_cosine: float
    min_cosine: float
    logits_max_abs: float | None = None

    def within(self, tolerance: Tolerance) -> bool:
        finite = np.isfinite([self.max_abs, self.min_cosine]).all()
        ok_abs = tolerance.max_abs is None or self.max_abs <= tolerance.max_abs
        ok_cos = tolerance.min_cosine is None or self.mean_cosine >= tolerance.min_cosine
        return bool(finite and ok_abs and ok_cos)


@dataclass
class Verification:
    precision: str
    tolerance: Tolerance
    data: str
    results: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.within(self.tolerance) for r in self.results)

    def failures(self) -> list[str]:
        return [f"{r.case}: max abs {r.max_abs:.3g}, mean cosine {r.mean_cosine:.6f}"
                for r in self.results if not r.within(self.tolerance)]

    def worst(self) -> dict:
        return {"max_abs": max(r.max_abs for r in self.results),
                "min_mean_cosine": min(r.mean_cosine for r in self.results)}

    def to_dict(self) -> dict:
        return {"precision": self.precision, "tolerance": asdict(self.tolerance), "passed": self.passed,
                "data": self.data, "worst": self.worst(), "cases": [asdict(r) for r in self.results]}


def compare(name: str, shape: tuple[int, ...], reference: dict[str, np.ndarray],
            candidate: dict[str, np.ndarray]) -> CaseResult:
    """Features (and logits when both have them): max abs error and per-sample cosine. NaN fails."""
    ref, got = reference[SPEC.features], candidate[SPEC.features]
    if ref.shape != got.shape:
        return CaseResult(name, list(shape), float("inf"), float("-inf"), float("-inf"))
    cos = cosine_rows(ref, got)
    logits = None
    if SPEC.logits in reference and SPEC.logits in candidate:
        logits = float(np.abs(reference[SPEC.logits] - candidate[SPEC.logits]).max())
    return CaseResult(name, list(shape), float(np.abs(ref - got).max()), float(cos.mean()), float(cos.min()), logits)


def verification_cases(data_dir: Path | None, profiles: list[Profile] | None = None) -> tuple[list[Case], str]:
    """Real lead-set batches, then the shape grid (batch x channels x time) built from real windows; for an
    engine, only the cases its optimization profiles admit (a ``clinic`` engine takes 12 channels only)."""
    batches = lead_set_batches(data_dir)
    cases = [Case(f"real {b.name}", b.signal, b.channel_ids) for b in batches]
    grid = SPEC.verification_grid
    for batch in grid["batch"]:
        for channels in grid["channels"]:
            for time in grid["time"]:
                signal, ids = shaped_batch(batches, batch, channels, time)
                cases.append(Case(f"B{batch} C{channels} T{time}", signal, ids))
    if profiles:
        cases = [c for c in cases if any(p.contains(*c.signal.shape) for p in profiles)]
        if not cases:
            raise VerificationError("no verification case fits the engine's profiles "
                                    + ", ".join(p.name for p in profiles))
    return cases, "; ".join(b.source for b in batches)


def run_cases(backend: Backend, cases: list[Case], label: str = "",
              progress: Callable[[str], None] | None = None) -> list[dict[str, np.ndarray]]:
    """Outputs of ``backend`` for every case, in order (the reference is run once, then reused)."""
    outputs = []
    for i, case in enumerate(cases, 1):
        if progress:
            progress(f"{label} [{i}/{len(cases)}] {case.name}")
        outputs.append(backend.run(case.feed()))
    return outputs


def verify(reference_outputs: list[dict[str, np.ndarray]], candidate: Backend, cases: list[Case],
           precision: str, data: str, progress: Callable[[str], None] | None = None) -> Verification:
    """Run ``candidate`` over the cases and compare with the reference's outputs under the tolerance."""
    result = Verification(precision, SPEC.tolerances[precision], data)
    candidate_outputs = run_cases(candidate, cases, f"verify {precision}", progress)
    for case, ref, got in zip(cases, reference_outputs, candidate_outputs):
        result.results.append(compare(case.name, case.signal.shape, ref, got))
    return result
