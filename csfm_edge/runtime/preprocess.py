"""The authors' CSFM preprocessing in NumPy/SciPy, vectorised over channels.

Order, as in the released ``preprocess_ecg`` / ``preprocess_ppg``: resample the whole record to
250 Hz (Fourier method), filter the whole record (ECG: 0.5 Hz Butterworth high-pass order 5 then a
5-tap moving average, both zero-phase, as NeuroKit2's ``ecg_clean``; PPG: 0.5-8 Hz Butterworth
band-pass, NeuroKit2's ``ppg_clean`` "elgendi"), cut the 2500-sample window, z-score each channel.

Beyond the authors' code: every PPG channel is cleaned, the window is chosen deterministically, NaN
gaps up to ``max_gap_s`` are interpolated and reported, and every unusable input raises a typed
error from :mod:`csfm_edge.errors` that names the channel and the problem.

The building blocks (:func:`validate`, :func:`fill_gaps`, :func:`to_model_rate`,
:func:`filter_record`, :func:`window_offset`, :func:`select_window`, :func:`flat_mask`, :func:`zscore`) are public
because the runtime's sliding windows and streaming reuse them instead of re-implementing steps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from scipy import signal as sps

from csfm_edge.config import SAMPLE_RATE_HZ, WINDOW_SAMPLES
from csfm_edge.errors import (
    FlatChannelError,
    ImplausibleSignalError,
    NonFiniteError,
    ParameterError,
    SampleRateError,
    ShapeError,
    SignalError,
    SignalWarning,
    TooShortError,
)
from csfm_edge.leads import PPG_ID, lead_names, resolve_leads

ECG_HIGHPASS_HZ = 0.5
ECG_HIGHPASS_ORDER = 5
POWERLINE_HZ = 50.0  # NeuroKit2's powerline step: a moving average one 50 Hz period wide
PPG_BAND_HZ = (0.5, 8.0)
DEFAULT_PPG_ORDER = 3  # as the CSFM authors describe it; NeuroKit2 >= 0.2.12 uses 2
ZSCORE_EPS = 1e-8
# Standard deviation (input units, after filtering) at or below which a channel counts as flat:
# a disconnected lead filtered to ~1e-15, far below any physiological mV or PPG amplitude.
FLAT_STD = 1e-6
MIN_DURATION_S = 1.0
FILTER_MARGIN_S = 30.0
# Records longer than this are preprocessed segment by segment (memory bounded in record length).
LONG_RECORD_S = 30 * 60.0
SEGMENT_S = 10 * 60.0
SEGMENT_MARGIN_S = 60.0
# Sampling rates: the PPG band-pass reaches 8 Hz, so a rate must exceed twice that (25-Hz wrist PPG
# passes); above 20 kHz no cardiac recorder samples (a rate in the wrong unit). ECG below 100 Hz loses
# the QRS complex's energy: allowed, with a warning.
MIN_RATE_HZ = 2 * 8.0
MAX_RATE_HZ = 20_000.0
ECG_WARN_RATE_HZ = 100.0
# Largest magnitude a recording may hold: 24-bit ADC counts are ~1.7e7; beyond 1e9 the values are
# overflowing garbage or the wrong unit, and their z-scores would silently become zeros.
MAX_ABS_VALUE = 1e9
FLAT_RUN_S = 1.0  # samples unchanged this long inside a window: the lead was off for part of it
# A window is clipped when this share of its samples sits at the record's min or max in runs of 3 or more
# samples (the ADC rail): a natural signal touches its extreme for a sample or two per beat at most.
CLIP_FRACTION = 0.01
AMPLITUDE_RATIO = 20.0  # a window whose spread differs this much from the record's usual one: units/gain jump
WINDOWS = ("start", "center", "end")


@dataclass(frozen=True)
class GapFill:
    """A run of NaN/inf samples replaced by linear interpolation."""

    channel: str
    start_s: float
    length_s: float
    long: bool = False  # longer than the interpolation limit: the samples are placeholders, not signal

    def __str__(self) -> str:
        return f"{self.channel}: {self.length_s:.3f} s at {self.start_s:.3f} s"


def preprocessing_parameters(ppg_order: int = DEFAULT_PPG_ORDER) -> dict:
    """Everything that defines the preprocessing, for artifact manifests."""
    return {
        "sample_rate_hz": SAMPLE_RATE_HZ,
        "window_samples": WINDOW_SAMPLES,
        "resample": "scipy.signal.resample (Fourier) of the whole record",
        "ecg": {"highpass_hz": ECG_HIGHPASS_HZ, "order": ECG_HIGHPASS_ORDER, "zero_phase": True,
                "moving_average_taps": _moving_average_taps()},
        "ppg": {"bandpass_hz": list(PPG_BAND_HZ), "order": ppg_order, "zero_phase": True},
        "zscore_eps": ZSCORE_EPS,
        "flat_std": FLAT_STD,
        "pad": "zeros at the end, before z-scoring",
    }


def check_rate(fs, ids) -> float:
    """A sampling rate the preprocessing can work at, as a float; warns for ECG below 100 Hz."""
    if isinstance(fs, (bool, np.bool_)) or not isinstance(fs, (int, float, np.integer, np.floating)):
        raise SampleRateError(f"sampling rate must be a number in Hz, got {fs!r}")
    fs = float(fs)
    if not math.isfinite(fs) or not MIN_RATE_HZ < fs <= MAX_RATE_HZ:
        raise SampleRateError(f"sampling rate {fs:g} Hz: it must be finite and > 0 Hz, and for this preprocessing "
                              f"above {MIN_RATE_HZ:g} Hz (PPG band to 8 Hz) and at most {MAX_RATE_HZ:g} Hz; check --fs "
                              "and its unit")
    if fs < ECG_WARN_RATE_HZ and any(int(i) != PPG_ID for i in np.atleast_1d(ids)):
        warnings.warn(f"ECG sampled at {fs:g} Hz (< {ECG_WARN_RATE_HZ:g} Hz) loses QRS detail; results may "
                      "differ from the model's training data", SignalWarning, stacklevel=3)
    return fs


def check_positive(name: str, value, integer: bool = False) -> float:
    """A finite number > 0 (an integer where ``integer``), or a :class:`ParameterError` naming ``name``."""
    number_types = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, number_types) or not math.isfinite(value) \
            or value <= 0:
        kind = "a whole number" if integer else "a finite number"
        raise ParameterError(f"{name} must be {kind} > 0, got {value!r}")
    return value


def validate(signal: np.ndarray, fs: float, leads) -> tuple[np.ndarray, float, np.ndarray, list[str]]:
    """Check shape, rate, values and leads; return a float64 [C, N] copy, fs, ids and lead names."""
    ids = resolve_leads(leads)
    names = lead_names(ids)
    fs = check_rate(fs, ids)
    arr = np.asarray(signal)
    if arr.dtype.kind not in "iuf":
        raise SignalError(f"signal must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ShapeError(f"signal must be [channels, samples] (or 1-D for one lead), got rank {arr.ndim}")
    if arr.shape[0] != len(ids):
        hint = " (it looks like [samples, channels]: transpose it)" if arr.shape[1] == len(ids) else ""
        raise ShapeError(f"signal has {arr.shape[0]} rows for {len(ids)} leads {names}{hint}")
    min_samples = math.ceil(MIN_DURATION_S * fs)
    if arr.shape[1] < min_samples:
        raise TooShortError(
            f"{arr.shape[1]} samples at {fs:g} Hz is shorter than the minimum {MIN_DURATION_S:g} s "
            f"({min_samples} samples)")
    x = arr.astype(np.float64, copy=True)
    with np.errstate(invalid="ignore"):
        huge = np.isfinite(x) & (np.abs(x) > MAX_ABS_VALUE)  # NaN/inf are gaps, handled by fill_gaps
    for c in np.flatnonzero(huge.any(axis=1)):
        raise ImplausibleSignalError(f"values up to {np.abs(x[c][huge[c]]).max():.3g}: overflowing, or not a "
                                     f"signal in physical units (limit {MAX_ABS_VALUE:g})", names[c])
    return x, fs, ids, names


def fill_gaps(x: np.ndarray, fs: float, names: Sequence[str], max_gap_s: float,
              long_gaps: str = "raise") -> list[GapFill]:
    """Interpolate runs of NaN/inf in place. Runs longer than ``max_gap_s`` are refused
    (``long_gaps="raise"``) or interpolated too and returned marked ``long`` (``"flag"``), for callers
    that score many windows and flag the ones such a gap touches."""
    fills: list[GapFill] = []
    bad_rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
    for c in bad_rows:
        bad = ~np.isfinite(x[c])
        if bad.all():
            raise NonFiniteError("every sample is NaN or inf (lead off?)", names[c])
        starts, ends = true_runs(bad)
        lengths = ends - starts
        worst = int(np.argmax(lengths))
        if lengths[worst] / fs > max_gap_s and long_gaps == "raise":
            raise NonFiniteError(
                f"NaN/inf gap of {lengths[worst] / fs:.3f} s ({lengths[worst]} samples) at "
                f"{starts[worst] / fs:.3f} s exceeds the {max_gap_s:g} s that may be interpolated",
                names[c])
        index = np.arange(x.shape[1])
        x[c, bad] = np.interp(index[bad], index[~bad], x[c, ~bad])
        fills += [GapFill(names[c], float(s / fs), float(n / fs), bool(n / fs > max_gap_s))
                  for s, n in zip(starts, lengths)]
    return fills


def to_model_rate(x: np.ndarray, fs: float) -> np.ndarray:
    """Fourier-resample the whole record to 250 Hz (the authors' ``int(T * 250 / fs)`` samples)."""
    if fs == SAMPLE_RATE_HZ:
        return x
    return sps.resample(x, int(x.shape[-1] * SAMPLE_RATE_HZ / fs), axis=-1)


def _moving_average_taps() -> int:
    return int(SAMPLE_RATE_HZ / POWERLINE_HZ)


class ZeroPhaseFilter:
    """SciPy's ``sosfiltfilt`` / ``filtfilt(method="pad")`` for [C, N] records, with set-up done once.

    Same steps as SciPy: odd extension by ``padlen`` samples, a causal pass started in the steady
    state of the first sample, the same pass backwards, then the extension cut off; results agree
    to rounding. SciPy solves for the steady state on every call, which costs as much as filtering a
    10-s window, and runs FIR filters one channel at a time.
    """

    def __init__(self, causal: Callable[[np.ndarray], np.ndarray], padlen: int):
        self.causal = causal
        self.padlen = padlen

    @classmethod
    def butterworth(cls, sos: np.ndarray) -> ZeroPhaseFilter:
        """Padding as ``sosfiltfilt``: 3 x (2 x sections + 1 - trailing zero coefficients)."""
        zi = sps.sosfilt_zi(sos)[:, None, :]  # [sections, 1 (channels), 2]
        ntaps = 2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum())
        return cls(lambda x: sps.sosfilt(sos, x, axis=-1, zi=zi * x[None, :, :1])[0], 3 * int(ntaps))

    @classmethod
    def moving_average(cls, taps: int) -> ZeroPhaseFilter:
        """``filtfilt(ones(taps), [taps], method="pad")``: padding 3 x taps; steady state = constant past."""

        def causal(x: np.ndarray) -> np.ndarray:
            padded = np.concatenate([np.repeat(x[:, :1], taps - 1, axis=1), x], axis=1)
            total = padded[:, taps - 1:].copy()
            for lag in range(1, taps):
                total += padded[:, taps - 1 - lag: padded.shape[1] - lag]
            return total / taps

        return cls(causal, 3 * taps)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Filter [C, N] along time; N must exceed ``padlen`` (guaranteed by the minimum duration)."""
        p = self.padlen
        ext = np.concatenate([2 * x[:, :1] - x[:, p:0:-1], x, 2 * x[:, -1:] - x[:, -2:-p - 2:-1]], axis=1)
        y = self.causal(self.causal(ext)[:, ::-1])[:, ::-1]
        return y[:, p:-p]


@lru_cache(maxsize=1)
def _ecg_filters() -> tuple[ZeroPhaseFilter, ZeroPhaseFilter]:
    highpass = sps.butter(ECG_HIGHPASS_ORDER, ECG_HIGHPASS_HZ, btype="highpass", output="sos", fs=SAMPLE_RATE_HZ)
    return ZeroPhaseFilter.butterworth(highpass), ZeroPhaseFilter.moving_average(_moving_average_taps())


@lru_cache(maxsize=8)
def _ppg_filter(order: int) -> ZeroPhaseFilter:
    return ZeroPhaseFilter.butterworth(
        sps.butter(order, PPG_BAND_HZ, btype="bandpass", output="sos", fs=SAMPLE_RATE_HZ))


def filter_record(x: np.ndarray, channel_ids: np.ndarray, ppg_order: int = DEFAULT_PPG_ORDER) -> np.ndarray:
    """Zero-phase ECG and PPG cleaning of a 250 Hz record [C, M], all channels of a kind at once."""
    out = np.empty_like(x)
    ppg = np.asarray(channel_ids) == PPG_ID
    if (~ppg).any():
        highpass, moving_average = _ecg_filters()
        out[~ppg] = moving_average(highpass(x[~ppg]))
    if ppg.any():
        out[ppg] = _ppg_filter(int(ppg_order))(x[ppg])
    return out


def window_offset(samples: int, window: str = "start") -> int:
    """First sample of the 2500-sample window at the start, center or end of a 250 Hz record."""
    if window not in WINDOWS:
        raise ParameterError(f"window must be one of {', '.join(WINDOWS)}, got {window!r}")
    spare = max(samples - WINDOW_SAMPLES, 0)
    return {"start": 0, "center": spare // 2, "end": spare}[window]


def select_window(x: np.ndarray, offset: int = 0) -> np.ndarray:
    """2500 samples from ``offset``; zero-padded at the end where the record is shorter."""
    cut = x[:, offset: offset + WINDOW_SAMPLES]
    if cut.shape[1] < WINDOW_SAMPLES:
        cut = np.pad(cut, ((0, 0), (0, WINDOW_SAMPLES - cut.shape[1])))
    return cut


def filter_window(x: np.ndarray, channel_ids: np.ndarray, offset: int, ppg_order: int = DEFAULT_PPG_ORDER
                  ) -> np.ndarray:
    """The window at ``offset`` of the whole-record filter output, filtering only window + margins.

    The filters are IIR: a sample's output depends on the whole record, but the dependence on
    samples ``FILTER_MARGIN_S`` away has decayed below 1e-12 of the signal (slowest pole of the
    0.5 Hz high-pass: ~1 s time constant). Long records are so cut to ~70 s before filtering.
    """
    margin = int(FILTER_MARGIN_S * SAMPLE_RATE_HZ)
    lo, hi = max(offset - margin, 0), min(offset + WINDOW_SAMPLES + margin, x.shape[-1])
    return select_window(filter_record(x[:, lo:hi], channel_ids, ppg_order), offset - lo)


def flat_mask(raw: np.ndarray, fs: float, start_s: float, filtered_window: np.ndarray) -> np.ndarray:
    """Channels without variation in a window: constant in the recording itself (lead off, a sensor
    stuck at a rail) or filtered to nothing (a pure drift). Judged on the raw samples because the
    zero-phase filters smear a record's neighbouring signal into a flat stretch."""
    first = int(round(start_s * fs))
    last = min(raw.shape[1], first + int(round(WINDOW_SAMPLES / SAMPLE_RATE_HZ * fs)))
    return (raw[:, first:last].std(axis=-1) <= FLAT_STD) | (filtered_window.std(axis=-1) <= FLAT_STD)


