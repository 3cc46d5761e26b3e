"""csfm-edge demo, end to end on a real recording that ships with the package:

1. export CSFM Tiny with seeded random (UNTRAINED) weights to ONNX, verified against PyTorch
   (kept in artifacts/demo/ and reused on later runs);
2. open it in the slim runtime (ONNX Runtime, no PyTorch) and embed a 22-s single-lead ECG:
   preprocessing, 10-s windows, per-window features, an aggregate.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from csfm_edge.export.onnx_export import ensure_artifacts
from csfm_edge.recordings.sample import sample_ecg
from csfm_edge.runtime import Session

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "demo"


def main() -> None:
    print("CSFM tiny (UNTRAINED, seed 0) as ONNX, verified against PyTorch (exported on the first run) ...")
    onnx = ensure_artifacts("tiny", ("fp32",), ARTIFACTS)["fp32"]
    recording = sample_ecg()
    print(f"recording: {recording.source}, {recording.signal.shape[1] / recording.fs:.1f} s "
          f"at {recording.fs:g} Hz, leads {list(recording.leads)}")
    with Session.open(onnx) as session:
        info = session.info()
        print(f"model: CSFM {info['size']} {info['precision']} on {info['backend']} ({info['provider']}) - "
              "UNTRAINED random weights, the features mean nothing clinically")
        start = time.perf_counter()
        result = session.embed(recording.signal, recording.fs, recording.leads, hop_s=5.0)
        took = time.perf_counter() - start
    for start_s, features, flags in zip(result.start_s, result.features, result.flags):
        print(f"  window {start_s:5.1f}-{start_s + 10:5.1f} s: features {features.shape}, "
              f"L2 norm {np.linalg.norm(features):.3f} {'flags: ' + ', '.join(flags) if flags else ''}")
    aggregate = result.aggregate["features"]
    print(f"features: shape {result.features.shape}, aggregate L2 norm {np.linalg.norm(aggregate):.3f}, "
          f"time {took * 1000:.0f} ms (preprocessing + {info['backend']})")


if __name__ == "__main__":
    main()
