"""A real recording that ships with the package, so demos run where no data folder exists.

pyhrv's SampleECG (BSD-3-Clause, see ``csfm_edge/data/README.md``): 22 s of single-lead ECG from a
BITalino at 1000 Hz, raw 10-bit ADC in the 6th column.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from csfm_edge.recordings.readers import Recording

# BITalino ECG sensor transfer function: ECG(mV) = (ADC / 2^n - 1/2) * VCC / G * 1000.
_BITALINO_VCC_V = 3.3
_BITALINO_ECG_GAIN = 1100.0
_ADC_BITS = 10


def sample_ecg() -> Recording:
    """The vendored BITalino ECG in mV; a wearable single lead, fed as lead II as the spec says."""
    text = resources.files("csfm_edge").joinpath("data/pyhrv_SampleECG.txt").read_text()
    adc = np.loadtxt(text.splitlines(), comments="#", usecols=5)
    millivolts = (adc / 2**_ADC_BITS - 0.5) * _BITALINO_VCC_V / _BITALINO_ECG_GAIN * 1000.0
    return Recording(millivolts[None, :], 1000.0, ["II"], source="pyhrv 0.5.0 SampleECG.txt (BITalino, BSD-3-Clause)")
