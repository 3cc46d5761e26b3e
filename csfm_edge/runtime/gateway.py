"""``Gateway``: many beds on one :class:`~csfm_edge.runtime.session.Session`, their windows scored in shared calls.

``Session.stream()`` serves one patient with one batch-1 engine call per hop. A ward gateway serves tens
of beds: each bed's samples go into its own ring buffer, its windows fall due on its own hop grid (from
its first sample), and the windows due across beds are preprocessed by worker threads and scored
together, one engine call per lead set (one ``channel_ids`` per call), sent when the batch is full or
the oldest window in it has waited ``max_delay_s`` since its last sample arrived.

Each window is prepared by :meth:`Session.prepare` from the bed's samples of that window plus up to
``context_s`` seconds before it, and scored on the leads usable in it, as :meth:`Session.embed` scores
windows: same filters, same flags (``flat:``/``missing:`` for a lead unusable in the whole window,
``gap:``/``interpolated:`` for NaN runs, ``clipped:``, ``no_signal``; ``amplitude:`` against the bed's
windows so far, as it cannot see later ones). A bed that falls behind (a due
window waited longer than one hop while a newer one is due, or its samples left the ring buffer) skips
to its newest window; each skipped window gives a result flagged ``late``. Memory per bed is its ring
buffer (context + window + slack seconds). A bed's bad signal gives that bed flagged results; errors
of the gateway itself (the engine failing, a callback raising) stop it and are raised by the next
:meth:`Gateway.push` or :meth:`Gateway.close`, never swallowed.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from csfm_edge.config import SAMPLE_RATE_HZ, WINDOW_SAMPLES
from csfm_edge.errors import CsfmError, ParameterError, ShapeError, SignalError
from csfm_edge.leads import lead_names, resolve_leads
from csfm_edge.runtime.preprocess import amplitude_off, check_positive, check_rate
from csfm_edge.runtime.session import Session
from csfm_edge.spec import SPEC

WINDOW_S = WINDOW_SAMPLES / SAMPLE_RATE_HZ
SLACK_S = 4.0  # ring room beyond context + window, at least: due windows wait here for a worker
JITTER_S = 0.05  # a sample's timestamp this close to where it follows on from the last is jitter, not a gap
SPREAD_HISTORY = 600  # windows whose spreads make a bed's usual one (10 min at a 1-s hop)


class GatewayError(CsfmError):
    """The gateway stopped (an engine call or a result callback failed); the cause is chained."""


@dataclass
class GatewayResult:
    """One window of one bed: its outputs (None when not scored), flags and latency."""

    bed: str
    start_s: float  # window start, seconds from the bed's first sample
    timestamp: float | None  # window start on the producer's clock, where push() was given timestamps
    features: np.ndarray | None  # [dim]
    logits: np.ndarray | None  # [classes]
    flags: list[str]
    leads: list[str]  # the leads the window was scored on
    latency_s: float  # from the arrival of the window's last sample to this result
    batch: int  # windows in the engine call that scored it (0: not scored)


@dataclass
class _Lead:
    """One lead's ring buffer: the last ``capacity`` samples, and how many were ever written."""

    fs: float
    capacity: int
    ring: np.ndarray = field(init=False)
    total: int = 0

    def __post_init__(self) -> None:
        self.ring = np.zeros(self.capacity, np.float64)

    def write(self, block: np.ndarray) -> None:
        n = len(block)
        if n >= self.capacity:
            self.ring[:] = block[-self.capacity:]
            self.ring = np.roll(self.ring, (self.total + n) % self.capacity)
        else:
            start = self.total % self.capacity
            first = min(n, self.capacity - start)
            self.ring[start: start + first] = block[:first]
            self.ring[: n - first] = block[first:]
        self.total += n

    def skip(self, n: int) -> None:
        """``n`` missing samples, more than the ring holds: the ring becomes NaN without allocating them all."""
        self.ring[:] = np.nan
        self.total += n

    def read(self, lo: int, hi: int) -> np.ndarray | None:
        """Samples [lo, hi) (absolute indices), or None where some already left the ring."""
        if lo < self.total - self.capacity or hi > self.total:
            return None
        index = np.arange(lo, hi) % self.capacity
        return self.ring[index]


