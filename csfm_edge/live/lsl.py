"""Beds from Lab Streaming Layer: streams found continuously, one bed per ``source_id``, fed to a Gateway.

Monitors and wearables publish each signal as an LSL stream; a bed may publish an ECG stream and a
PPG stream at different rates under one ``source_id``. Each stream's leads come from its channel labels
(``desc/channels/channel/label``, the LSL/XDF convention) through the package's label table and the
user's lead map, as for files. Samples are pushed with their LSL timestamps, clock-corrected to this
machine by liblsl, so a bed's streams line up by time and missing samples become gaps.

A stream that is lost (its outlet closed, its host gone) makes its bed ``disconnected``: the bed's
partial window is dropped and the bed rebuilt from the streams still there; when the stream is seen
again it joins its bed again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pylsl

from csfm_edge.errors import CsfmError, InputFileError
from csfm_edge.leads import LEAD_NAMES, clean_label, vendor_lead
from csfm_edge.runtime.gateway import Gateway

DEFAULT_TYPES = ("ECG", "PPG")
POLL_S = 0.02  # how often inlets are read: adds at most this to latency
RESOLVE_S = 0.5  # how often the resolver's list of visible streams is looked at
MAX_BUFFER_S = 30  # liblsl keeps at most this much of a stream while the gateway is busy
# Clock correction to this machine's clock, but no de-jittering: liblsl's smoother assumes samples without
# gaps and would move the samples after a dropout; the gateway rounds each timestamp to its bed's sample grid.
PROCESSING = pylsl.proc_clocksync | pylsl.proc_monotonize


def stream_labels(info: pylsl.StreamInfo) -> list[str]:
    """The channel labels of a full StreamInfo (from an inlet), or "" for channels without one."""
    labels, channel = [], info.desc().child("channels").child("channel")
    while not channel.empty() and len(labels) < info.channel_count():
        labels.append(channel.child_value("label"))
        channel = channel.next_sibling("channel")
    return labels + [""] * (info.channel_count() - len(labels))


def stream_leads(labels: Sequence[str], lead_map: Mapping[str, str] | None, source: str
                 ) -> tuple[list[int], list[str], dict[str, str]]:
    """Rows of a stream that carry a CSFM lead, those leads, and the label -> lead mapping used."""
    rows, leads, mapping = [], [], {}
    for row, label in enumerate(labels):
        found = vendor_lead(label, lead_map) if label else None
        if found is None:
            continue
        if LEAD_NAMES[found] in leads:
            raise InputFileError(f"{source}: two channels map to lead {LEAD_NAMES[found]}")
        rows.append(row)
        leads.append(LEAD_NAMES[found])
        mapping[label] = LEAD_NAMES[found]
    if not leads:
        named = ", ".join(repr(clean_label(label)) for label in labels if label) or "none"
        raise InputFileError(f"{source}: no channel label is a CSFM lead (labels: {named}); name them in "
                             "desc/channels/channel/label or map them with --lead-map")
    return rows, leads, mapping


@dataclass
class _Inlet:
    """One open stream: its inlet, bed, rows kept, leads and rate."""

    uid: str
    bed: str
    name: str
    inlet: pylsl.StreamInlet
    rows: list[int]
    leads: list[str]
    fs: float
    mapping: dict[str, str]


@dataclass
class BedInfo:
    """What a bed is made of now: its streams' leads, rates and label mapping (for the results table)."""

    bed: str
    leads: list[str]
    fs: list[float]
    mapping: dict[str, str] = field(default_factory=dict)


