"""Archive scoring on Ray vs in process: the same 500+ real recordings, windows/s and Ray's overhead.

Usage: .venv/bin/python benchmarks/ray_batch.py [--records 520] [--precision int8] [--actors 1,2]

In one run, on the same machine, artifact (CSFM Tiny, untrained seed 0) and folder of records (every
10-s stretch of every shared recording as its own .npz, cycled up to ``--records``):
1. in process: ``run_batch`` (``csfm-edge run ... --out table.parquet``), threads reading ahead;
2. the same through Ray (``run_ray_batch``, ``--engine ray``) on a local Ray started once, with 1 and
   2 scoring actors; each run starts its own actor pool and reader tasks, as every CLI run does;
3. a local Ray's start and stop, which a CLI run without ``--ray-address`` adds once.
Windows/s are end to end into the Parquet table. Target: Ray >= 80% of in process at 200+ records.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from common import ROOT, add_data_flag

from csfm_edge.export.onnx_export import ensure_artifacts
from csfm_edge.recordings.batch import BatchRequest, run_batch
from csfm_edge.recordings.ray_engine import RayOptions, ray_connection, run_ray_batch
from csfm_edge.runtime.backends import BackendOptions
from csfm_edge.runtime.tuned import cpu_model

CUT_S = 10.0


def cut_records(data: Path, folder: Path, count: int) -> int:
    """Every 10-s stretch of every shared recording as its own .npz (named leads, rate), cycled to ``count``."""
    stretches = []
    for path in sorted(data.glob("*.npz")):
        with np.load(path) as record:
            signal, fs, leads = record["signal"], float(record["fs"]), record["leads"]
        step = int(CUT_S * fs)
        stretches += [(path.stem, start, signal[:, start: start + step], fs, leads)
                      for start in range(0, signal.shape[1] - step + 1, step)]
    for i in range(count):
        name, start, signal, fs, leads = stretches[i % len(stretches)]
        np.savez(folder / f"{i:06d}-{name}-{start}.npz", signal=signal, fs=fs, leads=leads)
    return len(stretches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "bench")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--provider", default=None, help="default: the best CPU backend installed")
    parser.add_argument("--records", type=int, default=520)
    parser.add_argument("--actors", default="1,2", help="comma-separated scoring actor counts")
    add_data_flag(parser)
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit("needs the shared recordings ($CSFM_EDGE_DATA or ../shared/data)")
    onnx = ensure_artifacts("tiny", (args.precision,), args.artifacts, data_dir=args.data)[args.precision]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "records"
        folder.mkdir()
        distinct = cut_records(args.data, folder, args.records)
        for path in folder.iterdir():  # into the page cache: every run reads warm files
            path.read_bytes()
        request = BatchRequest(onnx, [folder], options=BackendOptions(provider=args.provider), progress=False)
        runs = []
        started = time.perf_counter()
        summary = run_batch(BatchRequest(**{**request.__dict__, "out": Path(tmp) / "process.parquet"}))
        runs.append(("in process (run_batch, 2 reader threads)", summary.windows / (time.perf_counter() - started)))
        model = json.loads(pq.read_schema(Path(tmp) / "process.parquet").metadata[b"csfm_edge"])["model"]
        started = time.perf_counter()
        with ray_connection(RayOptions()):
            ray_start = time.perf_counter() - started
            for actors in (int(a) for a in args.actors.split(",")):
                out = Path(tmp) / f"ray{actors}.parquet"
                started = time.perf_counter()
                summary = run_ray_batch(BatchRequest(**{**request.__dict__, "out": out}), RayOptions(workers=actors))
                runs.append((f"Ray, local, {actors} actor{'s' if actors > 1 else ''}",
                             summary.windows / (time.perf_counter() - started)))
            started = time.perf_counter()
        ray_stop = time.perf_counter() - started
    print(f"CSFM Tiny {args.precision} on {model['backend']} ({model['provider']}), {args.records} real 10-s "
          f"records ({distinct} distinct stretches of the shared recordings), {summary.windows} windows; "
          f"{cpu_model()}, {len(os.sched_getaffinity(0))} CPUs")
    base = runs[0][1]
    for label, rate in runs:
        print(f"  {label:42} {rate:8.1f} windows/s  = {rate / base:5.0%} of in process")
    print(f"  local Ray start {ray_start:.1f} s, stop {ray_stop:.1f} s (once per CLI run without --ray-address)")


if __name__ == "__main__":
    main()