def zscore(window: np.ndarray) -> np.ndarray:
    """Per-channel (x - mean) / (population std + 1e-8) in float64, cast to the model's float32."""
    mean = window.mean(axis=-1, keepdims=True)
    std = window.std(axis=-1, keepdims=True)
    return ((window - mean) / (std + ZSCORE_EPS)).astype(np.float32)


def preprocess(
    signal: np.ndarray,
    fs: float,
    leads,
    *,
    ppg_order: int = DEFAULT_PPG_ORDER,
    window: str = "start",
    max_gap_s: float = 0.1,
) -> np.ndarray:
    """Raw record [C, N] at ``fs`` Hz with ``leads`` (names or CSFM ids) -> model input float32 [C, 2500].

    Gaps filled by interpolation are reported with a :class:`~csfm_edge.errors.SignalWarning`;
    a flat channel raises :class:`~csfm_edge.errors.FlatChannelError` instead of being divided by ~0.
    """
    x, fs, ids, names = validate(signal, fs, leads)
    fills = fill_gaps(x, fs, names, max_gap_s)
    if fills:
        warnings.warn("interpolated NaN/inf gaps: " + "; ".join(map(str, fills)), SignalWarning, stacklevel=2)
    resampled = to_model_rate(x, fs)
    offset = window_offset(resampled.shape[-1], window)
    cut = filter_window(resampled, ids, offset, ppg_order)
    for c in np.flatnonzero(flat_mask(x, fs, offset / SAMPLE_RATE_HZ, cut)):
        raise FlatChannelError(
            f"flat signal (std <= {FLAT_STD:g} after filtering): lead off or disconnected?", names[c])
    return zscore(cut)


