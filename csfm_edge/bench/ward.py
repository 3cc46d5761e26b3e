"""A ward at saturation: how many windows per second the gateway scores when its beds send faster than it
keeps up, against one batch-1 engine call per window (what one ``Stream`` per bed makes). The ratio bounds
how many more beds the gateway serves than one Stream per bed on the machine: where a batch costs about
its windows' sum (a small CPU) it is near 1; where batching pays (a GPU) it is the gateway's reason to be.
``benchmarks/gateway.py`` measures the beds held in real time; this is the short form ``gpu-check`` runs.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from csfm_edge.bench.timing import calls_per_second
from csfm_edge.config import SAMPLE_RATE_HZ, WINDOW_SAMPLES
from csfm_edge.recordings.readers import Recording
from csfm_edge.runtime.gateway import Gateway, GatewayResult
from csfm_edge.runtime.session import Session

WINDOW_S = WINDOW_SAMPLES / SAMPLE_RATE_HZ


def engine_rate(session: Session, windows: np.ndarray, ids: np.ndarray, batch: int, duration_s: float = 2.0) -> float:
    """Windows/s of ``Session.run`` alone on ``windows[:batch]``, called by as many threads at once as a gateway
    on ``session`` has engine threads (the backend's ``streams``)."""
    chunk = windows[:batch]
    calls = calls_per_second(lambda: session.run(chunk, ids), callers=session.backend.streams, duration_s=duration_s)
    return calls * batch


def ward_saturation(session: Session, recording: Recording, *, beds: int = 256, seconds: float = 5.0,
                    max_batch: int = 64, workers: int = 4) -> dict:
    """``beds`` copies of ``recording`` (one rate; each bed from its own offset, wrapping around) pushed one
    second of signal per bed per round, without waiting, for ``seconds``: windows/s scored (the rest come
    out ``late``), mean batch, and ``Session.run`` at batch 1 with as many callers as the gateway has
    engine threads. ``gain`` is the first over the last."""
    signal = np.asarray(recording.signal, np.float64)
    fs, second = float(recording.fs), int(round(float(recording.fs)))
    scored, batches, lock = [0], [], threading.Lock()

    def on_result(result: GatewayResult) -> None:
        if result.batch:
            with lock:
                scored[0] += 1

    gateway = Gateway(session, on_result, hop_s=1.0, max_batch=max_batch, max_delay_s=0.005, workers=workers,
                      on_batch=lambda size, took: batches.append(size))
    offsets = np.linspace(0, signal.shape[1], beds, endpoint=False).astype(int)
    try:
        for bed, offset in enumerate(offsets):
            gateway.add(str(bed), fs, recording.leads)
            gateway.push(str(bed), np.take(signal, np.arange(offset, offset + int(WINDOW_S * fs)), axis=1, mode="wrap"))
        sent, start = int(WINDOW_S * fs), time.perf_counter()
        while time.perf_counter() - start < seconds:
            for bed, offset in enumerate(offsets):
                gateway.push(str(bed), np.take(signal, np.arange(offset + sent, offset + sent + second), axis=1,
                                               mode="wrap"))
            sent += second
        took = time.perf_counter() - start
        with lock:
            done = scored[0]
    finally:
        gateway.close(drain=False)
    prepared = session.prepare(signal[:, : int(WINDOW_S * fs)], fs, recording.leads)
    single = engine_rate(session, prepared.windows.data, prepared.ids, 1, duration_s=1.0)
    rate = done / took
    return {"beds": beds, "seconds": round(took, 2), "windows_per_s": round(rate, 1),
            "mean_batch": round(float(np.mean(batches)), 1) if batches else 0.0,
            "batch1_windows_per_s": round(single, 1), "gain": round(rate / single, 2)}
