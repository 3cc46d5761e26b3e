"""csfm-edge's NumPy preprocessing vs the NeuroKit2-based pipeline of the CSFM authors, in one run.

Usage: .venv/bin/python benchmarks/preprocess.py [--data ../shared/data] [--duration-s 2]
Cases: a 12-lead 10 s 500 Hz record (E07500) and a 5-min lead II + PPG record (a103l, 250 Hz).
Needs the dev extra (neurokit2). Target: csfm-edge >= 5x faster.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np

from csfm_edge.bench.timing import measure
from csfm_edge.recordings.datasets import read_npz_record
from csfm_edge.reference_pipeline import authors_preprocess, neurokit_ppg_order
from csfm_edge.runtime.preprocess import preprocess


def load(path: Path, seconds: float | None = None):
    signal, fs, ids = read_npz_record(path)
    keep = ids >= 0
    signal, ids = signal[keep], ids[keep]
    if seconds is not None:
        signal = signal[:, : int(seconds * fs)]
    return signal, fs, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data")
    parser.add_argument("--duration-s", type=float, default=2.0, help="timed seconds per case and pipeline")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no recordings at {args.data} (pass --data)")
    order = neurokit_ppg_order()
    cases = {
        "12-lead 10 s @500 Hz (E07500)": load(args.data / "E07500.npz"),
        "II+PPG 5 min @250 Hz (a103l)": load(args.data / "a103l.npz", seconds=300),
    }
    print(f"{'case':32} {'csfm-edge ms':>13} {'NeuroKit2 ms':>13} {'speed-up':>9} {'max |diff|':>11}")
    for name, (signal, fs, ids) in cases.items():
        ours = measure(partial(preprocess, signal, fs, ids, ppg_order=order), duration_s=args.duration_s)
        theirs = measure(partial(authors_preprocess, signal, fs, ids), duration_s=args.duration_s)
        diff = np.abs(preprocess(signal, fs, ids, ppg_order=order) - authors_preprocess(signal, fs, ids)).max()
        print(f"{name:32} {ours.median_ms:13.2f} {theirs.median_ms:13.2f} "
              f"{theirs.median_ms / ours.median_ms:8.1f}x {diff:11.1e}")


if __name__ == "__main__":
    main()
