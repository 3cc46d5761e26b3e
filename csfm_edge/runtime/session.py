"""``Session``: one artifact, opened through its manifest, run on raw or preprocessed signals.

The manifest decides what an artifact is and how its inputs are preprocessed (sample rate, filters,
PPG order); the suffix picks the backend: ``.plan`` TensorRT, ``.onnx`` ONNX Runtime (best provider
unless one is named), a checkpoint (``.pt``/``.pth``) or ``reference=True`` the PyTorch reference,
the only path that imports torch. Backends only execute; windowing, flags and aggregation live here.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from csfm_edge.config import SAMPLE_RATE_HZ, WINDOW_SAMPLES
from csfm_edge.errors import (
    ArtifactError,
    FlatChannelError,
    LeadError,
    NonFiniteError,
    NoSignalError,
    ParameterError,
    ShapeError,
    SignalError,
    SignalWarning,
)
from csfm_edge.leads import PPG_ID, lead_names, resolve_leads
from csfm_edge.profiles import probe_shape
from csfm_edge.runtime.backends import BackendOptions, is_checkpoint, open_backend
from csfm_edge.runtime.backends.base import Backend
from csfm_edge.runtime.manifest import Manifest, PreprocessingInfo, preprocessing_record, read_manifest
from csfm_edge.runtime.preprocess import (
    MIN_DURATION_S,
    Segment,
    Windows,
    align_rates,
    check_positive,
    check_rate,
    rates_segment_plan,
    segment_plan,
    sliding_windows,
)
from csfm_edge.runtime.trust import verify_artifact
from csfm_edge.spec import SPEC, check_window_length

SHORT_RECORD_S = 5.0  # below this a window is mostly zero padding: warn
PROBE_LEADS = tuple(range(12)) + (PPG_ID,)  # the probe uses the first channels of the table
# run() warns when a channel's mean or spread is this far from a z-scored window's (0 and 1): raw
# millivolts or ADC counts given by mistake (a half window of a z-scored one stays well inside).
ZSCORED_MEAN_MAX = 0.5
# Windows one embed() call may make: each is held preprocessed (C x 10 kB), so 20,000 windows of 12 leads
# are 2.4 GB. A 24-h record at the default 10-s hop makes 8,640.
MAX_WINDOWS = 20_000
ZSCORED_STD_RATIO = 2.0


def check_preprocessing(recorded: PreprocessingInfo) -> int:
    """The artifact's PPG filter order, once its other preprocessing is shown to be this package's.

    Sample rate, window, filters and z-scoring are fixed by the model; an artifact that records
    others was made for a different preprocessing and is refused rather than fed the wrong input.
    """
    order = recorded.ppg_order
    ours = preprocessing_record(order)
    differing = [f.name for f in fields(PreprocessingInfo) if getattr(recorded, f.name) != getattr(ours, f.name)]
    if differing:
        raise ArtifactError(f"the artifact's preprocessing differs from this csfm-edge's in {', '.join(differing)}: "
                            "re-export it with this version")
    return order


@dataclass(frozen=True)
class DroppedLead:
    """A lead left out of a whole record (or stream window), and why: ``flat`` or ``missing`` (all NaN)."""

    lead: str
    reason: str

    def __str__(self) -> str:
        return f"{self.lead} ({self.reason} for the whole recording)"

    @property
    def flag(self) -> str:
        """As a window flag (``flat:PPG``, ``missing:II``): a lead unusable in a whole stream window or segment."""
        return f"{self.reason}:{self.lead}"


@dataclass
class EmbedResult:
    """Per-window outputs of a recording, their start times and flags, and an aggregate of clean windows.

    A window whose leads were all unusable has NaN features and the flag ``no_signal``; leads unusable in
    the whole record are in ``dropped`` and absent from ``leads``.
    """

    features: np.ndarray  # [W, dim]
    logits: np.ndarray | None  # [W, classes]
    start_s: np.ndarray  # [W]
    flags: list[list[str]]  # per window; empty = clean
    leads: list[str]
    aggregate: dict = field(default_factory=dict)
    dropped: list[DroppedLead] = field(default_factory=list)

    @property
    def clean(self) -> np.ndarray:
        return np.array([not f for f in self.flags], dtype=bool)


@dataclass
class StreamResult:
    end_s: float  # stream time of the window's last sample
    features: np.ndarray | None  # [dim]; None when no lead of the window carried signal
    logits: np.ndarray | None
    flags: list[str]  # as EmbedResult's, plus flat:/missing: for leads unusable in the whole window
    latency_s: float  # from the arrival of the window's last sample to this result
    behind: bool  # latency exceeded the hop: the stream is not keeping up


class StreamLagWarning(SignalWarning):
    """Results arrive later than one hop after their data: the machine is not keeping up."""


def _usable_leads(rows: Sequence[np.ndarray], names: list[str]) -> tuple[list[int], list[DroppedLead]]:
    """Rows that carry any finite sample, and the leads that do not (missing: all NaN/inf)."""
    keep, dropped = [], []
    for row, (values, name) in enumerate(zip(rows, names)):
        values = np.asarray(values)
        if values.dtype.kind in "iuf" and values.size and not np.isfinite(values).any():
            dropped.append(DroppedLead(name, "missing"))
        else:
            keep.append(row)
    return keep, dropped


@dataclass
class Prepared:
    """A record preprocessed into windows, ready for :meth:`Session.score`."""

    windows: Windows
    ids: np.ndarray
    names: list[str]
    dropped: list[DroppedLead]


def _check_signal_shape(signal, fs, names: list[str], multi_rate: bool) -> None:
    """A :class:`ShapeError` saying what is wrong with the layout of ``signal`` (and of ``fs`` per lead), before
    NumPy fails on it with a TypeError or IndexError that names nothing."""
    if multi_rate:
        if np.ndim(fs) != 1 or len(fs) != len(names):
            raise ShapeError(f"{np.size(fs)} sampling rates for {len(names)} leads {names}: give one rate per lead")
        if isinstance(signal, np.ndarray) and signal.dtype.kind != "O":
            rows = list(signal) if signal.ndim == 2 else [signal]
        elif isinstance(signal, (list, tuple)) or (isinstance(signal, np.ndarray) and signal.ndim == 1):
            rows = list(signal)
        else:
            raise ShapeError(f"with one rate per lead, signal is one 1-D array per lead, got {type(signal).__name__}")
        if len(rows) != len(names):
            raise ShapeError(f"signal has {len(rows)} rows for {len(names)} leads {names}")
        for row, name in zip(rows, names):
            lazy = hasattr(row, "ndim") and hasattr(row, "dtype")  # an array, or a reader that reads on slicing
            ndim, dtype = (row.ndim, np.dtype(row.dtype)) if lazy else (np.ndim(row), np.asarray(row).dtype)
            if ndim != 1 or dtype.kind not in "iufb":
                raise ShapeError(f"lead {name}: expected a 1-D array of numbers, got {ndim} dimensions of {dtype}")
        return
    array = np.asarray(signal) if not isinstance(signal, np.ndarray) else signal
    if array.dtype.kind == "O":
        raise ShapeError("signal is an object array (rows of different lengths, or not numbers): leads at "
                         "different rates go as one 1-D array per lead with one rate per lead (fs=[...])")
    if array.dtype.kind not in "iufb":
        raise ShapeError(f"signal must hold numbers, got {array.dtype}")
    if array.ndim == 0:
        raise ShapeError(f"signal is one number ({type(signal).__name__}); expected [leads, samples] or, for one "
                         "lead, [samples]")
    if array.ndim > 2:
        hint = " (drop the leading axis of size 1)" if array.shape[0] == 1 else ""
        raise ShapeError(f"signal has shape {array.shape}: expected [leads, samples]{hint}")


def long_record_plan(signal, fs, leads, hop_s: float) -> list | None:
    """How :meth:`Session.embed` reads a long record in bounded memory: :class:`Segment` s of a [C, N] record
    at one rate, or per-lead segments of leads at their own rates; None for a record short enough to run whole
    (or one the checks of :meth:`Session.prepare` will refuse, with their message)."""
    if leads is None:
        return None
    try:
        if isinstance(fs, (list, tuple, np.ndarray)):
            rows = list(signal)
            if len(rows) != len(fs) or any(getattr(r, "ndim", np.ndim(r)) != 1 for r in rows):
                return None
            return rates_segment_plan([len(r) for r in rows], [float(r) for r in fs], hop_s)
        if np.ndim(signal) != 2:
            return None
        return segment_plan(np.shape(signal)[1], check_rate(fs, resolve_leads(leads)), hop_s)
    except (TypeError, ValueError):
        return None


def _duration_s(rows, fs, multi_rate: bool) -> float:
    """The record's length in seconds (0 where the rate itself is unusable: checked later, with its message)."""
    rates = list(fs) if multi_rate else [fs] * len(rows)
    try:
        return max((len(r) if multi_rate else np.shape(r)[-1]) / float(rate) for r, rate in zip(rows, rates))
    except (TypeError, ValueError, ZeroDivisionError, IndexError):
        return 0.0


