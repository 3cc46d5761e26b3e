"""Beds from Lab Streaming Layer: streams found continuously, one bed per ``source_id``, fed to a Gateway.

Monitors and wearables publish each signal as an LSL stream; a bed may publish an ECG stream and a
PPG stream at different rates under one ``source_id``. Each stream's leads come from its channel labels
(``desc/channels/channel/label``, the LSL/XDF convention) through the package's label table and the
user's lead map, as for files. Samples are pushed with their LSL timestamps, clock-corrected to this
machine by liblsl, so a bed's streams line up by time and missing samples become gaps. A bed (re)built
starts from the latest first sample among its streams. New streams are opened (which takes up to
seconds each) by their own threads, so a bed joining never holds up the others.

A stream that is lost (its outlet closed, its host gone) makes its bed ``disconnected``: the bed's
partial window is dropped and the bed rebuilt from the streams still there; when the stream is seen
again it joins its bed again.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pylsl

from csfm_edge.errors import CsfmError, InputFileError
from csfm_edge.leads import LEAD_NAMES, clean_label, vendor_lead
from csfm_edge.runtime.gateway import Gateway

DEFAULT_TYPES = ("ECG", "PPG")
POLL_S = 0.02  # how often inlets are read: adds at most this to latency
RESOLVE_S = 0.5  # how often the resolver's list of visible streams is looked at
OPEN_TIMEOUT_S = 2.0  # a new stream's full info, data connection and first clock offset, each at most
START_WAIT_S = 2.0  # a (re)built bed waits this long at most for each of its streams' first samples
OPENERS = 8  # streams opened at once (a ward starting up opens them all: about half a second each)
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
        self.inlets: dict[str, _Inlet] = {}  # the reader thread's
        # beds (re)built and not yet fed: when they started waiting, and each stream's samples since
        self._starting: dict[str, tuple[float, dict[str, list[tuple[np.ndarray, np.ndarray]]]]] = {}
        self._opened: queue.SimpleQueue[_Inlet] = queue.SimpleQueue()  # from the opener to the reader
        self._seen: set[str] = set()  # the opener's: streams opened, refused or lost (listed a while longer)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._threads = [threading.Thread(target=self._guard, args=(loop,), daemon=True, name=name)
                         for loop, name in ((self._read_loop, "csfm-lsl"), (self._open_loop, "csfm-lsl-open"))]
        for thread in self._threads:
            thread.start()

    def bed_info(self, bed: str) -> BedInfo:
        parts = [i for i in self.inlets.values() if i.bed == bed]
        return BedInfo(bed, [lead for i in parts for lead in i.leads], [i.fs for i in parts for _ in i.leads],
                       {k: v for i in parts for k, v in i.mapping.items()})

    def _guard(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException as exc:  # noqa: BLE001 - raised by check()
            self._error = exc

    def check(self) -> None:
        """Raise what stopped the reader or opener thread, if anything did."""
        if self._error is not None:
            raise CsfmError(f"the LSL reader stopped: {type(self._error).__name__}: {self._error}") from self._error

    def _read_loop(self) -> None:
        """Take the streams the opener made ready, and read every open one every ``POLL_S``: this thread never
        waits on the network, so a bed joining never holds up the others."""
        while not self._stop.is_set():
            changed: set[str] = set()
            while True:
                try:
                    changed |= self._join(self._opened.get_nowait())
                except queue.Empty:
                    break
            for bed in changed:
                self._rebuild(bed)
            self._pull()
            self._stop.wait(POLL_S)

    def _open_loop(self) -> None:
        """Open the streams the resolver newly lists (their full info, data connection and clock offset take
        up to seconds each), every ``RESOLVE_S``, ``OPENERS`` at once."""
        with ThreadPoolExecutor(OPENERS, thread_name_prefix="csfm-lsl-open") as pool:
            while not self._stop.is_set():
                for info in self.resolver.results():
                    if info.uid() not in self._seen:
                        self._seen.add(info.uid())
                        pool.submit(self._guard, lambda info=info: self._open(info))
                self._stop.wait(RESOLVE_S)

    def _open(self, info: pylsl.StreamInfo) -> None:
        if self._stop.is_set():
            return
        name = f"{info.source_id() or '(no source_id)'}/{info.name()} ({info.type()})"
        if not info.source_id():
            self.on_skip(name, "no source_id: a bed is named by its stream's source_id")
            return
        if info.nominal_srate() <= 0:
            self.on_skip(name, "irregular rate: a bed needs a fixed sampling rate")
            return
        inlet = pylsl.StreamInlet(info, max_buflen=MAX_BUFFER_S, recover=False, processing_flags=PROCESSING)
        try:
            full = inlet.info(timeout=OPEN_TIMEOUT_S)
            rows, leads, mapping = stream_leads(stream_labels(full), self.lead_map, name)
            inlet.open_stream(timeout=OPEN_TIMEOUT_S)
            inlet.time_correction(timeout=OPEN_TIMEOUT_S)  # the first estimate, or the first read would wait for it
        except (CsfmError, pylsl.util.TimeoutError, pylsl.util.LostError) as exc:
            inlet.close_stream()
            self.on_skip(name, str(exc) or type(exc).__name__)
            return
        self._opened.put(_Inlet(info.uid(), info.source_id(), name, inlet, rows, leads, float(info.nominal_srate()),
                                mapping))

    def _join(self, item: _Inlet) -> set[str]:
        """An opened stream joins its bed, unless the bed has its leads from another stream; the beds changed."""
        taken = {lead for i in self.inlets.values() if i.bed == item.bed for lead in i.leads}
        if taken & set(item.leads):
            item.inlet.close_stream()
            self.on_skip(item.name, f"bed {item.bed} already has {', '.join(sorted(taken & set(item.leads)))} "
                                    "from another stream")
            return set()
        self.inlets[item.uid] = item
        return {item.bed}

    def _rebuild(self, bed: str) -> None:
        """(Re)create ``bed`` in the gateway from its current streams (a new window grid)."""
        self._starting.pop(bed, None)
        if bed in self.gateway.beds():
            self.gateway.remove(bed)
        info = self.bed_info(bed)
        if not info.leads:
            return
        rates = info.fs[0] if len(set(info.fs)) == 1 else info.fs
        self.gateway.add(bed, rates, info.leads)
        self._starting[bed] = (time.monotonic(), {})
        self.on_bed(info)

    def _start(self, bed: str) -> None:
        """Feed a (re)built bed once each of its streams has samples (or after ``START_WAIT_S``), all from the
        latest first sample among them: a stream's backlog from before another's first sample would leave that
        other lead missing (a ``gap:`` flag) at the start of the bed's new grid."""
        since, pulled = self._starting[bed]
        streams = [i for i in self.inlets.values() if i.bed == bed]
        if len(pulled) < len(streams) and time.monotonic() - since < START_WAIT_S:
            return
        del self._starting[bed]
        if not pulled:
            return
        start = max(chunks[0][1][0] for chunks in pulled.values())
        for item in streams:
            if item.uid not in pulled:
                continue
            chunk = np.concatenate([c for c, _ in pulled[item.uid]], axis=1)
            stamps = np.concatenate([t for _, t in pulled[item.uid]])
            keep = stamps >= start - 0.5 / item.fs
            if keep.any():
                self.gateway.push(bed, chunk[:, keep], stamps[keep], leads=item.leads)

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
                if item.bed in self._starting:
                    self._starting[item.bed][1].setdefault(item.uid, []).append((chunk, np.asarray(stamps)))
                else:
                    self.gateway.push(item.bed, chunk, stamps, leads=item.leads)
        for bed in list(self._starting):
            self._start(bed)
        for item in lost:
            del self.inlets[item.uid]
            item.inlet.close_stream()
            self.gateway.disconnect(item.bed)
            self.on_lost(item.bed, item.name)
            self._rebuild(item.bed)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10.0)
        while True:  # opened after the reader stopped
            try:
                self._opened.get_nowait().inlet.close_stream()
            except queue.Empty:
                break
        for item in self.inlets.values():
            item.inlet.close_stream()
        self.inlets.clear()
