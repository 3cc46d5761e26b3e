"""Peak memory of an INT8 export against the number of calibration windows, in one run.

Usage: .venv/bin/python benchmarks/export_memory.py [--size base] [--windows 16,256] [--data DIR]

Each count runs ``csfm-edge export --size SIZE --precision int8 --calibration-windows N`` in a child
process of its own (the same command a user runs) and reads that process's peak resident memory
(``VmHWM``) when it ends. Target: with 256 windows within 10% of the peak with 16.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_data_flag

from csfm_edge.runtime.manifest import read_manifest

# VmHWM, not ru_maxrss: Linux carries the forking parent's peak into the child's ru_maxrss (see
# tests/test_recordings.py's memory test, which measures the same way)
CHILD = ("import re, sys\nfrom pathlib import Path\nfrom csfm_edge.cli import main\ncode = main(sys.argv[1:])\n"
         "print('PEAK_KB', re.search(r'VmHWM:\\s+(\\d+) kB', Path('/proc/self/status').read_text()).group(1), "
         "flush=True)\nsys.exit(code)\n")


def peak_gb(size: str, windows: int, data: Path, out: Path) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of one INT8 export with ``windows`` calibration windows (into ``out``)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, "export", "--size", size, "--precision", "int8",
                           "--data", str(data), "--calibration-windows", str(windows), "--out", str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"export with {windows} windows failed:\n{done.stderr[-2000:]}")
    [line] = [x for x in done.stdout.splitlines() if x.startswith("PEAK_KB")]
    return int(line.split()[1]) / 1024**2, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--windows", default="16,256")
    add_data_flag(parser)
    args = parser.parse_args()
    print(f"CSFM {args.size} INT8 export (UNTRAINED seed 0), calibration on {args.data}")
    print(f"{'windows':>7} {'peak GB':>8} {'vs first':>8} {'s':>6}  worst cosine vs PyTorch on held-out real windows")
    first = None
    for count in (int(n) for n in args.windows.split(",")):
        with tempfile.TemporaryDirectory() as out:
            peak, seconds = peak_gb(args.size, count, args.data, Path(out))
            [artifact] = Path(out).glob("*.int8.onnx")
            cases = read_manifest(artifact).verification.cases
        worst: dict[str, float] = {}
        for case in cases:
            if case.case.startswith("real "):  # the held-out recordings (the grid cases reuse their windows)
                worst[case.case[5:]] = min(worst.get(case.case[5:], 1.0), case.min_cosine)
        first = first or peak
        print(f"{count:7d} {peak:8.2f} {peak / first * 100 - 100:+7.1f}% {seconds:6.0f}  "
              + ", ".join(f"{name} {value:.5f}" for name, value in worst.items()), flush=True)


if __name__ == "__main__":
    main()
