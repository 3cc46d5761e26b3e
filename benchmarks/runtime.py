"""End-to-end runtime on the CPU: preprocessing + inference per 10-s window, and live streaming.

Usage: .venv/bin/python benchmarks/runtime.py [--artifacts artifacts/bench] [--precision int8] [--duration-s 5]

1. CSFM Tiny, lead II + PPG, one 10-s window of the real bedside record a103l through Session.embed
   (raw signal in, features out) on the default CPU backend; preprocessing timed alone, and its share.
2. Streaming: the whole 330-s a103l record pushed in 0.25-s chunks (as a monitor sends them) into
   session.stream(hop_s=1); latency from a window's last sample to its result, p50/p99, and how many
   results came later than one hop. Target: preprocessing < 10% of end to end; streaming keeps up.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
from common import ROOT, add_data_flag

from csfm_edge.bench.timing import measure
from csfm_edge.export.onnx_export import ensure_artifacts
from csfm_edge.recordings.datasets import BEDSIDE_RECORD, read_npz_record
from csfm_edge.runtime import Session
from csfm_edge.runtime.backends import BackendOptions
from csfm_edge.runtime.preprocess import preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "bench")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--provider", default=None, help="default: the best CPU backend installed")
    parser.add_argument("--duration-s", type=float, default=5.0)
    add_data_flag(parser)
    args = parser.parse_args()
    data = args.data if args.data.is_dir() else None
    if data is None:
        raise SystemExit("needs the shared recordings (../shared/data or $CSFM_EDGE_DATA) for a103l")
    onnx = ensure_artifacts("tiny", (args.precision,), args.artifacts, data_dir=args.data)[args.precision]
    signal, fs, ids = read_npz_record(data / f"{BEDSIDE_RECORD}.npz")
    rows = [int(np.flatnonzero(ids == i)[0]) for i in (1, 12)]
    record = signal[rows]
    window = record[:, : int(10 * fs)]

    with Session.open(onnx, BackendOptions(provider=args.provider)) as session:
        info = session.info()
        pre = measure(partial(preprocess, window, fs, ["II", "PPG"]), duration_s=args.duration_s)
        e2e = measure(partial(session.embed, window, fs, ["II", "PPG"]), duration_s=args.duration_s)
        print(f"CSFM tiny {info['precision']} on {info['backend']} ({info['provider']}), lead II + PPG, "
              f"one 10-s window of {BEDSIDE_RECORD}")
        print(f"  preprocessing  median {pre.median_ms:7.2f} ms  p90 {pre.p90_ms:7.2f} ms")
        print(f"  end to end     median {e2e.median_ms:7.2f} ms  p90 {e2e.p90_ms:7.2f} ms "
              f"(Session.embed: raw signal in, features out)")
        print(f"  preprocessing share {pre.median_ms / e2e.median_ms * 100:.1f}% of end to end")

        stream = session.stream(fs, ["II", "PPG"], window_s=10, hop_s=1)
        chunk = int(0.25 * fs)
        for start in range(0, record.shape[1], chunk):
            stream.push(record[:, start: start + chunk])
        summary = stream.latency_summary()
        seconds = record.shape[1] / fs
        print(f"streaming {seconds:.0f} s of {BEDSIDE_RECORD} in 0.25-s chunks, 10-s window, 1-s hop: "
              f"{summary['results']} results, latency p50 {summary['p50_s'] * 1000:.1f} ms, "
              f"p99 {summary['p99_s'] * 1000:.1f} ms, {summary['behind']} later than the hop "
              f"({'keeps up' if summary['behind'] == 0 else 'FALLS BEHIND'})")


if __name__ == "__main__":
    main()
