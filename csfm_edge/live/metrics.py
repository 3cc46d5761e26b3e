"""Prometheus metrics of a running gateway (prometheus-client), under the ``csfm_edge_`` namespace.

Its own registry (not the process-wide default), so two gateways in one process, or tests, never
share counters. ``serve(port)`` answers ``/metrics`` over HTTP from a background thread.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from csfm_edge.errors import CsfmError
from csfm_edge.runtime.gateway import GatewayResult

NAMESPACE = "csfm_edge"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class WardMetrics:
    """Counters and histograms fed by every gateway result, and gauges read when scraped."""

    def __init__(self, queue_depth: Callable[[], int], beds: Callable[[], int]):
        self.registry = CollectorRegistry()
        r = dict(namespace=NAMESPACE, registry=self.registry)
        self.scored = Counter("windows_scored", "Windows scored by the engine", ["bed"], **r)
        self.flagged = Counter("windows_flagged", "Windows with at least one flag (scored or not)", ["bed"], **r)
        self.late = Counter("late_windows", "Windows skipped because their bed fell behind", ["bed"], **r)
        self.disconnects = Counter("disconnects", "Streams lost (their bed flagged disconnected)", ["bed"], **r)
        self.latency = Histogram("latency_seconds", "From a window's last sample arriving to its result", ["bed"],
                                 buckets=LATENCY_BUCKETS, **r)
        self.batch = Histogram("batch_size", "Windows per engine call", buckets=BATCH_BUCKETS, **r)
        Gauge("queue_depth", "Windows due and not yet scored", **r).set_function(queue_depth)
        Gauge("beds", "Beds being served", **r).set_function(beds)

    def record(self, result: GatewayResult) -> None:
        if "disconnected" in result.flags:
            self.disconnects.labels(result.bed).inc()
            return
        if "late" in result.flags:
            self.late.labels(result.bed).inc()
            return
        if result.flags:
            self.flagged.labels(result.bed).inc()
        if result.batch:
            self.scored.labels(result.bed).inc()
            self.latency.labels(result.bed).observe(result.latency_s)

    def batch_scored(self, size: int) -> None:
        self.batch.observe(size)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise CsfmError(f"--metrics-port {port}: cannot listen on {host} ({exc.strerror or exc})") from None
