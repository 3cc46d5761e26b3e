"""Batch scoring throughput: a folder of real 10-s 12-lead records, end to end vs inference alone.

Usage: .venv/bin/python benchmarks/batch.py [--copies 4] [--precision int8] [--provider cpu] [--cli-files 5]

In one run, on the same machine and artifact (CSFM Tiny, untrained seed 0):
1. ``csfm-edge run ARTIFACT FOLDER --out table.parquet`` (the library call behind it, ``run_batch``): the
   25 shared 12-lead records copied ``--copies`` times into a folder, read, preprocessed in worker
   threads and scored into one Parquet table; windows/s end to end.
2. The same windows through ``Session.run`` alone (preprocessed beforehand, batch 16): inference only.
3. The per-file CLI loop a user wrote before (one ``csfm-edge run`` process per record) on
   ``--cli-files`` records, per-record time extrapolated.
Target: end to end >= 90% of inference-only throughput.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, add_data_flag

from csfm_edge.export.onnx_export import ensure_artifacts
from csfm_edge.recordings.batch import BatchRequest, run_batch
from csfm_edge.recordings.datasets import read_npz_record
from csfm_edge.runtime import Session
from csfm_edge.runtime.backends import BackendOptions
from csfm_edge.runtime.preprocess import sliding_windows

TWELVE_LEAD = [f"E075{i:02d}" for i in range(10)] + [f"HR0600{i}" for i in range(5)] + \
    [f"JS200{i}" for i in range(10, 20)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "bench")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--provider", default=None, help="default: the best CPU backend installed")
    parser.add_argument("--copies", type=int, default=4, help="copies of the 25 records in the folder")
    parser.add_argument("--cli-files", type=int, default=5, help="records timed through one process each")
    add_data_flag(parser)
    args = parser.parse_args()
    data = args.data if args.data.is_dir() else None
    if data is None:
        raise SystemExit("needs the shared recordings ($CSFM_EDGE_DATA or ../shared/data)")
    onnx = ensure_artifacts("tiny", (args.precision,), args.artifacts, data_dir=args.data)[args.precision]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "records"
        folder.mkdir()
        for copy in range(args.copies):
            for name in TWELVE_LEAD:
                shutil.copyfile(data / f"{name}.npz", folder / f"{name}-{copy}.npz")
        records = sorted(folder.iterdir())
        with Session.open(onnx, BackendOptions(provider=args.provider)) as session:
            backend = session.info()["backend"]
            windows = np.concatenate([sliding_windows(*read_npz_record(p)).data for p in records])
            ids = read_npz_record(records[0])[2]
            session.run(windows[:16], ids)  # warm-up
            started = time.perf_counter()
            for start in range(0, len(windows), 16):
                session.run(windows[start: start + 16], ids)
            inference = len(windows) / (time.perf_counter() - started)
            started = time.perf_counter()
            summary = run_batch(BatchRequest(onnx, [folder], out=Path(tmp) / "table.parquet", progress=False),
                                session)
            end_to_end = summary.windows / (time.perf_counter() - started)
        started = time.perf_counter()
        for path in records[: args.cli_files]:
            subprocess.run([sys.executable, "-m", "csfm_edge", "run", str(onnx), str(path)]
                           + (["--provider", args.provider] if args.provider else []), check=True,
                           capture_output=True)
        per_file = (time.perf_counter() - started) / args.cli_files
    print(f"CSFM Tiny {args.precision} on {backend}, {len(records)} real 10-s 12-lead records ({len(windows)} windows)")
    print(f"  inference only (Session.run, batch 16): {inference:7.2f} windows/s")
    print(f"  batch end to end (run_batch -> Parquet): {end_to_end:7.2f} windows/s  "
          f"= {end_to_end / inference:.0%} of inference only")
    print(f"  one CLI process per file:               {1 / per_file:7.2f} windows/s  "
          f"({per_file:.2f} s per record; batch is {end_to_end * per_file:.1f}x faster)")


if __name__ == "__main__":
    main()
