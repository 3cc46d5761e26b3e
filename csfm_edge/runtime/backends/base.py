"""The backend protocol: something that maps a feed of named arrays to named outputs.

Backends only execute (as Polygraphy's runners do); preprocessing, windowing and manifests live in
the session, so comparing two backends is running the same feed through both.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    """Every backend is opened by :func:`csfm_edge.runtime.backends.open_backend` from
    ``(path, manifest, options)`` and declares what it can do, so no caller probes or guesses:
    ``on_gpu`` (it computes on an NVIDIA GPU) and ``device_timing`` (it has ``execute_only()`` and
    ``gpu_compute_ms()``: device time without host copies, between CUDA events)."""

    name: str  # e.g. "onnxruntime", "tensorrt", "torch"
    on_gpu: bool
    device_timing: bool

    def describe(self) -> dict:
        """What runs: provider or device, library versions."""

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{"signal": f32[B, C, T], "channel_ids": i64[C]}`` -> ``{"features": ..., "logits"?: ...}``."""

    def close(self) -> None:
        """Release sessions, engines and device memory."""
