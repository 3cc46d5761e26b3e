"""Served (Triton via PyTriton, dynamic batching, loopback) vs direct Session.run, in one run.

Usage (PyTriton needs numpy < 2, so this runs in .venv-triton, which scripts/test creates):
    .venv-triton/bin/python benchmarks/serving.py artifacts/bench/csfm-tiny.int8.onnx [--seconds 10]

For 1, 8 and 32 concurrent clients, each sending one 10-s lead II + PPG window per request on
127.0.0.1 for a bounded time: throughput and p50/p99 latency, against direct ``Session.run`` at the
batch sizes Triton formed. Target: served throughput at 32 clients >= 80% of direct batched throughput.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.http as http

from csfm_edge.bench.timing import measure
from csfm_edge.recordings.datasets import default_data_dir, lead_set_batches, real_batch
from csfm_edge.serving.pytriton_server import ServeRequest, start
from csfm_edge.serving.triton_repo import model_name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clients(url: str, name: str, window: np.ndarray, count: int, seconds: float) -> list[float]:
    """``count`` threads, each with its own client, sending requests for ``seconds``; all latencies (s)."""
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def loop() -> None:
        client = http.InferenceServerClient(url, network_timeout=60.0)
        tensor = http.InferInput("signal", list(window.shape), "FP32")
        tensor.set_data_from_numpy(window)
        mine = []
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            client.infer(name, [tensor])
            mine.append(time.perf_counter() - start)
        client.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=loop) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--provider", default=None)
    parser.add_argument("--data", type=Path, default=default_data_dir() or ROOT.parent / "shared" / "data",
                        help="shared recordings (default $CSFM_EDGE_DATA, else ../shared/data beside the repository)")
    args = parser.parse_args()
    port = free_port()
    ids = [1, 12]
    with tempfile.TemporaryDirectory(prefix="csfm-triton-") as workspace:
        triton, session, log = start(ServeRequest(args.artifact, ["ii+ppg"], port, max_batch=32,
                                                  max_queue_delay_us=2000, provider=args.provider), Path(workspace))
        try:
            name = model_name(session.model.size, session.precision, "ii+ppg")
            windows = real_batch(lead_set_batches(args.data), ids, 32)
            info = session.info()
            print(f"CSFM {info['size']} {info['precision']} on {info['backend']} ({info['provider']}), "
                  f"lead II + PPG, 10-s windows, loopback")
            print(f"{'clients':>7} {'served win/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10} "
                  f"{'direct win/s':>12} {'served/direct':>13}")
            for count in (1, 8, 32):
                log.sizes.clear()
                latencies = clients(f"127.0.0.1:{port}", name, windows[:1], count, args.seconds)
                served = len(latencies) / args.seconds
                mean_batch = float(np.mean(log.sizes)) if log.sizes else 1.0
                batch = max(1, int(round(mean_batch)))
                direct = measure(lambda b=batch: session.run(windows[:b], ids), duration_s=3.0)
                direct_rate = batch / (direct.median_ms / 1000)
                ms = np.asarray(latencies) * 1000
                print(f"{count:7d} {served:12.1f} {np.percentile(ms, 50):8.1f} {np.percentile(ms, 99):8.1f} "
                      f"{mean_batch:10.1f} {direct_rate:12.1f} {served / direct_rate * 100:12.0f}%")
        finally:
            triton.stop()


if __name__ == "__main__":
    main()
