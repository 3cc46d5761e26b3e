"""Verification: run the PyTorch reference and a candidate backend on the same real inputs, compare.

Running is apart from comparing (as in Polygraphy): the comparison is :func:`csfm_edge.metrics.compare`, the
package's one comparator; :func:`verify` runs the candidate over the cases and checks the tolerance of
the precision's record (:data:`csfm_edge.spec.PRECISIONS`). The figures go into the artifact's manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csfm_edge.errors import VerificationError
from csfm_edge.metrics import Comparison, Tolerance, compare
from csfm_edge.profiles import Profile
from csfm_edge.recordings.datasets import lead_set_batches, shaped_batch
from csfm_edge.runtime.backends.base import Backend
from csfm_edge.runtime.manifest import CaseRecord, VerificationRecord, WorstCase
from csfm_edge.spec import SPEC, precision_record


@dataclass(frozen=True)
class Case:
    name: str
    signal: np.ndarray
    channel_ids: np.ndarray

    def feed(self) -> dict[str, np.ndarray]:
        return SPEC.feed(self.signal, self.channel_ids)


@dataclass
class Verification:
    """Every case of a candidate against the reference, each compared under the precision's tolerance."""

    precision: str
    tolerance: Tolerance
    data: str
    results: list[tuple[CaseRecord, Comparison]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(comparison.passed for _, comparison in self.results)

    def failures(self) -> list[str]:
        return [f"{record.case}: {comparison.describe()}" for record, comparison in self.results
                if not comparison.passed]

    def worst(self) -> WorstCase:
        records = [record for record, _ in self.results]
        return WorstCase(max(r.max_abs for r in records), min(r.mean_cosine for r in records),
                         min(r.min_cosine for r in records))

    def record(self) -> VerificationRecord:
        """As the manifest keeps it."""
        return VerificationRecord(self.precision, self.tolerance, self.passed, self.data, self.worst(),
                                  [record for record, _ in self.results])


def compare_case(name: str, shape: tuple[int, ...], reference: dict[str, np.ndarray],
                 candidate: dict[str, np.ndarray], tolerance: Tolerance) -> tuple[CaseRecord, Comparison]:
    """Features under the tolerance (:func:`csfm_edge.metrics.compare`), and the logits' max abs error
    where both have logits."""
    comparison = compare(reference[SPEC.features], candidate[SPEC.features], tolerance)
    logits = None
    if SPEC.logits in reference and SPEC.logits in candidate:
        logits = float(np.abs(reference[SPEC.logits] - candidate[SPEC.logits]).max())
    return CaseRecord(name, list(shape), comparison.max_abs, comparison.mean_cosine, comparison.min_cosine,
                      logits), comparison


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
    result = Verification(precision, precision_record(precision).tolerance, data)
    candidate_outputs = run_cases(candidate, cases, f"verify {precision}", progress)
    for case, ref, got in zip(cases, reference_outputs, candidate_outputs):
        result.results.append(compare_case(case.name, case.signal.shape, ref, got, result.tolerance))
    return result