def _check_window_count(seconds: float, hop_s: float, max_windows: int) -> None:
    """Refuse, before any preprocessing, a hop that would make more windows than ``max_windows``."""
    count = int(max(seconds - WINDOW_SAMPLES / SAMPLE_RATE_HZ, 0) / hop_s) + 1
    if count > max_windows:
        raise ParameterError(f"a {hop_s:g}-s hop over {seconds:.0f} s makes {count} windows, more than the "
                             f"{max_windows} allowed (each held in memory): raise the hop, or the cap with "
                             "--max-windows (max_windows=)")


def _aggregate(result: EmbedResult) -> dict:
    """Window count, clean-window count and the mean outputs of the clean windows."""
    clean = result.clean
    return {"windows": len(clean), "clean_windows": int(clean.sum()),
            "features": result.features[clean].mean(axis=0) if clean.any() else None,
            "logits": result.logits[clean].mean(axis=0) if result.logits is not None and clean.any() else None}


def _refuse_or_drop(dropped: list[DroppedLead], strict: bool, remaining: int,
                    earlier: Sequence[DroppedLead] = ()) -> None:
    """Refuse lead-off leads under ``strict``, and a record with no lead left (the error lists them all)."""
    if dropped and strict:
        raise FlatChannelError(f"{dropped[0].reason} for the whole recording: lead off or disconnected? "
                               "(strict: refusing instead of scoring the other leads)", dropped[0].lead)
    if not remaining:
        every = [*earlier, *dropped]
        error = NoSignalError("no lead carries signal: " + ", ".join(map(str, every)))
        error.dropped = every
        raise error


