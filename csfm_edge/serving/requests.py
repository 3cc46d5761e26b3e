"""A batch of Triton requests scored together, each bad one answered with its own reason.

Both servers use this: PyTriton's callable (``serve ARTIFACT``) and the Python-backend model that
``triton-repo --platform python`` writes. A request that cannot be scored must never fail the
requests Triton's dynamic batcher put beside it, and its reason is one line with no traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from csfm_edge.errors import CsfmError
from csfm_edge.runtime.session import Session


@dataclass
class Answer:
    """One request's answer: its outputs, or why it was not scored (then ``outputs`` is None)."""

    outputs: dict[str, np.ndarray] | None
    error: str | None = None


def one_line(exc: BaseException) -> str:
    """An exception as a client sees it: its first line, no traceback, no server paths."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def request_problem(signal: np.ndarray) -> str | None:
    """What is wrong with one request's windows, checked before the batch runs (None when fine).

    Triton has already checked shape and dtype against the model's config."""
    if not np.isfinite(signal).all():
        return "signal contains NaN or inf: send preprocessed (finite, z-scored) windows"
    return None


def score_requests(session: Session, ids: np.ndarray, signals: list[np.ndarray]) -> list[Answer]:
    """Run every good request's windows [n, C, 2500] in one ``Session.run``; one Answer per request."""
    errors = [request_problem(x) for x in signals]
    good = [i for i, e in enumerate(errors) if e is None]
    scored: dict[str, np.ndarray] = {}
    if good:
        try:
            scored = session.run(np.concatenate([signals[i] for i in good]), ids)
        except CsfmError as exc:  # one reason for the batch, still as an answer, never a traceback
            errors = [e or one_line(exc) for e in errors]
            good = []
    answers, offset = [], 0
    for i, signal in enumerate(signals):
        if i in good:
            rows = len(signal)
            answers.append(Answer({name: value[offset: offset + rows] for name, value in scored.items()}))
            offset += rows
        else:
            answers.append(Answer(None, errors[i]))
    return answers
