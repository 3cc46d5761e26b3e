"""The authors' preprocessing as they run it, channel by channel through NeuroKit2 (``dev`` extra).

Not used at run time: the parity tests and ``benchmarks/preprocess.py`` compare
:func:`csfm_edge.runtime.preprocess.preprocess` against it. It uses NeuroKit2's own PPG filter order
(3 in 0.2.10-0.2.11, 2 from 0.2.12), which :func:`neurokit_ppg_order` reports.
"""

from __future__ import annotations

import numpy as np
from scipy import signal as sps

from csfm_edge.config import SAMPLE_RATE_HZ, WINDOW_SAMPLES
from csfm_edge.leads import PPG_ID


def neurokit_ppg_order() -> int:
    """The Butterworth order of the installed NeuroKit2's ``ppg_clean(method="elgendi")``."""
    import neurokit2

    major, minor, patch = (int(p) for p in neurokit2.__version__.split(".")[:3])
    return 3 if (major, minor) == (0, 2) and patch <= 11 else 2


def authors_preprocess(signal: np.ndarray, fs: float, channel_ids) -> np.ndarray:
    """Resample, ``ecg_clean`` / ``ppg_clean`` per channel, first 2500 samples, z-score; float32."""
    import neurokit2 as nk

    x = np.asarray(signal, dtype=np.float64)
    if fs != SAMPLE_RATE_HZ:
        x = sps.resample(x, int(x.shape[1] * SAMPLE_RATE_HZ / fs), axis=1)
    cleaned = np.stack([
        nk.ppg_clean(row, sampling_rate=int(SAMPLE_RATE_HZ)) if lead == PPG_ID
        else nk.ecg_clean(row, sampling_rate=int(SAMPLE_RATE_HZ))
        for row, lead in zip(x, channel_ids)
    ])
    window = cleaned[:, :WINDOW_SAMPLES]
    if window.shape[1] < WINDOW_SAMPLES:
        window = np.pad(window, ((0, 0), (0, WINDOW_SAMPLES - window.shape[1])))
    return ((window - window.mean(1, keepdims=True)) / (window.std(1, keepdims=True) + 1e-8)).astype(np.float32)