def grid_positions(stamped: np.ndarray, total: int, tolerance: int) -> np.ndarray:
    """Where each sample goes on a lead's grid, given where its timestamp puts it (``stamped``) and the
    samples already there (``total``): right after the last one while the timestamp agrees within
    ``tolerance`` samples (LSL stamps a chunk at its push and back-dates the rest, so chunks overlap or
    part by the push's jitter), at its timestamp where that is further ahead (a real gap: NaN between), or
    -1 (dropped) where it lies further behind (a repeated sample). The grid never strays from the
    timestamps by more than ``tolerance``."""
    out = np.empty(len(stamped), np.int64)
    position = total
    for i, wanted in enumerate(stamped.tolist()):
        if wanted < position - tolerance:
            out[i] = -1
            continue
        if wanted > position + tolerance:
            position = wanted  # a real gap: the samples between are missing
        out[i] = position
        position += 1
    return out


@dataclass
class _Due:
    k: int  # window number on the bed's grid
    arrived: float  # perf_counter() of the push that completed it
    seq: int  # place among the bed's results, which are given in this order


class _Bed:
    """A bed's leads, rates, grid and pending windows; everything behind ``lock``."""

    def __init__(self, name: str, fs, leads, hop_s: float, context_s: float):
        self.name = name
        self.ids = resolve_leads(leads)
        self.names = lead_names(self.ids)
        self.multi_rate = isinstance(fs, (list, tuple, np.ndarray))
        rates = list(fs) if self.multi_rate else [fs] * len(self.ids)
        if len(rates) != len(self.ids):
            raise ShapeError(f"bed {name}: {len(rates)} rates for {len(self.ids)} leads {self.names}")
        rates = [check_rate(r, [i]) for r, i in zip(rates, self.ids)]
        self.fs = rates if self.multi_rate else rates[0]
        self.hop_s = float(check_positive("hop_s", hop_s))
        self.hop = max(int(round(self.hop_s * SAMPLE_RATE_HZ)), 1)  # 250-Hz samples, as Session.embed's grid
        self.context_s = context_s
        keep = context_s + WINDOW_S + max(SLACK_S, 4 * self.hop_s)
        self.leads = [_Lead(r, int(math.ceil(keep * r)) + 1) for r in rates]
        self.lock = threading.Lock()
        self.pending: deque[_Due] = deque()
        self.late: list[_Due] = []
        self.scheduled = False
        self.removed = False
        self.origin: float | None = None  # producer clock of this segment's first sample
        self.first_origin: float | None = None
        self.offset_s = 0.0  # start of this segment from the bed's first sample
        self.next_k = 0
        self.index = {name: row for row, name in enumerate(self.names)}
        self.next_seq = 0  # the next result's place (never reset: results keep their order across segments)
        self.order_lock = threading.Lock()
        self.released = 0  # results given so far, in order
        self.held: dict[int, GatewayResult | None] = {}  # results ready before an earlier one (None: dropped)
        self.spreads: deque[np.ndarray] = deque(maxlen=SPREAD_HISTORY)  # per lead, of the windows prepared so far

    def amplitude(self, names: list[str], rows: list[np.ndarray]) -> np.ndarray:
        """bool [C] over ``names``: the window's spread (its raw samples, ``rows`` per lead of the bed) far
        from the bed's usual one so far, the live ``amplitude:`` flag. Called by the one worker serving the bed."""
        spread = np.array([np.nanstd(row[-int(round(WINDOW_S * lead.fs)):]) if np.isfinite(row).any() else np.nan
                           for row, lead in zip(rows, self.leads)])
        self.spreads.append(spread)
        with np.errstate(all="ignore"):
            usual = np.nanmedian(np.stack(self.spreads), axis=0) if len(self.spreads) > 1 else spread
        return amplitude_off(spread, usual)[[self.index[name] for name in names]]

    def take_seq(self) -> int:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        return seq

    def drop(self, dues) -> None:
        """Windows forgotten unscored (disconnection, removal): later results need not wait for them."""
        with self.order_lock:
            self.held.update((due.seq, None) for due in dues)

    def release(self, seq: int, result: GatewayResult, give: Callable[[GatewayResult], None]) -> None:
        """Give ``result`` and every held one after it that is next in order (results of two engine
        threads, or of two lead sets, can be ready out of order)."""
        with self.order_lock:
            self.held[seq] = result
            while self.released in self.held:
                ready = self.held.pop(self.released)
                self.released += 1
                if ready is not None:
                    give(ready)

    def start_s(self, k: int) -> float:
        return k * self.hop / SAMPLE_RATE_HZ

    def bounds(self, k: int, lead: _Lead) -> tuple[int, int]:
        start = self.start_s(k)
        return int(round(max(start - self.context_s, 0.0) * lead.fs)), int(round((start + WINDOW_S) * lead.fs))

    def collect_due(self, arrived: float) -> None:
        """Append every window whose last sample has now arrived on every lead."""
        while all(lead.total >= self.bounds(self.next_k, lead)[1] for lead in self.leads):
            self.pending.append(_Due(self.next_k, arrived, self.take_seq()))
            self.next_k += 1
        while self.pending and any(lead.total - lead.capacity > self.bounds(self.pending[0].k, lead)[0]
                                   for lead in self.leads):
            self.late.append(self.pending.popleft())  # its samples are leaving the ring: it can no longer be scored

    def reset(self) -> None:
        """Forget this segment's samples and windows (a disconnection): the next push starts a new grid."""
        if self.origin is not None:
            self.offset_s = self.origin - (self.first_origin or self.origin)
        self.offset_s += max(lead.total / lead.fs for lead in self.leads)
        self.origin = None
        for lead in self.leads:
            lead.total = 0
        self.drop(self.pending)
        self.pending.clear()
        self.next_k = 0


