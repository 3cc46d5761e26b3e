"""The ward gateway vs one ``Stream`` per bed (today's path), in one run, on real recordings replayed live.

Usage:
    python benchmarks/gateway.py ARTIFACT [--beds 8,16,...] [--seconds 10] [--provider P] [--streams N]

Two wards: lead II + PPG (CinC 2015 a103l, 250 Hz) at a 1-s hop, and 12-lead ECG (CinC 2021 Georgia
records one after another, 500 Hz) at a 2-s hop. Each bed replays its recording from its own offset,
pushed every 50 ms in real time after a head start of up to one window pushed at once (so windows fall
due from the first second, at a random phase per bed). For each number of beds, both paths run for
``--seconds``: the gateway (one Session, windows of all beds batched per lead set) and one Stream per bed,
each on a thread of its own. Latency runs from the moment a window's last sample was due to arrive to its
result (a late producer counts against its path). A load is held when p99 latency is under the hop and
no window is skipped. The engine alone is measured in the same run, with as many callers at once as
the gateway has engine threads (the backend's ``streams``): ``Session.run`` at batch 1 and at
``--max-batch`` first (what batching can gain on this machine bounds what the gateway can gain over one
Stream per bed), and last at the mean batch the gateway formed at its largest held load, against the
gateway's windows/s there.
"""

from __future__ import annotations

import argparse
import threading
import time
import warnings

import numpy as np
from common import add_data_flag

from csfm_edge.bench.ward import engine_rate
from csfm_edge.errors import SignalWarning
from csfm_edge.recordings.datasets import read_npz_record
from csfm_edge.runtime.backends import BackendOptions
from csfm_edge.runtime.gateway import Gateway, GatewayResult
from csfm_edge.runtime.session import Session, StreamLagWarning

TICK_S = 0.05
WINDOW_S = 10.0


def ward_signals(data, kind: str) -> tuple[np.ndarray, float, np.ndarray, float]:
    """(signal [C, N], fs, channel ids, hop) of a ward kind, from the shared recordings."""
    if kind == "ii+ppg":
        signal, fs, ids = read_npz_record(data / "a103l.npz")
        keep = ids >= 0
        return signal[keep].astype(np.float64), fs, ids[keep], 1.0
    records = [read_npz_record(p) for p in sorted(data.glob("E075*.npz"))]
    return np.concatenate([r[0] for r in records], axis=1).astype(np.float64), records[0][1], records[0][2], 2.0