@dataclass(frozen=True)
class Windows:
    """Model-ready windows of one record, with what the caller must know about each."""

    data: np.ndarray  # float32 [W, C, 2500], z-scored
    start_s: np.ndarray  # [W] start of each window in the record
    flat: np.ndarray  # bool [W, C]: channel without variation (lead off)
    fills: tuple[GapFill, ...]  # interpolated NaN/inf runs, in record time
    signal_s: float  # length of the record in seconds
    partly_flat: np.ndarray | None = None  # bool [W, C]: unchanged for a second or more of the window
    clipped: np.ndarray | None = None  # bool [W, C]: samples pinned at the ADC rail
    amplitude: np.ndarray | None = None  # bool [W, C]: spread far from the record's usual one

    def channels(self, keep: np.ndarray) -> Windows:
        """These windows with only the channels ``keep`` (indices)."""
        masks = {name: getattr(self, name)[:, keep] for name in ("flat", "partly_flat", "clipped", "amplitude")
                 if getattr(self, name) is not None}
        return replace(self, data=self.data[:, keep], **masks)

    def _overlapping(self, w: int, long: bool) -> list[str]:
        start = self.start_s[w]
        end = start + WINDOW_SAMPLES / SAMPLE_RATE_HZ
        return [fill.channel for fill in self.fills
                if fill.long == long and fill.start_s < end and fill.start_s + fill.length_s > start]

    def unusable(self, names: Sequence[str]) -> np.ndarray:
        """bool [W, C]: channels a window must be scored without (flat, or inside a long gap)."""
        bad = self.flat | (self.partly_flat if self.partly_flat is not None else False)
        for w in range(len(self.start_s)):
            for channel in self._overlapping(w, long=True):
                bad[w, list(names).index(channel)] = True
        return bad

    def flags(self, names: Sequence[str]) -> list[list[str]]:
        """Per window: ``flat:``, ``gap:`` (long gap), ``interpolated:``, ``clipped:``, ``amplitude:`` with the
        lead, and ``padded``."""
        out = []
        for w, start in enumerate(self.start_s):
            flat = self.flat[w] | (self.partly_flat[w] if self.partly_flat is not None else False)
            flags = [f"flat:{names[c]}" for c in np.flatnonzero(flat)]
            for kind, long in (("gap", True), ("interpolated", False)):
                flags += [f"{kind}:{channel}" for channel in dict.fromkeys(self._overlapping(w, long))]
            for kind, mask in (("clipped", self.clipped), ("amplitude", self.amplitude)):
                if mask is not None:
                    flags += [f"{kind}:{names[c]}" for c in np.flatnonzero(mask[w] & ~flat)]
            if self.signal_s < start + WINDOW_SAMPLES / SAMPLE_RATE_HZ - 1e-9:
                flags.append("padded")
            out.append(flags)
        return out