@dataclass(eq=False)
class _Entry:
    """A prepared window waiting for its engine call."""

    bed: _Bed
    seq: int
    start_s: float
    timestamp: float | None
    data: np.ndarray  # float32 [C, 2500]
    flags: list[str]
    leads: list[str]
    arrived: float
    hop_s: float
    key: tuple[int, ...] = ()


class Gateway:
    """Beds added, fed and removed from any thread; their windows scored in shared engine calls.

    ``on_result`` receives every :class:`GatewayResult` (scored, flagged or late), from the gateway's
    worker threads (and ``disconnect``'s caller): it must be quick and thread-safe. ``max_batch``
    windows of one lead set make a full call; a call also goes when its oldest window has waited
    ``max_delay_s``. ``workers`` threads preprocess (NumPy/SciPy release the GIL); one engine thread per
    inference the session's backend runs at once (``BackendOptions.streams``: on a CPU, where a batch costs
    about its windows' sum, two OpenVINO streams of one core each score more windows per second than one
    call over both cores; on a GPU one engine thread batches best). Each bed's results come in the order of
    its windows, whichever engine thread scored them.
    """

    def __init__(self, session: Session, on_result: Callable[[GatewayResult], None], *, hop_s: float = 1.0,
                 max_batch: int = 32, max_delay_s: float = 0.05, context_s: float = 0.0, workers: int = 2,
                 max_gap_s: float = 0.1, on_batch: Callable[[int, float], None] | None = None):
        self.session = session
        self.on_result = on_result
        self.on_batch = on_batch  # told the size and seconds of every engine call
        self.hop_s = float(check_positive("hop_s", hop_s))
        self.max_batch = int(check_positive("max_batch", max_batch, integer=True))
        if isinstance(max_delay_s, bool) or not isinstance(max_delay_s, (int, float)) or not 0 <= max_delay_s < 60:
            raise ParameterError(f"max_delay_s must be 0 to 60 s, got {max_delay_s!r}")
        self.max_delay_s = float(max_delay_s)
        if isinstance(context_s, bool) or not isinstance(context_s, (int, float)) or not 0 <= context_s <= 60:
            raise ParameterError(f"context_s must be 0 to 60 s, got {context_s!r}")
        self.context_s = float(context_s)
        self.max_gap_s = float(check_positive("max_gap_s", max_gap_s))
        self._beds: dict[str, _Bed] = {}
        self._beds_lock = threading.Lock()
        self._work: queue.Queue[_Bed | None] = queue.Queue()
        self._batches: dict[tuple[int, ...], deque[_Entry]] = {}
        self._queued: dict[_Bed, list[_Entry]] = {}  # each bed's entries in _batches, oldest first
        self._engine = threading.Condition()
        self._stopping = False
        self._closed = False  # close() was called: nothing more is taken
        self._error: BaseException | None = None
        self._preparers = [threading.Thread(target=self._guard, args=(self._prepare_loop,), daemon=True,
                                            name=f"csfm-gateway-prep{i}")
                           for i in range(int(check_positive("workers", workers, integer=True)))]
        self._engines = [threading.Thread(target=self._guard, args=(self._engine_loop,), daemon=True,
                                          name=f"csfm-gateway-engine{i}") for i in range(session.backend.streams)]
        self._threads = self._preparers + self._engines
        for thread in self._threads:
            thread.start()

    # --- beds ---------------------------------------------------------------------------------

    def add(self, bed: str, fs: float | Sequence[float], leads, *, hop_s: float | None = None) -> None:
        """A new bed: one rate for all its leads, or one rate per lead; ``hop_s`` defaults to the gateway's."""
        self.check()
        made = _Bed(str(bed), fs, leads, self.hop_s if hop_s is None else hop_s, self.context_s)
        with self._beds_lock:
            if made.name in self._beds:
                raise ParameterError(f"bed {made.name!r} is already in the gateway")
            self._beds[made.name] = made

    def remove(self, bed: str) -> None:
        """Stop serving ``bed``: its pending windows are dropped, results already being scored still arrive."""
        with self._beds_lock:
            found = self._beds.pop(str(bed), None)
        if found is None:
            raise ParameterError(f"no bed {bed!r} in the gateway")
        with found.lock:
            found.removed = True
            found.drop(found.pending)
            found.drop(found.late)
            found.pending.clear()
            found.late.clear()

    def beds(self) -> list[str]:
        with self._beds_lock:
            return list(self._beds)

    def disconnect(self, bed: str) -> None:
        """``bed``'s source was lost: its partial and pending windows are dropped and one result flagged
        ``disconnected`` is given; its next push starts a new window grid."""
        found = self._bed(bed)
        with found.lock:
            timestamp = None if found.origin is None else found.origin + max(
                lead.total / lead.fs for lead in found.leads)
            start = found.offset_s + max(lead.total / lead.fs for lead in found.leads)
            found.reset()
            seq = found.take_seq()
        self._deliver(found, seq, GatewayResult(found.name, start, timestamp, None, None, ["disconnected"], [], 0.0, 0))

    def push(self, bed: str, chunk, timestamps=None, *, leads=None) -> None:
        """Samples of ``bed``: [C, n] for its leads (or for ``leads``, a subset sharing one rate), or [n] for
        one lead. ``timestamps`` [n] (seconds, the producer's clock, e.g. LSL's corrected one) place the
        samples on the bed's time line: missing samples become NaN (a gap, flagged), repeated ones are
        dropped. Without them samples follow on from the last. Thread-safe; never blocks on the engine."""
        self.check()
        arrived = time.perf_counter()
        found = self._bed(bed)
        rows = list(range(len(found.ids))) if leads is None else self._rows(found, leads)
        block = np.asarray(chunk)
        if block.dtype.kind not in "iuf":
            raise ShapeError(f"a chunk holds numbers, got {block.dtype} ({type(chunk).__name__})")
        if block.ndim == 1 and len(rows) == 1:
            block = block[None, :]
        if block.ndim != 2 or block.shape[0] != len(rows):
            raise ShapeError(f"bed {found.name}: chunk must be [{len(rows)}, samples] for leads "
                             f"{', '.join(found.names[r] for r in rows)}, got shape {block.shape}")
        rates = {found.leads[r].fs for r in rows}
        if len(rates) > 1:
            raise ShapeError(f"bed {found.name}: one push carries leads of one rate; push each rate on its own")
        if timestamps is not None:
            timestamps = np.asarray(timestamps, np.float64)
            if timestamps.shape != (block.shape[1],) or not np.isfinite(timestamps).all():
                raise ShapeError(f"bed {found.name}: {block.shape[1]} samples need as many finite timestamps, "
                                 f"got {timestamps.shape}")
        block = block.astype(np.float64, copy=False)
        with found.lock:
            if found.removed:
                return
            if timestamps is not None and timestamps.size:
                block = self._place(found, rows, block, timestamps)
            for r in rows:
                found.leads[r].write(block[rows.index(r)])
            found.collect_due(arrived)
            schedule = (found.pending or found.late) and not found.scheduled
            if schedule:
                found.scheduled = True
        if schedule:
            self._work.put(found)

    @staticmethod
    def _rows(found: _Bed, leads) -> list[int]:
        wanted = lead_names(resolve_leads(leads))
        missing = [name for name in wanted if name not in found.index]
        if missing:
            raise ShapeError(f"bed {found.name} has no lead {', '.join(missing)} (it has {', '.join(found.names)})")
        return [found.index[name] for name in wanted]

    @staticmethod
    def _place(found: _Bed, rows: list[int], block: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """``block`` on the bed's sample grid from its timestamps: NaN where samples are missing."""
        if found.origin is None:
            found.origin = float(timestamps[0])
            if found.first_origin is None:
                found.first_origin = found.origin
            else:
                found.offset_s = found.origin - found.first_origin
        lead = found.leads[rows[0]]
        index = grid_positions(np.round((timestamps - found.origin) * lead.fs).astype(np.int64), lead.total,
                               max(int(round(JITTER_S * lead.fs)), 1))
        keep = index >= 0
        if not keep.any():
            return block[:, :0]
        index, block = index[keep], block[:, keep]
        silence = int(index[0]) - lead.total
        if silence > lead.capacity:  # longer than the ring: skipped, never allocated (its windows come out late)
            for r in rows:
                found.leads[r].skip(silence)
        placed = np.full((block.shape[0], int(index[-1]) - lead.total + 1), np.nan)
        placed[:, index - lead.total] = block
        return placed

    def _bed(self, bed: str) -> _Bed:
        with self._beds_lock:
            found = self._beds.get(str(bed))
        if found is None:
            raise ParameterError(f"no bed {bed!r} in the gateway (add it first)")
        return found

    def queue_depth(self) -> int:
        """Windows due but not yet scored, over all beds."""
        with self._beds_lock:
            beds = list(self._beds.values())
        waiting = sum(len(b.pending) + len(b.late) for b in beds)
        with self._engine:
            return waiting + sum(len(entries) for entries in self._batches.values())

    # --- workers ------------------------------------------------------------------------------

    def _guard(self, loop: Callable[[], None]) -> None:
        """Run a worker loop; an unexpected error stops the gateway and is raised to its caller."""
        try:
            loop()
        except BaseException as exc:  # noqa: BLE001 - kept and raised by push()/close()
            self._error = exc
            with self._engine:
                self._stopping = True
                self._engine.notify_all()
            for _ in self._threads:
                self._work.put(None)

    def check(self) -> None:
        """Raise :class:`GatewayError` if a worker stopped (the engine or a result callback failed), or if the
        gateway was closed (samples taken then would never be scored)."""
        self._raise_error()
        if self._closed:
            raise GatewayError("the gateway is closed: make a new one to serve beds again")

    def _raise_error(self) -> None:
        if self._error is not None:
            raise GatewayError(f"the gateway stopped: {type(self._error).__name__}: {self._error}") from self._error

    def _prepare_loop(self) -> None:
        while True:
            found = self._work.get()
            if found is None:
                return
            self._serve(found)

    def _serve(self, found: _Bed) -> None:
        """Take a bed's due windows: skip the stale ones (``late``), copy the rest, prepare them."""
        while True:
            with found.lock:
                now = time.perf_counter()
                late, found.late = found.late, []
                pending = list(found.pending)
                found.pending.clear()
                keep = [d for d in pending[:-1] if now - d.arrived <= found.hop_s] + pending[-1:]
                late += [d for d in pending[:-1] if now - d.arrived > found.hop_s]
                spans = []
                for due in keep:
                    rows = [lead.read(*found.bounds(due.k, lead)) for lead in found.leads]
                    if any(r is None for r in rows):
                        late.append(due)
                    else:
                        spans.append((due, rows))
                origin, offset = found.origin, found.offset_s
                if not late and not spans:
                    found.scheduled = False
                    return
            for due in late:
                self._deliver(found, due.seq, self._unscored(found, due, origin, offset, ["late"]))
            for due, rows in spans:
                self._prepare(found, due, rows, origin, offset)

    @staticmethod
    def _unscored(found: _Bed, due: _Due, origin, offset: float, flags: list[str]) -> GatewayResult:
        start = found.start_s(due.k)
        return GatewayResult(found.name, offset + start, None if origin is None else origin + start, None, None,
                             flags, [], time.perf_counter() - due.arrived, 0)

    def _prepare(self, found: _Bed, due: _Due, rows: list[np.ndarray], origin, offset: float) -> None:
        """The window's last one through Session.prepare; queued for the engine on its usable leads."""
        start = found.start_s(due.k)
        try:
            if found.multi_rate:
                prepared = self.session.prepare(rows, found.fs, found.ids, hop_s=max(self.context_s, 1.0),
                                                max_gap_s=self.max_gap_s)
            else:
                span = np.stack(rows)
                samples = int(span.shape[1] * SAMPLE_RATE_HZ / found.fs)
                prepared = self.session.prepare(span, found.fs, found.ids, max_gap_s=self.max_gap_s,
                                                offsets=[max(samples - WINDOW_SAMPLES, 0)])
        except SignalError as exc:
            flags = [d.flag for d in getattr(exc, "dropped", [])] or [str(exc)]
            self._deliver(found, due.seq, self._unscored(found, due, origin, offset, flags + ["no_signal"]))
            return
        names = prepared.names
        amplitude = np.zeros_like(prepared.windows.flat)
        amplitude[-1] = found.amplitude(names, rows)  # judged on the bed's windows so far, not this one alone
        windows = replace(prepared.windows, amplitude=amplitude)
        flags = [d.flag for d in prepared.dropped] + windows.flags(names)[-1]
        usable = np.flatnonzero(~windows.unusable(names)[-1])
        if not usable.size:
            self._deliver(found, due.seq, self._unscored(found, due, origin, offset, flags + ["no_signal"]))
            return
        key = tuple(int(i) for i in prepared.ids[usable])
        entry = _Entry(found, due.seq, offset + start, None if origin is None else origin + start,
                       windows.data[-1][usable], flags, [names[c] for c in usable], due.arrived, found.hop_s, key)
        with self._engine:
            stale = self._enqueue(entry)
            self._engine.notify()
        for old in stale:
            self._deliver(old.bed, old.seq, GatewayResult(old.bed.name, old.start_s, old.timestamp, None, None,
                                                          ["late"], [], time.perf_counter() - old.arrived, 0))

    def _enqueue(self, entry: _Entry) -> list[_Entry]:
        """Queue ``entry`` for the engine (engine lock held); the bed's queued windows that waited longer than
        its hop are taken out and returned: the engine is behind, so the bed skips to its newest window."""
        now = time.perf_counter()
        queued = self._queued.setdefault(entry.bed, [])
        stale = [e for e in queued if now - e.arrived > e.hop_s]
        for old in stale:
            self._batches[old.key].remove(old)
        queued[:] = [e for e in queued if e not in stale] + [entry]
        self._batches.setdefault(entry.key, deque()).append(entry)
        return stale

    def _engine_loop(self) -> None:
        while True:
            with self._engine:
                while True:
                    if self._stopping and not any(self._batches.values()):
                        return
                    key, wait = self._next_batch()
                    if key is not None:
                        entries = self._batches[key]
                        batch = [entries.popleft() for _ in range(min(self.max_batch, len(entries)))]
                        for entry in batch:
                            self._queued[entry.bed].remove(entry)
                        break
                    self._engine.wait(wait)
            self._score(key, batch)

    def _next_batch(self) -> tuple[tuple[int, ...] | None, float | None]:
        """The lead set to score now (full, or its oldest window waited ``max_delay_s``; everything when
        stopping), else how long to wait for the first one to come due."""
        now = time.perf_counter()
        wait = None
        for key, entries in self._batches.items():
            if not entries:
                continue
            left = entries[0].arrived + self.max_delay_s - now
            if len(entries) >= self.max_batch or left <= 0 or self._stopping:
                return key, None
            wait = left if wait is None else min(wait, left)
        return None, wait

    def _score(self, key: tuple[int, ...], batch: list[_Entry]) -> None:
        started = time.perf_counter()
        outputs = self.session.run(np.stack([e.data for e in batch]), np.asarray(key))
        done = time.perf_counter()
        if self.on_batch is not None:
            self.on_batch(len(batch), done - started)
        features, logits = outputs[SPEC.features], outputs.get(SPEC.logits)
        for row, entry in enumerate(batch):
            result = GatewayResult(entry.bed.name, entry.start_s, entry.timestamp, features[row],
                                   None if logits is None else logits[row], entry.flags, entry.leads,
                                   done - entry.arrived, len(batch))
            self._deliver(entry.bed, entry.seq, result)

    def _deliver(self, found: _Bed, seq: int, result: GatewayResult) -> None:
        found.release(seq, result, self.on_result)

    # --- lifetime -----------------------------------------------------------------------------

    def close(self, drain: bool = True) -> None:
        """Stop the workers; with ``drain`` windows already due are scored first. Raises a stored error.
        Closing twice does nothing more."""
        if self._closed:
            return
        self._closed = True
        if drain:
            deadline = time.perf_counter() + 30.0
            while self.queue_depth() and self._error is None and time.perf_counter() < deadline:
                time.sleep(0.01)
        for _ in self._preparers:
            self._work.put(None)
        for thread in self._preparers:  # first: a window being prepared reaches the engine queue
            thread.join(timeout=30.0)
        with self._engine:
            self._stopping = True
            self._engine.notify_all()
        for thread in self._engines:
            thread.join(timeout=30.0)
        self._raise_error()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc) -> None:
        self.close(drain=exc[0] is None)
