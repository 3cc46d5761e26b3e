"""The ward gateway through its CLI, live from Lab Streaming Layer: beds as real pylsl outlets in another process.

Usage:
    python benchmarks/gateway_lsl.py ARTIFACT [--beds 8,16,32] [--seconds 30] [-- GATEWAY FLAGS...]

Each bed is one outlet (source_id ``bed-N``, type ECG, channels labelled II and PLETH, 250 Hz) replaying the
bedside recording CinC 2015 a103l from its own offset in real time, 50 ms chunks. ``csfm-edge gateway
ARTIFACT --lsl --duration`` serves them (1-s hop; flags after ``--`` go to it, e.g. ``--streams 2``); its
table gives the windows scored, late windows and the latency from a window's last sample's arrival to its
result. A load is held when p99 latency is under the hop and no window is late.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, add_data_flag

CHUNK_S = 0.05
HOP_S = 1.0


def publish(data: Path, beds: int, seconds: float) -> None:
    """The outlets (this script run with --publish): real time until ``seconds``, after every outlet has a consumer."""
    import pylsl

    from csfm_edge.recordings.datasets import read_npz_record

    signal, fs, ids = read_npz_record(data / "a103l.npz")
    signal = signal[ids >= 0].astype(np.float32)
    outlets = []
    for bed in range(beds):
        info = pylsl.StreamInfo(f"bed-{bed}-ecg", "ECG", 2, fs, "float32", f"bed-{bed}")
        channels = info.desc().append_child("channels")
        for label in ("II", "PLETH"):
            channels.append_child("channel").append_child_value("label", label)
        outlets.append(pylsl.StreamOutlet(info))
    offsets = np.linspace(0, signal.shape[1], beds, endpoint=False).astype(int)
    print("ready", flush=True)
    for outlet in outlets:
        if not outlet.wait_for_consumers(60.0):
            raise SystemExit("no gateway connected within 60 s")
    start, sent = pylsl.local_clock(), 0
    while (now := pylsl.local_clock() - start) < seconds:
        due = int(now * fs)
        index = np.arange(sent, due)
        for outlet, offset in zip(outlets, offsets):
            outlet.push_chunk(np.ascontiguousarray(np.take(signal, index + offset, axis=1, mode="wrap").T))
        sent = due
        time.sleep(CHUNK_S)


def serve(artifact: Path, data: Path, beds: int, seconds: float, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        ward = Path(folder) / "ward.parquet"
        sender = subprocess.Popen([sys.executable, __file__, str(artifact), "--data", str(data), "--publish",
                                   str(beds), "--seconds", str(seconds)], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True)
        try:
            if sender.stdout.readline().strip() != "ready":
                raise SystemExit("the outlets did not start")
            gateway = subprocess.run([sys.executable, "-m", "csfm_edge", "gateway", str(artifact), "--lsl",
                                      "--duration", str(seconds + 4), "--hop", str(HOP_S), "--out", str(ward),
                                      "--no-outlets", *extra], capture_output=True, text=True, cwd=ROOT)
            if gateway.returncode != 0:
                raise SystemExit(gateway.stderr[-2000:])
        finally:
            sender.kill()
        import pyarrow.parquet as pq

        rows = [r for r in pq.read_table(ward).to_pylist() if r["flags"] != "disconnected"]
    scored = [r["latency_ms"] for r in rows if "late" not in r["flags"]]
    latency = np.array(scored) if scored else np.full(1, np.inf)
    p99 = float(np.percentile(latency, 99))
    return {"windows": len(scored), "late": len(rows) - len(scored),
            "p50_ms": float(np.percentile(latency, 50)), "p99_ms": p99,
            "held": len(rows) == len(scored) and p99 < HOP_S * 1e3}


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    add_data_flag(parser)
    parser.add_argument("--beds", default="8,16,32")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--publish", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publish is not None:
        publish(args.data, args.publish, args.seconds)
        return
    print(f"{args.artifact.name} through `csfm-edge gateway --lsl {' '.join(extra)}`, II + PLETH 250 Hz, "
          f"hop {HOP_S:g} s, {args.seconds:g} s per run")
    print(f"{'beds':>5} {'windows':>8} {'p50 ms':>8} {'p99 ms':>8} {'late':>5} held")
    for beds in [int(b) for b in args.beds.split(",")]:
        r = serve(args.artifact.resolve(), args.data.resolve(), beds, args.seconds, extra)
        print(f"{beds:5d} {r['windows']:8d} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
              f"{r['late']:5d} {'yes' if r['held'] else 'no'}", flush=True)
        if not r["held"]:
            break


if __name__ == "__main__":
    main()