def true_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of every run of True in a 1-D bool array."""
    edges = np.diff(np.concatenate(([0], mask.view(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _long_runs(mask: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    starts, ends = true_runs(mask)
    keep = ends - starts >= min_len
    return list(zip(starts[keep].tolist(), ends[keep].tolist()))


def _overlap_mask(runs: list[list[tuple[int, int]]], bounds: list[tuple[int, int]], min_overlap: int) -> np.ndarray:
    """bool [W, C]: window w overlaps a run of channel c by at least ``min_overlap`` samples."""
    return np.array([[any(min(b, hi) - max(a, lo) >= min_overlap for a, b in channel_runs) for channel_runs in runs]
                     for lo, hi in bounds], dtype=bool).reshape(len(bounds), len(runs))


def window_quality(x: np.ndarray, fs: float, starts_s: np.ndarray, filled: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bool [W, C] masks judged on the raw samples of each window: a lead off for part of it (samples
    unchanged for ``FLAT_RUN_S``), clipping (``CLIP_FRACTION`` of it pinned at the record's min or max:
    the ADC rail), and a spread far from the record's median window spread (a gain or unit change). ``filled``
    marks samples interpolated over NaN gaps, which are gaps, not a lead off."""
    span = int(round(WINDOW_SAMPLES / SAMPLE_RATE_HZ * fs))
    bounds = [(int(round(s * fs)), min(x.shape[1], int(round(s * fs)) + span)) for s in starts_s]
    still_len = int(round(FLAT_RUN_S * fs))
    pinned, still = [], []
    for row, row_filled in zip(x, filled):
        low, high = row.min(), row.max()
        tolerance = 1e-9 * max(high - low, 1e-12)
        pinned.append(_long_runs((row >= high - tolerance) | (row <= low + tolerance), 3))
        still.append(_long_runs(np.concatenate(([False], np.diff(row) == 0)) & ~row_filled, still_len))
    clipped = np.array([[sum(max(min(b, hi) - max(a, lo), 0) for a, b in runs) >= CLIP_FRACTION * (hi - lo)
                         for runs in pinned] for lo, hi in bounds], dtype=bool).reshape(len(bounds), len(pinned))
    partly_flat = _overlap_mask(still, bounds, still_len)
    spread = np.array([x[:, lo:hi].std(axis=1) for lo, hi in bounds]).reshape(len(bounds), x.shape[0])
    amplitude = amplitude_off(spread, np.median(spread, axis=0, keepdims=True))
    return partly_flat, clipped & ~partly_flat, amplitude


