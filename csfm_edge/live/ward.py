"""``csfm-edge gateway --lsl``: a ward's LSL streams through one Gateway, results to a table, outlets, metrics.

Runs until ``duration_s`` has passed or SIGINT/SIGTERM arrives; either way the LSL reader stops, the
windows already due are scored, and the table is written whole. Any error of the gateway or the reader
stops the run and is raised (the table keeps what was flushed).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csfm_edge.errors import CsfmError
from csfm_edge.fileio import sha256_of
from csfm_edge.live.lsl import DEFAULT_TYPES, BedInfo, LslBeds
from csfm_edge.live.metrics import WardMetrics
from csfm_edge.live.outlets import BedOutlets
from csfm_edge.live.table import WardTable
from csfm_edge.progress import console_progress
from csfm_edge.runtime.backends import BackendOptions
from csfm_edge.runtime.gateway import Gateway, GatewayResult
from csfm_edge.runtime.session import Session

FLUSH_S = 2.0


@dataclass
class WardRequest:
    artifact: Path
    out: Path | None = None  # .parquet
    types: Sequence[str] = DEFAULT_TYPES
    lead_map: Mapping[str, str] | None = None
    hop_s: float = 1.0
    max_delay_s: float = 0.05
    max_batch: int = 32
    duration_s: float | None = None  # None: until SIGINT/SIGTERM
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    options: BackendOptions | None = None  # how the artifact runs (provider, threads, streams, device)
    outlets: bool = True
    workers: int = 2
    flush_s: float = FLUSH_S


@dataclass
class WardSummary:
    beds: set[str] = field(default_factory=set)
    scored: int = 0
    flagged: int = 0
    late: int = 0
    disconnects: int = 0
    latencies: list[float] = field(default_factory=list)

    def p99_text(self) -> str:
        return f"{np.percentile(self.latencies, 99) * 1e3:.1f} ms" if self.latencies else "-"


class _Stop:
    """Set by ``duration_s`` or SIGINT/SIGTERM (handlers installed only on the main thread, then restored)."""

    def __init__(self):
        self.event = threading.Event()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Stop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_ward(request: WardRequest, progress: Callable[[str], None] = console_progress) -> WardSummary:
    """Serve the ward until ``duration_s`` or SIGINT/SIGTERM; the summary of what was scored."""
    check_request(request)
    session = Session.open(request.artifact, request.options)
    outputs = session.manifest.outputs
    summary = WardSummary()
    beds: dict[str, BedInfo] = {}
    lock = threading.Lock()
    gateway: Gateway | None = None
    metrics = None
    if request.metrics_port is not None:  # first: a port in use stops the run before anything is written
        metrics = WardMetrics(lambda: gateway.queue_depth() if gateway else 0,
                              lambda: len(gateway.beds()) if gateway else 0)
        metrics.serve(request.metrics_port, request.metrics_host)
        progress(f"metrics on http://{request.metrics_host}:{request.metrics_port}/metrics")
    table = None
    if request.out is not None:
        table = WardTable(request.out, outputs, sha256_of(request.artifact),
                          {**session.info(), "artifact": str(request.artifact), "hop_s": request.hop_s,
                           "source": "lsl", "types": list(request.types)})
    outlets = BedOutlets(outputs) if request.outlets else None

    def on_result(result: GatewayResult) -> None:
        with lock:
            summary.beds.add(result.bed)
            if "late" in result.flags:
                summary.late += 1
            elif "disconnected" in result.flags:
                summary.disconnects += 1
            if result.batch:
                summary.scored += 1
                summary.latencies.append(result.latency_s)
            if result.flags:
                summary.flagged += 1
            bed = beds.get(result.bed)
        if metrics is not None:
            metrics.record(result)
        if table is not None:
            table.add(result, {"fs": bed.fs if bed else [], "mapping": bed.mapping if bed else {}})
        if outlets is not None:
            outlets.send(result)

    def on_bed(info: BedInfo) -> None:
        with lock:
            beds[info.bed] = info
        progress(f"bed {info.bed}: {', '.join(info.leads)} at {', '.join(f'{r:g}' for r in info.fs)} Hz")

    gateway = Gateway(session, on_result, hop_s=request.hop_s, max_batch=request.max_batch,
                      max_delay_s=request.max_delay_s, workers=request.workers,
                      on_batch=(lambda size, seconds: metrics.batch_scored(size)) if metrics else None)
    source = LslBeds(gateway, types=request.types, lead_map=request.lead_map, on_bed=on_bed,
                     on_lost=lambda bed, stream: progress(f"bed {bed}: lost {stream} (disconnected)"),
                     on_skip=lambda stream, reason: progress(f"skipped {stream}: {reason}"))
    progress(f"gateway on {session.info()['backend']} ({session.info()['provider']}): looking for LSL streams of "
             f"type {', '.join(request.types)}")
    started = time.monotonic()
    flushed = started
    try:
        with _Stop() as stop:
            while not stop.event.wait(0.1):
                source.check()
                gateway.check()
                now = time.monotonic()
                if table is not None and now - flushed >= request.flush_s:
                    table.flush()
                    flushed = now
                if request.duration_s is not None and now - started >= request.duration_s:
                    break
    finally:
        source.close()
        try:
            gateway.close(drain=True)
        finally:
            if table is not None:
                table.close()
            if outlets is not None:
                outlets.close()
            session.close()
    if not summary.beds and request.duration_s is not None:
        progress(f"no bed was seen: no LSL stream of type {', '.join(request.types)} with a CSFM lead was found")
    return summary


def check_request(request: WardRequest) -> None:
    """Refuse bad settings before any stream is opened."""
    if request.duration_s is not None and not request.duration_s > 0:
        raise CsfmError(f"--duration must be > 0 s, got {request.duration_s:g}")
    if not request.hop_s > 0:
        raise CsfmError(f"--hop must be > 0 s, got {request.hop_s:g}")
    if not 0 <= request.max_delay_s < 60:
        raise CsfmError(f"--max-delay-ms must be 0 to 60000, got {request.max_delay_s * 1e3:g}")
    if min(request.max_batch, request.workers) < 1:
        raise CsfmError(f"--max-batch and --workers must be at least 1, got {request.max_batch} and {request.workers}")
    if request.metrics_port is not None and not 0 < request.metrics_port < 65536:
        raise CsfmError(f"--metrics-port must be 1 to 65535, got {request.metrics_port}")