@dataclass(frozen=True)
class Preprocessor:
    """An artifact's preprocessing without its model: what :meth:`Session.prepare` runs.

    Processes that only read and window recordings (the reader tasks of a Ray run) use it to prepare
    records for model actors elsewhere, without loading a model of their own."""

    ppg_order: int

    @classmethod
    def for_manifest(cls, manifest: Manifest) -> Preprocessor:
        """The preprocessing ``manifest`` records, refused where it is not this package's."""
        return cls(check_preprocessing(manifest.preprocessing))

    def prepare(self, signal: np.ndarray | Sequence[np.ndarray], fs: float | Sequence[float], leads, *,
                hop_s: float = 10.0, max_gap_s: float = 0.1, strict: bool = False,
                max_windows: int = MAX_WINDOWS, offsets: Sequence[int] | None = None) -> Prepared:
        """Windows of a raw recording as :meth:`Session.prepare` makes them; see :meth:`Session.embed`."""
        check_positive("hop_s", hop_s)
        check_positive("max_windows", max_windows, integer=True)
        if isinstance(max_gap_s, bool) or not isinstance(max_gap_s, (int, float, np.integer, np.floating)) \
                or not 0 <= max_gap_s < float("inf"):
            raise ParameterError(f"max_gap_s must be a finite number >= 0 (seconds of NaN to interpolate), "
                                 f"got {max_gap_s!r}")
        if leads is None:
            raise LeadError("name the recording's leads (e.g. leads=['II', 'PPG'])")
        ids = resolve_leads(leads)
        names = lead_names(ids)
        multi_rate = isinstance(fs, (list, tuple, np.ndarray))
        _check_signal_shape(signal, fs, names, multi_rate)
        rows = list(signal) if multi_rate else np.asarray(signal)
        if not multi_rate and rows.ndim == 1:
            rows = rows[None, :]
        if len(rows) != len(ids) or (not multi_rate and rows.ndim != 2):
            raise ShapeError(f"signal has {len(rows)} rows for {len(ids)} leads {names}")
        if offsets is None:
            _check_window_count(_duration_s(rows, fs, multi_rate), hop_s, max_windows)
        keep, dropped = _usable_leads(rows, names)
        _refuse_or_drop(dropped, strict, len(keep))
        ids, names = ids[keep], [names[k] for k in keep]
        if multi_rate:
            aligned, fills = align_rates([rows[k] for k in keep], [list(fs)[k] for k in keep], names, max_gap_s,
                                         long_gaps="flag")
            filled = np.zeros(aligned.shape, bool)  # interpolated samples are gaps, never "unchanged for 1 s"
            for fill in fills:
                filled[names.index(fill.channel), int(fill.start_s * SAMPLE_RATE_HZ):
                       int(np.ceil((fill.start_s + fill.length_s) * SAMPLE_RATE_HZ))] = True
            windows = sliding_windows(aligned, SAMPLE_RATE_HZ, ids, hop_s=hop_s, ppg_order=self.ppg_order,
                                      offsets=offsets, filled=filled)
            windows = replace(windows, fills=tuple(fills))
        else:
            windows = sliding_windows(rows[keep], fs, ids, hop_s=hop_s, ppg_order=self.ppg_order,
                                      max_gap_s=max_gap_s, long_gaps="flag", offsets=offsets)
        never = windows.flat.all(axis=0)  # flat in every window: nothing of that lead was recorded
        flat_leads = [DroppedLead(names[c], "flat") for c in np.flatnonzero(never)]
        _refuse_or_drop(flat_leads, strict, int((~never).sum()), dropped)
        if never.any():
            good = np.flatnonzero(~never)
            windows = replace(windows.channels(good),
                              fills=tuple(f for f in windows.fills if f.channel in {names[c] for c in good}))
            ids, names = ids[good], [names[c] for c in good]
        if windows.signal_s < SHORT_RECORD_S:
            warnings.warn(f"record is only {windows.signal_s:.1f} s: its window is mostly zero padding",
                          SignalWarning, stacklevel=4)
        return Prepared(windows, ids, names, dropped + flat_leads)