def amplitude_off(spread: np.ndarray, usual: np.ndarray) -> np.ndarray:
    """bool: a window's spread ``AMPLITUDE_RATIO`` times above or below the ``usual`` one (both above
    ``FLAT_STD``; NaN never): a gain or unit change. The usual spread is the record's median window
    spread offline and, live, the median of the bed's windows so far (it cannot see later ones)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = spread / usual
    return (usual > FLAT_STD) & (spread > FLAT_STD) & ((ratio > AMPLITUDE_RATIO) | (ratio < 1 / AMPLITUDE_RATIO))


def sliding_windows(
    signal: np.ndarray,
    fs: float,
    leads,
    *,
    hop_s: float = 10.0,
    ppg_order: int = DEFAULT_PPG_ORDER,
    max_gap_s: float = 0.1,
    long_gaps: str = "raise",
    offsets: Sequence[int] | None = None,
    filled: np.ndarray | None = None,
) -> Windows:
    """A whole record -> z-scored windows every ``hop_s`` seconds, each with its flags.

    The record is resampled and filtered once, as the authors do, then cut (the last window ends at
    the record's end, so no tail is lost); a record shorter than 10 s gives one zero-padded window.
    Flat channels are reported in ``flat`` rather than raised, so a caller scoring many windows can
    flag them; ``long_gaps="flag"`` does the same for NaN runs beyond ``max_gap_s``. ``offsets``
    (250-Hz samples) cuts those windows instead of every ``hop_s`` (a segment of a long record). ``filled``
    (bool, as ``signal``) marks samples a caller already interpolated over gaps: gaps, not a lead off.
    """
    check_positive("hop_s", hop_s)
    x, fs, ids, names = validate(signal, fs, leads)
    filled = ~np.isfinite(x) if filled is None else np.asarray(filled, bool) | ~np.isfinite(x)
    fills = fill_gaps(x, fs, names, max_gap_s, long_gaps)
    filtered = filter_record(to_model_rate(x, fs), ids, ppg_order)
    if offsets is None:
        offsets = window_offsets(filtered.shape[-1], hop_s)
    cuts = np.stack([select_window(filtered, o) for o in offsets])
    starts = np.asarray(offsets) / SAMPLE_RATE_HZ
    flat = np.stack([flat_mask(x, fs, start, cut) for start, cut in zip(starts, cuts)])
    partly_flat, clipped, amplitude = window_quality(x, fs, starts, filled)
    return Windows(zscore(cuts), starts, flat, tuple(fills), x.shape[1] / fs, partly_flat & ~flat, clipped, amplitude)


def window_offsets(samples: int, hop_s: float) -> list[int]:
    """Window starts (250-Hz samples) every ``hop_s`` in a record of ``samples``; the last window ends at the
    record's end, so no tail is lost."""
    hop = max(int(round(hop_s * SAMPLE_RATE_HZ)), 1)
    offsets = list(range(0, max(samples - WINDOW_SAMPLES, 0) + 1, hop))
    if samples > WINDOW_SAMPLES and offsets[-1] != samples - WINDOW_SAMPLES:
        offsets.append(samples - WINDOW_SAMPLES)
    return offsets


@dataclass(frozen=True)
class Segment:
    """Raw samples [start, stop) of a long record, and the 250-Hz offsets of its windows within them."""

    start: int
    stop: int
    offsets: tuple[int, ...]


def segment_plan(samples: int, fs: float, hop_s: float) -> list[Segment] | None:
    """How a record longer than ``LONG_RECORD_S`` is preprocessed in bounded memory: the windows starting
    in each ``SEGMENT_S`` stretch are made from that stretch plus ``SEGMENT_MARGIN_S`` on each side, so
    each is resampled and filtered with at least a minute of its own context (equal to whole-record
    processing to float32 rounding away from the record's two ends). None for a shorter record, or a rate
    whose segment starts do not fall on the 250-Hz grid (non-integer rates): those run whole."""
    if samples / fs <= LONG_RECORD_S or not float(fs).is_integer():
        return None
    return [Segment(*_raw_bounds(low, high, fs, samples), offsets)
            for low, high, offsets in _model_rate_plan(int(samples * SAMPLE_RATE_HZ / fs), hop_s, [fs])]


def rates_segment_plan(lengths: Sequence[int], rates: Sequence[float], hop_s: float) -> list[list[Segment]] | None:
    """:func:`segment_plan` for leads recorded at their own rates (bedside ECG 500 Hz with PPG 125 Hz): per
    segment, one :class:`Segment` per lead covering the same stretch of time, so a multi-rate Holter is also
    read and resampled a segment at a time. None where the record is short or a rate is not whole."""
    if not lengths or any(not float(r).is_integer() or r <= 0 for r in rates):
        return None
    seconds = min(n / r for n, r in zip(lengths, rates))
    if seconds <= LONG_RECORD_S:
        return None
    return [[Segment(*_raw_bounds(low, high, r, n), offsets) for n, r in zip(lengths, rates)]
            for low, high, offsets in _model_rate_plan(int(seconds * SAMPLE_RATE_HZ), hop_s, rates)]


def _model_rate_plan(total: int, hop_s: float, rates: Sequence[float]) -> list[tuple[int, int, tuple[int, ...]]]:
    """Segments on the 250-Hz grid: (low, high, window offsets from low); ``low`` falls on a whole raw sample of
    every rate."""
    grid = 1
    for fs in rates:  # 250-Hz samples per whole raw sample, for every rate at once
        step = int(SAMPLE_RATE_HZ) // math.gcd(int(fs), int(SAMPLE_RATE_HZ))
        grid = grid * step // math.gcd(grid, step)
    offsets = window_offsets(total, hop_s)
    span, margin = int(SEGMENT_S * SAMPLE_RATE_HZ), int(SEGMENT_MARGIN_S * SAMPLE_RATE_HZ)
    plan, first = [], 0
    for begin in range(0, total, span):
        last = first
        while last < len(offsets) and offsets[last] < begin + span:
            last += 1
        if last > first:
            low = max(offsets[first] - margin, 0)
            low -= low % grid
            high = min(offsets[last - 1] + WINDOW_SAMPLES + margin, total)
            plan.append((low, high, tuple(o - low for o in offsets[first:last])))
        first = last
    return plan


def _raw_bounds(low: int, high: int, fs: float, samples: int) -> tuple[int, int]:
    """The raw samples [start, stop) at ``fs`` that cover 250-Hz samples [low, high)."""
    return int(low * fs / SAMPLE_RATE_HZ), min(math.ceil(high * fs / SAMPLE_RATE_HZ), samples)


def align_rates(leads_signals: Sequence[np.ndarray], rates: Sequence[float], names: Sequence[str],
                max_gap_s: float = 0.1, long_gaps: str = "raise") -> tuple[np.ndarray, list[GapFill]]:
    """Leads recorded at different rates (bedside ECG 500 Hz, PPG 125 Hz), aligned at their start ->
    one [C, M] record at 250 Hz and the gaps filled on the way. Each lead is Fourier-resampled on its
    own; their durations must agree to within one sample of the slowest lead, or they are refused."""
    if len(leads_signals) != len(rates) or len(rates) != len(names):
        raise ShapeError(f"{len(leads_signals)} leads, {len(rates)} rates and {len(names)} lead names: one each")
    durations = []
    resampled = []
    for lead, fs, name in zip(leads_signals, rates, names):
        if np.ndim(lead) != 1:
            raise ShapeError(f"with one rate per lead each lead is a 1-D array; {name} has shape {np.shape(lead)}")
        row, fs, _, _ = validate(lead, fs, [name])
        durations.append(row.shape[1] / fs)
        resampled.append(row)
    slowest = 1.0 / min(float(r) for r in rates)
    if max(durations) - min(durations) > slowest + 1e-9:
        listing = ", ".join(f"{n} {d:.3f} s" for n, d in zip(names, durations))
        raise ShapeError(f"per-lead lengths do not match their rates ({listing}): leads must cover the same time")
    rows, fills = [], []
    for row, fs, name in zip(resampled, rates, names):
        fills += fill_gaps(row, fs, [name], max_gap_s, long_gaps)
        rows.append(to_model_rate(row, fs)[0])
    length = min(len(r) for r in rows)
    return np.stack([r[:length] for r in rows]), fills
