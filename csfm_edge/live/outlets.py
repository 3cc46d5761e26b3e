"""An LSL outlet per bed for its results, so displays subscribe to them as they do to monitors.

``<source_id>-csfm`` (type ``CSFM``, irregular rate, float32): one sample per scored window, the features
then the logits where the artifact has a head, stamped with the LSL time of the window's last sample.
``<source_id>-csfm-flags`` (type ``Markers``, string): the window's flags, for every flagged window.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import pylsl

from csfm_edge.config import SAMPLE_RATE_HZ, WINDOW_SAMPLES
from csfm_edge.runtime.gateway import GatewayResult
from csfm_edge.runtime.manifest import TensorInfo

WINDOW_S = WINDOW_SAMPLES / SAMPLE_RATE_HZ


def _outlet(name: str, kind: str, labels: list[str], fmt: str, source_id: str) -> pylsl.StreamOutlet:
    info = pylsl.StreamInfo(name, kind, len(labels), pylsl.IRREGULAR_RATE, fmt, source_id)
    channels = info.desc().append_child("channels")
    for label in labels:
        channels.append_child("channel").append_child_value("label", label)
    return pylsl.StreamOutlet(info)


class BedOutlets:
    """Results and flags outlets, made the first time a bed has a result."""

    def __init__(self, outputs: Mapping[str, TensorInfo]):
        self.outputs = dict(outputs)
        self.labels = [f"{name}{i}" for name, tensor in self.outputs.items() for i in range(tensor.width)]
        self._outlets: dict[str, tuple[pylsl.StreamOutlet, pylsl.StreamOutlet]] = {}
        self._lock = threading.Lock()

    def _for(self, bed: str) -> tuple[pylsl.StreamOutlet, pylsl.StreamOutlet]:
        with self._lock:
            if bed not in self._outlets:
                self._outlets[bed] = (_outlet(f"{bed}-csfm", "CSFM", self.labels, "float32", f"{bed}-csfm"),
                                      _outlet(f"{bed}-csfm-flags", "Markers", ["flags"], "string",
                                              f"{bed}-csfm-flags"))
            return self._outlets[bed]

    def send(self, result: GatewayResult) -> None:
        values, flags = self._for(result.bed)
        stamp = pylsl.local_clock() if result.timestamp is None else result.timestamp + WINDOW_S
        if result.features is not None:
            row = np.concatenate([np.asarray(getattr(result, name), np.float32) for name in self.outputs])
            values.push_sample(row, stamp)
        if result.flags:
            flags.push_sample(["; ".join(result.flags)], stamp)

    def close(self) -> None:
        with self._lock:
            self._outlets.clear()
