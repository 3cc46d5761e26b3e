"""Recordings in: readers for every file format, the sample that ships with the package, real data sets.

Above the runtime (it turns files into the arrays :class:`~csfm_edge.runtime.Session` takes) and
below export and benchmarks (which verify, calibrate and time on real recordings). Torch-free.
"""

from csfm_edge.recordings.readers import Recording, read_recording

__all__ = ["Recording", "read_recording"]