class Session:
    """An artifact ready to run: ``run`` on model inputs, ``embed`` on raw recordings, ``stream`` live."""

    selection = None  # opened from a folder: what was chosen and why (csfm_edge.runtime.tuned.Selection)

    def __init__(self, backend: Backend, manifest: Manifest):
        self.backend = backend
        self.manifest = manifest
        self.model = manifest.model
        self.precision = manifest.precision
        self.preprocessor = Preprocessor.for_manifest(manifest)
        self.ppg_order = self.preprocessor.ppg_order
        self._check_outputs()

    @classmethod
    def open(cls, artifact: str | Path, options: BackendOptions | None = None, *, provider: str | None = None,
             reference: bool = False, checkpoint: str | Path | None = None,
             trust: str | Path | None = None) -> Session:
        """Open ``artifact`` (``.onnx``, ``.plan`` or a checkpoint) with ``options``; ``provider``,
        ``reference`` (run its PyTorch weights) and ``checkpoint`` are shorthands for those options.

        ``trust`` (a PEM public key or CA certificate; default ``$CSFM_EDGE_TRUST``) opens it only if its
        signature verifies (:mod:`csfm_edge.runtime.trust`); without either, unsigned artifacts open as ever.
        A folder of artifacts opens its ``csfm-edge tune`` choice, or a rule-based default (see runtime.tuned).
        """
        artifact = Path(artifact)
        verify_artifact(artifact, trust)
        if options is not None and not isinstance(options, BackendOptions):
            raise ParameterError(f"options must be a BackendOptions, got {options!r} (a provider alone: "
                                 "provider='cpu')")
        if options is not None and (provider is not None or reference or checkpoint is not None):
            raise ParameterError("give provider, reference and checkpoint inside options, or without options: "
                                 "not both")
        if options is None:
            options = BackendOptions(provider=provider, reference=reference,
                                     checkpoint=Path(checkpoint) if checkpoint else None)
        if artifact.is_dir():
            from csfm_edge.runtime.tuned import open_folder

            backend, manifest, selection = open_folder(artifact, options, trust)
            session = cls(backend, manifest)
            session.selection = selection
            return session
        if is_checkpoint(artifact):
            from csfm_edge.runtime.backends.torch_ref import open_checkpoint

            return cls(*open_checkpoint(artifact, options))
        manifest = read_manifest(artifact)
        return cls(open_backend(artifact, manifest, options), manifest)

    def _check_outputs(self) -> None:
        """One probe inference: the artifact's output widths must be what its manifest claims."""
        batch, channels, time_len = probe_shape(self.manifest.profiles)
        probe = self.backend.run(SPEC.example_feed(batch, PROBE_LEADS[:channels], time_len))
        for name, tensor in self.manifest.outputs.items():
            if name not in probe or probe[name].shape[1:] != (tensor.width,):
                got = probe[name].shape[1:] if name in probe else "missing"
                raise ArtifactError(f"artifact output {name!r} is {got}, but its manifest claims CSFM "
                                    f"{self.model.size} with width {tensor.width}: artifact and manifest disagree")

    def info(self) -> dict:
        return {**self.backend.describe(), "precision": self.precision, "size": self.model.size,
                "head_classes": self.model.head_classes, "weights": self.manifest.weights.source,
                **({"selection": self.selection.describe()} if self.selection else {})}

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- model inputs -------------------------------------------------------------------------

    def run(self, signal: np.ndarray, channel_ids) -> dict[str, np.ndarray]:
        """Preprocessed ``signal`` float32 [B, C, T] and ``channel_ids`` [C] -> ``features`` (and ``logits``).

        Safe from several threads. Windows that do not look z-scored (raw signal given by mistake) are
        run, with a :class:`~csfm_edge.errors.SignalWarning`: ``embed`` is the call for raw recordings.
        """
        signal = np.asarray(signal)
        if signal.ndim != 3 or signal.dtype.kind not in "iuf":
            raise ShapeError(f"run() takes preprocessed numeric windows [batch, channels, time], got shape "
                             f"{signal.shape} of {signal.dtype}")
        if signal.shape[0] == 0:
            raise ShapeError("run() got a batch of 0 windows")
        ids = resolve_leads(list(np.asarray(channel_ids).tolist()) if not isinstance(channel_ids, str)
                            else channel_ids)
        if len(ids) != signal.shape[1]:
            raise ShapeError(f"{signal.shape[1]} channels but {len(ids)} channel ids")
        check_window_length(signal.shape[2])
        if not np.isfinite(signal).all():
            raise NonFiniteError("preprocessed windows contain NaN or inf")
        mean, std = signal.mean(axis=-1), signal.std(axis=-1)
        if (np.abs(mean) > ZSCORED_MEAN_MAX).any() or ((std > 0) & ((std < 1 / ZSCORED_STD_RATIO)
                                                                      | (std > ZSCORED_STD_RATIO))).any():
            warnings.warn("run() takes z-scored windows (mean 0, std 1 per channel); these are not: use embed() "
                          "for raw signals", SignalWarning, stacklevel=2)
        return self.backend.run(SPEC.feed(signal, ids))

    # --- raw recordings -----------------------------------------------------------------------

    def embed(self, signal: np.ndarray | Sequence[np.ndarray], fs: float | Sequence[float], leads, *,
              hop_s: float = 10.0, batch_size: int = 16, max_gap_s: float = 0.1, strict: bool = False,
              max_windows: int = MAX_WINDOWS) -> EmbedResult:
        """A raw recording of any length and rate -> per-window outputs with flags, plus an aggregate.

        ``signal`` is [C, N] at ``fs`` Hz, or one 1-D array per lead with ``fs`` one rate per lead
        (aligned at their start). Recordings longer than 10 s become windows every ``hop_s``;
        shorter ones are zero-padded as the authors do (with a warning under 5 s).

        A lead flat or missing (all NaN) for the whole record is dropped and reported in ``dropped``;
        the others are scored (``strict=True`` refuses instead). A lead flat or in a long gap in some
        windows only flags those windows, which are scored on their good leads. Flagged windows are left
        out of the aggregate, never silently averaged in. A hop that would make more than
        ``max_windows`` windows is refused (their preprocessed windows are held in memory).
        """
        check_positive("batch_size", batch_size, integer=True)
        check_positive("hop_s", hop_s)
        plan = long_record_plan(signal, fs, leads, hop_s)
        if plan is not None:
            multi_rate = isinstance(fs, (list, tuple, np.ndarray))
            _check_window_count(_duration_s(signal, fs, True) if multi_rate else np.shape(signal)[1] / float(fs),
                                hop_s, max_windows)
            return self._embed_segments(signal, fs, leads, plan, hop_s, batch_size, max_gap_s, strict)
        prepared = self.prepare(signal, fs, leads, hop_s=hop_s, max_gap_s=max_gap_s, strict=strict,
                                max_windows=max_windows)
        return self.score(prepared, batch_size)

    def _embed_segments(self, signal, fs, leads, plan: list, hop_s: float, batch_size: int,
                        max_gap_s: float, strict: bool) -> EmbedResult:
        """A long record, segment by segment: only one segment's samples and windows are held at a time
        (``signal`` may be a memory map or a lazy reader; with one rate per lead, one per lead). Leads unusable
        in a whole segment are flagged in its windows; only leads unusable in every segment are reported as
        dropped."""
        names = lead_names(resolve_leads(leads))
        parts: list[tuple[EmbedResult, float]] = []
        for planned in plan:
            if isinstance(planned, Segment):
                segment, shift = planned, planned.start / float(fs)
                chunk = np.asarray(signal[:, segment.start: segment.stop])
            else:  # one Segment per lead, each at its own rate, covering the same time
                segment, shift = planned[0], planned[0].start / float(fs[0])
                chunk = [np.asarray(row[s.start: s.stop], dtype=np.float64) for row, s in zip(signal, planned)]
            try:
                prepared = self.prepare(chunk, fs, leads, hop_s=hop_s, max_gap_s=max_gap_s, offsets=segment.offsets)
                part = self.score(prepared, batch_size)
            except NoSignalError as exc:
                empty = self.nan_outputs(len(segment.offsets))
                part = EmbedResult(empty[SPEC.features], empty.get(SPEC.logits),
                                   np.asarray(segment.offsets) / SAMPLE_RATE_HZ,
                                   [["no_signal"] for _ in segment.offsets], [], dropped=getattr(exc, "dropped", []))
            parts.append((part, shift))
        everywhere = [n for n in names if all(n not in part.leads for part, _ in parts)]
        dropped = []
        for name in everywhere:
            reasons = {d.reason for part, _ in parts for d in part.dropped if d.lead == name}
            dropped.append(DroppedLead(name, "missing" if reasons == {"missing"} else "flat"))
        _refuse_or_drop(dropped, strict, len(names) - len(dropped))
        flags = []
        for part, _ in parts:
            local = [d.flag for d in part.dropped if d.lead not in everywhere]
            flags += [local + f for f in part.flags]
        features = np.concatenate([part.features for part, _ in parts])
        logits = np.concatenate([part.logits for part, _ in parts]) if self.manifest.has_head else None
        start_s = np.concatenate([part.start_s + shift for part, shift in parts])
        result = EmbedResult(features, logits, start_s, flags, [n for n in names if n not in everywhere],
                             dropped=dropped)
        result.aggregate = _aggregate(result)
        return result

    def prepare(self, signal: np.ndarray | Sequence[np.ndarray], fs: float | Sequence[float], leads, *,
                hop_s: float = 10.0, max_gap_s: float = 0.1, strict: bool = False,
                max_windows: int = MAX_WINDOWS, offsets: Sequence[int] | None = None) -> Prepared:
        """The preprocessing half of :meth:`embed` (no inference): safe to run in worker threads while the
        engine scores earlier records."""
        return self.preprocessor.prepare(signal, fs, leads, hop_s=hop_s, max_gap_s=max_gap_s, strict=strict,
                                         max_windows=max_windows, offsets=offsets)

    def score(self, prepared: Prepared, batch_size: int = 16) -> EmbedResult:
        """The inference half of :meth:`embed`: every window through the engine, then the aggregate."""
        features, logits, flags = self._score(prepared.windows, prepared.ids, prepared.names, batch_size)
        result = EmbedResult(features, logits, prepared.windows.start_s, flags, prepared.names,
                             dropped=prepared.dropped)
        result.aggregate = _aggregate(result)
        return result

    def nan_outputs(self, windows: int) -> dict[str, np.ndarray]:
        """NaN rows of every output: the answer for windows (or requests) that could not be scored."""
        return {name: np.full((windows, t.width), np.nan, np.float32) for name, t in self.manifest.outputs.items()}

    def _score(self, windows, ids: np.ndarray, names: list[str], batch_size: int
               ) -> tuple[np.ndarray, np.ndarray | None, list[list[str]]]:
        """Run every window on the leads usable in it: windows are grouped by their usable leads and batched."""
        flags = windows.flags(names)
        usable = ~windows.unusable(names)
        outputs = self.nan_outputs(len(flags))
        groups: dict[tuple[bool, ...], list[int]] = {}
        for w, mask in enumerate(usable):
            groups.setdefault(tuple(mask), []).append(w)
        for mask, members in groups.items():
            channels = np.flatnonzero(mask)
            if not channels.size:
                for w in members:
                    flags[w].append("no_signal")
                continue
            for start in range(0, len(members), batch_size):
                chunk = members[start: start + batch_size]
                for name, value in self.run(windows.data[chunk][:, channels], ids[channels]).items():
                    outputs[name][chunk] = value
        return outputs[SPEC.features], outputs.get(SPEC.logits), flags

    def stream(self, fs: float, leads, *, window_s: float = 10.0, hop_s: float = 1.0) -> Stream:
        return Stream(self, fs, leads, window_s=window_s, hop_s=hop_s)