class Replay:
    """Each bed's samples by wall time: bed b's sample i is due at start + (i - head[b]) / fs."""

    def __init__(self, signal: np.ndarray, fs: float, beds: int, hop_s: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.signal, self.fs = signal, fs
        self.offsets = rng.integers(0, signal.shape[1] - int(40 * fs), beds)
        # head start: a window minus a random phase of one hop, pushed at once
        self.head = (fs * (WINDOW_S - rng.uniform(0, hop_s, beds))).astype(int)
        self.sent = np.zeros(beds, int)
        self.start = 0.0

    def chunk(self, bed: int, now: float) -> np.ndarray:
        upto = self.head[bed] + int((now - self.start) * self.fs)
        lo, hi = self.sent[bed], upto
        self.sent[bed] = upto
        n = self.signal.shape[1]
        index = (self.offsets[bed] + np.arange(lo, hi)) % n
        return self.signal[:, index]

    def due(self, bed: int, end_sample: float) -> float:
        """Wall time at which the sample ``end_sample`` of bed ``bed`` was due (before the start: the start)."""
        return self.start + max(end_sample - self.head[bed], 0) / self.fs


def run_gateway(session: Session, replay: Replay, ids, hop_s: float, seconds: float, max_batch: int,
                max_delay_s: float, workers: int) -> dict:
    latencies, batches, engine_s, late = [], [], [], [0]
    lock = threading.Lock()

    def on_result(result: GatewayResult) -> None:
        done = time.perf_counter()
        bed = int(result.bed)
        with lock:
            if "late" in result.flags:
                late[0] += 1
            elif result.batch:
                latencies.append(done - replay.due(bed, (result.start_s + WINDOW_S) * replay.fs))

    beds = len(replay.offsets)
    gateway = Gateway(session, on_result, hop_s=hop_s, max_batch=max_batch, max_delay_s=max_delay_s,
                      workers=workers,
                      on_batch=lambda size, s: (batches.append(size), engine_s.append(s)))
    for b in range(beds):
        gateway.add(str(b), replay.fs, ids)
    replay.start = time.perf_counter()
    end = replay.start + seconds
    while (now := time.perf_counter()) < end:
        for b in range(beds):
            gateway.push(str(b), replay.chunk(b, now))
        time.sleep(max(TICK_S - (time.perf_counter() - now), 0))
    took = time.perf_counter() - replay.start
    gateway.close(drain=False)
    result = summary(latencies, late[0], took, hop_s, float(np.mean(batches)) if batches else 0.0)
    # windows per second of engine time, the engine threads' calls overlapping as Session.run's callers do
    result["engine_rate"] = sum(batches) / sum(engine_s) * session.backend.streams if engine_s else 0.0
    return result


def run_streams(session: Session, replay: Replay, ids, hop_s: float, seconds: float) -> dict:
    latencies, late = [], [0]
    lock = threading.Lock()
    beds = len(replay.offsets)
    streams = [session.stream(replay.fs, ids, hop_s=hop_s) for _ in range(beds)]
    replay.start = time.perf_counter()
    end = replay.start + seconds

    def bed_loop(b: int) -> None:
        mine = []
        while (now := time.perf_counter()) < end:
            for result in streams[b].push(replay.chunk(b, now)):
                mine.append(time.perf_counter() - replay.due(b, result.end_s * replay.fs))
            time.sleep(max(TICK_S - (time.perf_counter() - now), 0))
        with lock:
            latencies.extend(mine)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StreamLagWarning)
        warnings.simplefilter("ignore", SignalWarning)
        threads = [threading.Thread(target=bed_loop, args=(b,)) for b in range(beds)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return summary(latencies, late[0], time.perf_counter() - replay.start, hop_s, 1.0)


def summary(latencies: list[float], late: int, took: float, hop_s: float, mean_batch: float) -> dict:
    lat = np.asarray(latencies) if latencies else np.full(1, np.inf)
    p99 = float(np.percentile(lat, 99))
    return {"windows_per_s": len(latencies) / took, "late": late, "mean_batch": mean_batch,
            "p50_ms": float(np.percentile(lat, 50)) * 1e3, "p99_ms": p99 * 1e3,
            "held": bool(latencies) and p99 < hop_s and late == 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    add_data_flag(parser)
    parser.add_argument("--beds", default="8,16,24,32,48,64,80,96,112,128,160,192,256")
    parser.add_argument("--wards", default="ii+ppg,12lead")
    parser.add_argument("--seconds", type=float, default=10.0, help="per path and number of beds")
    parser.add_argument("--provider", default=None)
    parser.add_argument("--streams", type=int, default=1, help="OpenVINO inferences at once (engine threads)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-delay-ms", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    session = Session.open(args.artifact, BackendOptions(provider=args.provider, streams=args.streams))
    info = session.info()
    print(f"{args.artifact}: {info['backend']} ({info['provider']}), CSFM {info['size']} {info['precision']}, "
          f"{session.backend.streams} engine thread(s)")
    for kind in args.wards.split(","):
        signal, fs, ids, hop_s = ward_signals(args.data, kind)
        windows = session.prepare(signal[:, : int((WINDOW_S + args.max_batch) * fs)], fs, ids, hop_s=1.0).windows.data
        single, full = engine_rate(session, windows, ids, 1), engine_rate(session, windows, ids, args.max_batch)
        print(f"\n{kind} at {fs:g} Hz, hop {hop_s:g} s, {args.seconds:g} s per run")
        print(f"Session.run alone: {single:.1f} windows/s at batch 1, {full:.1f} at batch {args.max_batch} "
              f"(batching gains {full / single:.2f}x here: the gateway's bound over one Stream per bed)")
        print(f"{'beds':>5} {'path':8} {'win/s':>8} {'batch':>6} {'p50 ms':>8} {'p99 ms':>8} {'late':>5} held")
        held = {"gateway": 0, "streams": 0}
        failed: set[str] = set()
        largest = None
        for beds in [int(b) for b in args.beds.split(",")]:
            for path in ("gateway", "streams"):
                if path in failed:
                    continue  # it did not hold fewer beds
                replay = Replay(signal, fs, beds, hop_s)
                if path == "gateway":
                    r = run_gateway(session, replay, ids, hop_s, args.seconds, args.max_batch,
                                    args.max_delay_ms / 1e3, args.workers)
                else:
                    r = run_streams(session, replay, ids, hop_s, args.seconds)
                print(f"{beds:5d} {path:8} {r['windows_per_s']:8.1f} {r['mean_batch']:6.1f} {r['p50_ms']:8.1f} "
                      f"{r['p99_ms']:8.1f} {r['late']:5d} {'yes' if r['held'] else 'no'}", flush=True)
                if not r["held"]:
                    failed.add(path)
                    continue
                held[path] = beds
                if path == "gateway":
                    largest = r
            if len(failed) == 2:
                break
        ratio = held["gateway"] / held["streams"] if held["streams"] else float("inf")
        print(f"most beds held: gateway {held['gateway']}, one Stream per bed {held['streams']} ({ratio:.2f}x)")
        if largest is not None:
            batch = min(max(int(round(largest["mean_batch"])), 1), args.max_batch)
            alone = engine_rate(session, windows, ids, batch)
            print(f"at {held['gateway']} beds the gateway scored {largest['windows_per_s']:.1f} windows/s "
                  f"({largest['engine_rate']:.1f} per second of engine time); Session.run alone at batch {batch}: "
                  f"{alone:.1f} windows/s: throughput {largest['windows_per_s'] / alone:.0%}, engine calls "
                  f"{largest['engine_rate'] / alone:.0%}")


if __name__ == "__main__":
    main()
