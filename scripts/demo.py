"""csfm-edge demo: build CSFM Tiny with seeded random (UNTRAINED) weights, preprocess a real ECG,
print the feature vector. Runs anywhere: the recording ships with the package."""

from __future__ import annotations

import time

import numpy as np
import torch

from csfm_edge.model import build
from csfm_edge.runtime.preprocess import preprocess
from csfm_edge.runtime.samples import sample_ecg


def main() -> None:
    recording = sample_ecg()
    print(f"recording: {recording.source}, {recording.signal.shape[1] / recording.fs:.1f} s "
          f"at {recording.fs:g} Hz, leads {list(recording.leads)}")
    model = build("tiny", seed=0)
    print(f"model: CSFM tiny, {model.provenance.upper()} - random weights, the features mean nothing clinically")

    start = time.perf_counter()
    window = preprocess(recording.signal, recording.fs, recording.leads, window="center")
    with torch.inference_mode():
        features = model(torch.from_numpy(window[None]), torch.tensor([1])).numpy()
    took = time.perf_counter() - start
    print(f"features: shape {features.shape}, L2 norm {np.linalg.norm(features):.3f}, "
          f"time {took * 1000:.0f} ms (preprocessing + PyTorch CPU)")


if __name__ == "__main__":
    main()