_FLAG_OF = {"ImplausibleSignalError": "implausible", "NonFiniteError": "gap", "FlatChannelError": "flat"}


class Stream:
    """Live scoring: ``push`` chunks of any size; one result per hop once a window is full.

    The last ``window_s`` seconds sit in a ring buffer (nothing older is kept or re-copied); each
    result filters its own window as the preprocessing defines. Latency runs from the arrival of the
    window's last sample to the result; a result later than one hop is marked ``behind`` and warned
    about, so falling behind is never silent.

    A stream never dies on the signal: a window with a lead off, missing or in a gap gives a flagged
    result scored on its good leads (features ``None`` when none is good), and the next good window a
    normal one. Only caller errors (wrong shape or type) raise, before anything of the chunk is kept.
    """

    def __init__(self, session: Session, fs: float, leads, *, window_s: float = 10.0, hop_s: float = 1.0):
        self.session = session
        self.ids = resolve_leads(leads)
        self.names = lead_names(self.ids)
        self.fs = check_rate(fs, self.ids)
        longest = WINDOW_SAMPLES / SAMPLE_RATE_HZ
        if isinstance(window_s, bool) or not isinstance(window_s, (int, float)) \
                or not MIN_DURATION_S <= window_s <= longest:
            raise ParameterError(f"window_s must be {MIN_DURATION_S:g} to {longest:g} s, got {window_s!r}")
        self.hop_s = float(check_positive("hop_s", hop_s))
        self.window = int(round(window_s * self.fs))
        self.hop = max(int(round(self.hop_s * self.fs)), 1)
        self.ring = np.zeros((len(self.ids), self.window), np.float64)
        self.total = 0  # samples pushed so far
        self.next_emit = self.window
        self.latencies: list[float] = []
        self.behind_count = 0

    def push(self, chunk: np.ndarray) -> list[StreamResult]:
        """Add samples [C, n] (or [n] for one lead); return the results of every hop they complete."""
        arrived = time.perf_counter()
        chunk = self._checked(chunk)
        results = []
        position = 0
        while position < chunk.shape[1]:
            take = min(chunk.shape[1] - position, self.next_emit - self.total)
            self._write(chunk[:, position: position + take])
            position += take
            if self.total == self.next_emit:
                results.append(self._emit(arrived))
                self.next_emit += self.hop
        return results

    def _checked(self, chunk) -> np.ndarray:
        """The chunk as float64 [C, n], or a :class:`ShapeError`; nothing of the stream changes on error."""
        array = np.asarray(chunk)
        if array.dtype.kind not in "iuf":
            raise ShapeError(f"a chunk holds numbers, got {array.dtype} ({type(chunk).__name__})")
        if array.ndim == 1 and len(self.ids) == 1:
            array = array[None, :]
        if array.ndim != 2 or array.shape[0] != len(self.ids):
            raise ShapeError(f"chunk must be [{len(self.ids)}, samples] for leads {', '.join(self.names)}, "
                             f"got shape {array.shape}")
        return array.astype(np.float64, copy=False)

    def _write(self, block: np.ndarray) -> None:
        n = block.shape[1]
        if n >= self.window:
            self.ring[:] = block[:, -self.window:]
        else:
            start = self.total % self.window
            first = min(n, self.window - start)
            self.ring[:, start: start + first] = block[:, :first]
            self.ring[:, : n - first] = block[:, first:]
        self.total += n

    def _emit(self, arrived: float) -> StreamResult:
        split = self.total % self.window
        window = np.concatenate([self.ring[:, split:], self.ring[:, :split]], axis=1)
        rows, unusable = list(range(len(self.ids))), []
        while True:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", SignalWarning)  # short-window padding is the caller's choice
                    result = self.session.embed(window[rows], self.fs, self.ids[rows], hop_s=self.window / self.fs)
                features = result.features[-1]
                logits = result.logits[-1] if result.logits is not None else None
                flags = unusable + [d.flag for d in result.dropped] + result.flags[-1]
                if "no_signal" in flags:
                    features = logits = None
                break
            except SignalError as exc:  # one lead unusable in this window (a 1e12 spike): score the others
                lead = exc.channel if exc.channel in [self.names[r] for r in rows] else None
                if lead is not None:
                    unusable.append(f"{_FLAG_OF.get(type(exc).__name__, 'unusable')}:{lead}")
                    rows = [r for r in rows if self.names[r] != lead]
                if lead is None or not rows:
                    features = logits = None
                    flags = ["no_signal", *unusable, *[d.flag for d in getattr(exc, "dropped", [])]]
                    break
        latency = time.perf_counter() - arrived
        behind = latency > self.hop_s
        self.latencies.append(latency)
        if behind:
            self.behind_count += 1
            warnings.warn(f"stream result {latency:.3f} s after its data, longer than the {self.hop_s:g} s hop: "
                          "this machine is not keeping up", StreamLagWarning, stacklevel=3)
        return StreamResult(self.total / self.fs, features, logits, flags, latency, behind)

    def latency_summary(self) -> dict:
        lat = np.asarray(self.latencies) if self.latencies else np.zeros(1)
        return {"results": len(self.latencies), "p50_s": float(np.percentile(lat, 50)),
                "p99_s": float(np.percentile(lat, 99)), "behind": self.behind_count}



