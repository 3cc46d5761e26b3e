"""INT8 calibration data: real recordings through the runtime's own preprocessing.

A reader in ONNX Runtime's ``CalibrationDataReader`` form (``get_next()`` returns one feed, then
None), with ``len()`` and ``rewind()``; it refuses an empty set. The set is fixed (records, windows,
file hashes) and described for the manifest, so a calibration can be reproduced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from csfm_edge.errors import CsfmError
from csfm_edge.fileio import sha256_of
from csfm_edge.recordings.datasets import LeadSetBatch, calibration_batches
from csfm_edge.runtime.manifest import CalibrationRecord, LeadSetWindows
from csfm_edge.spec import SPEC


class RecordingCalibrationReader(CalibrationDataReader):
    """One feed per real window. ``set_range`` is ONNX Runtime's strided-calibration hook: quantize_static
    with ``CalibStridedMinMax`` collects one stride, merges its ranges (or histograms) and frees it before
    the next, so calibration memory does not grow with the number of windows."""

    def __init__(self, batches: list[LeadSetBatch]):
        self.batches = batches
        self.feeds = [SPEC.feed(b.signal[k: k + 1], b.channel_ids)
                      for b in batches for k in range(len(b.signal))]
        if not self.feeds:
            raise CsfmError("calibration set is empty: no windows could be read from the calibration data")
        self._next, self._end = 0, len(self.feeds)

    @classmethod
    def from_data_dir(cls, data_dir: Path | None, windows: int) -> RecordingCalibrationReader:
        batches = calibration_batches(data_dir, windows)
        if not any(len(b.signal) for b in batches):
            raise CsfmError(f"no calibration windows in {data_dir}: verification and calibration never share a "
                            "window, so a record under a minute goes whole to one of them (alternately by file name) "
                            "and a longer one gives calibration 15-45 s of each minute; add recordings")
        return cls(batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self.feeds))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        self._next += 1
        return self.feeds[self._next - 1]

    def __len__(self) -> int:
        return len(self.feeds)

    def rewind(self) -> None:
        self._next, self._end = 0, len(self.feeds)

    def describe(self) -> CalibrationRecord:
        files = sorted({f for b in self.batches for f in b.files})
        return CalibrationRecord(len(self.feeds), {b.name: LeadSetWindows(len(b.signal), b.source)
                                                   for b in self.batches}, {f.name: sha256_of(f) for f in files})
