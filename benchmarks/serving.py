"""Both Triton servers vs direct Session.run, in one run: PyTriton (``serve ARTIFACT``) and the bundled
tritonserver on a ``triton-repo --platform python`` repository (``serve --repository``).

Usage (PyTriton and its bundled server need numpy < 2, so this runs in .venv-triton, which scripts/test creates):
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
from common import add_data_flag

from csfm_edge.bench.timing import measure
from csfm_edge.recordings.datasets import lead_set_batches, real_batch
from csfm_edge.runtime.backends import BackendOptions
from csfm_edge.runtime.session import Session
from csfm_edge.serving.bundled_server import BundledServer, RepositoryServeRequest
from csfm_edge.serving.pytriton_server import ServeRequest, start
from csfm_edge.serving.triton_repo import TritonRepoRequest, model_name, write_repository


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


CLIENTS = (1, 8, 32)
IDS = [1, 12]


def pytriton_rows(args, windows: np.ndarray, session: Session) -> list[tuple[int, list[float], float]]:
    """(clients, latencies, mean batch) for ``serve ARTIFACT`` (PyTriton), batch sizes from its callable."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="csfm-triton-") as workspace:
        triton, served, log = start(ServeRequest(args.artifact, ["ii+ppg"], port, max_batch=32,
                                                 max_queue_delay_us=2000,
                                                 options=BackendOptions(provider=args.provider)), Path(workspace))
        try:
            name = model_name(served.model.size, served.precision, "ii+ppg")
            rows = []
            for count in CLIENTS:
                log.sizes.clear()
                latencies = clients(f"127.0.0.1:{port}", name, windows[:1], count, args.seconds)
                rows.append((count, latencies, float(np.mean(log.sizes)) if log.sizes else 1.0))
            return rows
        finally:
            triton.stop()
            served.close()


def bundled_rows(args, windows: np.ndarray, session: Session) -> list[tuple[int, list[float], float]]:
    """The same for ``serve --repository`` (bundled tritonserver, Python-backend model), batch sizes from
    Triton's statistics API (inferences per execution)."""
    with tempfile.TemporaryDirectory(prefix="csfm-repo-") as folder:
        repo = Path(folder) / "repo"
        write_repository(TritonRepoRequest([args.artifact], repo, ["ii+ppg"], platform="python", max_batch=32,
                                           max_queue_delay_us=2000, provider=args.provider))
        port = free_port()
        with BundledServer(RepositoryServeRequest(repo, port), log=Path(folder) / "server.log"):
            name = model_name(session.model.size, session.precision, "ii+ppg")
            client = http.InferenceServerClient(f"127.0.0.1:{port}")
            rows = []
            for count in CLIENTS:
                before = client.get_inference_statistics(name)["model_stats"][0]
                latencies = clients(f"127.0.0.1:{port}", name, windows[:1], count, args.seconds)
                after = client.get_inference_statistics(name)["model_stats"][0]
                executions = after["execution_count"] - before["execution_count"]
                rows.append((count, latencies,
                             (after["inference_count"] - before["inference_count"]) / max(executions, 1)))
            client.close()
            return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--provider", default=None)
    add_data_flag(parser)
    args = parser.parse_args()
    windows = real_batch(lead_set_batches(args.data), IDS, 32)
    with Session.open(args.artifact, BackendOptions(provider=args.provider)) as session:
        info = session.info()
        print(f"CSFM {info['size']} {info['precision']} on {info['backend']} ({info['provider']}), "
              f"lead II + PPG, 10-s windows, loopback")
        results = {"PyTriton (serve ARTIFACT)": pytriton_rows(args, windows, session),
                   "bundled tritonserver (serve --repository)": bundled_rows(args, windows, session)}
        direct: dict[int, float] = {}
        print(f"{'server':<42} {'clients':>7} {'served win/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10} "
              f"{'direct win/s':>12} {'served/direct':>13}")
        for server, rows in results.items():
            for count, latencies, mean_batch in rows:
                batch = max(1, int(round(mean_batch)))
                if batch not in direct:
                    timing = measure(lambda b=batch: session.run(windows[:b], IDS), duration_s=3.0)
                    direct[batch] = batch / (timing.median_ms / 1000)
                served = len(latencies) / args.seconds
                ms = np.asarray(latencies) * 1000
                print(f"{server:<42} {count:7d} {served:12.1f} {np.percentile(ms, 50):8.1f} "
                      f"{np.percentile(ms, 99):8.1f} {mean_batch:10.1f} {direct[batch]:12.1f} "
                      f"{served / direct[batch] * 100:12.0f}%")


if __name__ == "__main__":
    main()
