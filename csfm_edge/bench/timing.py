"""Latency measurement the way trtexec does it: warm up for a while, then time many iterations."""

from __future__ import annotations

import math
import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Per-call wall-clock statistics in milliseconds."""

    iterations: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(ms: np.ndarray) -> Latency:
    ms = np.asarray(ms, dtype=np.float64)
    return Latency(len(ms), float(np.median(ms)), float(np.percentile(ms, 90)), float(np.percentile(ms, 99)),
                   float(ms.mean()), float(ms.min()))


def measure(fn: Callable[[], object], *, warmup_s: float = 0.2, duration_s: float = 1.0,
            min_iterations: int = 5, max_iterations: int = 100_000, timed_ms: Callable[[], float] | None = None
            ) -> Latency:
    """Call ``fn`` for ``warmup_s`` untimed, then for at least ``duration_s`` and ``min_iterations``; each call
    is timed by the wall clock, or by ``timed_ms`` (which runs once and returns its own time, e.g. GPU time
    between CUDA events) in place of ``fn``."""
    deadline = time.perf_counter() + warmup_s
    fn()
    while time.perf_counter() < deadline:
        fn()
    samples: list[float] = []
    end = time.perf_counter() + duration_s
    while (len(samples) < min_iterations or time.perf_counter() < end) and len(samples) < max_iterations:
        if timed_ms is not None:
            samples.append(timed_ms())
            continue
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return summarize(np.asarray(samples))


def calls_per_second(fn: Callable[[], object], *, callers: int = 1, warmup_s: float = 0.2,
                     duration_s: float = 1.0) -> float:
    """Calls of ``fn`` completed per second with ``callers`` threads calling it at once: each caller warms up
    for ``warmup_s``, then calls until ``duration_s`` has passed and it made at least one timed call (a call
    may take longer than the duration); the rate is the timed calls over the span from the first timed
    call's start to the last one's end. A backend's throughput as a server or gateway with that many engine
    threads drives it, where :func:`measure` gives one caller's latency."""
    counted = [0] * callers
    spans: list[tuple[float, float]] = [(math.inf, -math.inf)] * callers
    start = time.perf_counter()
    timed_from, end = start + warmup_s, start + warmup_s + duration_s

    def call(slot: int) -> None:
        while (now := time.perf_counter()) < end or not counted[slot]:
            fn()
            if now >= timed_from:
                counted[slot] += 1
                spans[slot] = (min(spans[slot][0], now), time.perf_counter())

    threads = [threading.Thread(target=call, args=(slot,)) for slot in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counted) / max(max(e for _, e in spans) - min(b for b, _ in spans), 1e-9)


def in_own_process(fn: Callable[..., dict], *args) -> dict:
    """``fn(*args)`` in a freshly spawned interpreter with thread pools of its own: no OpenVINO, ONNX Runtime or
    PyTorch pool of this process is live in it (they fight when they share one: a PyTorch bf16 call measured
    5x slower beside a live OpenVINO session). A process that dies returns ``{"error": ...}``."""
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(fn, *args).result()
    except BrokenProcessPool:
        return {"error": "the process running it died (crash or out of memory)"}