class LslBeds:
    """Resolves ECG/PPG streams continuously and feeds them to ``gateway``, one bed per ``source_id``.

    ``on_bed(info)`` is told when a bed is (re)built and ``on_lost(bed, stream)`` when one of its streams
    is lost; ``on_skip(stream, reason)`` when a stream cannot be served (no known lead, nominal rate 0).
    """

    def __init__(self, gateway: Gateway, *, types: Sequence[str] = DEFAULT_TYPES,
                 lead_map: Mapping[str, str] | None = None, on_bed: Callable[[BedInfo], None] = lambda info: None,
                 on_lost: Callable[[str, str], None] = lambda bed, stream: None,
                 on_skip: Callable[[str, str], None] = lambda stream, reason: None):
        if not types:
            raise CsfmError("--types names no stream type")
        self.gateway = gateway
        self.lead_map = lead_map
        self.on_bed, self.on_lost, self.on_skip = on_bed, on_lost, on_skip
        predicate = " or ".join(f"type='{t}'" for t in types)
        self.resolver = pylsl.ContinuousResolver(pred=predicate, forget_after=2.0)
        self.inlets: dict[str, _Inlet] = {}
        self.skipped: set[str] = set()  # streams refused, or lost: the resolver lists them a while longer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="csfm-lsl")
        self._error: BaseException | None = None
        self._thread.start()

    def bed_info(self, bed: str) -> BedInfo:
        parts = [i for i in self.inlets.values() if i.bed == bed]
        return BedInfo(bed, [lead for i in parts for lead in i.leads], [i.fs for i in parts for _ in i.leads],
                       {k: v for i in parts for k, v in i.mapping.items()})

    def _loop(self) -> None:
        try:
            resolved = 0.0
            while not self._stop.is_set():
                if time.monotonic() - resolved > RESOLVE_S:
                    self._discover()
                    resolved = time.monotonic()
                self._pull()
                self._stop.wait(POLL_S)
        except BaseException as exc:  # noqa: BLE001 - raised by check()
            self._error = exc

    def check(self) -> None:
        """Raise what stopped the reader thread, if anything did."""
        if self._error is not None:
            raise CsfmError(f"the LSL reader stopped: {type(self._error).__name__}: {self._error}") from self._error

    def _discover(self) -> None:
        changed: set[str] = set()
        for info in self.resolver.results():
            uid = info.uid()
            if uid in self.inlets or uid in self.skipped:
                continue
            name = f"{info.source_id() or '(no source_id)'}/{info.name()} ({info.type()})"
            if not info.source_id():
                self._skip(uid, name, "no source_id: a bed is named by its stream's source_id")
                continue
            if info.nominal_srate() <= 0:
                self._skip(uid, name, "irregular rate: a bed needs a fixed sampling rate")
                continue
            inlet = pylsl.StreamInlet(info, max_buflen=MAX_BUFFER_S, recover=False, processing_flags=PROCESSING)
            try:
                full = inlet.info(timeout=1.0)
                rows, leads, mapping = stream_leads(stream_labels(full), self.lead_map, name)
            except (CsfmError, pylsl.util.TimeoutError, pylsl.util.LostError) as exc:
                inlet.close_stream()
                self._skip(uid, name, str(exc))
                continue
            bed = info.source_id()
            taken = {lead for i in self.inlets.values() if i.bed == bed for lead in i.leads}
            if taken & set(leads):
                inlet.close_stream()
                self._skip(uid, name, f"bed {bed} already has {', '.join(sorted(taken & set(leads)))} from "
                                      "another stream")
                continue
            self.inlets[uid] = _Inlet(uid, bed, name, inlet, rows, leads, float(info.nominal_srate()), mapping)
            changed.add(bed)
        for bed in changed:
            self._rebuild(bed)

    def _skip(self, uid: str, name: str, reason: str) -> None:
        self.skipped.add(uid)
        self.on_skip(name, reason)

    def _rebuild(self, bed: str) -> None:
        """(Re)create ``bed`` in the gateway from its current streams (a new window grid)."""
        if bed in self.gateway.beds():
            self.gateway.remove(bed)
        info = self.bed_info(bed)
        if not info.leads:
            return
        rates = info.fs[0] if len(set(info.fs)) == 1 else info.fs
        self.gateway.add(bed, rates, info.leads)
        self.on_bed(info)

    def _pull(self) -> None:
        lost: list[_Inlet] = []
        for item in list(self.inlets.values()):
            try:
                samples, stamps = item.inlet.pull_chunk(timeout=0.0, max_samples=4096, as_numpy=True)
            except pylsl.util.LostError:
                lost.append(item)
                continue
            if len(stamps):
                chunk = np.asarray(samples, np.float64)[:, item.rows].T
                self.gateway.push(item.bed, chunk, stamps, leads=item.leads)
        for item in lost:
            del self.inlets[item.uid]
            self.skipped.add(item.uid)
            item.inlet.close_stream()
            self.gateway.disconnect(item.bed)
            self.on_lost(item.bed, item.name)
            self._rebuild(item.bed)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10.0)
        for item in self.inlets.values():
            item.inlet.close_stream()
        self.inlets.clear()
