"""Real recordings for verification, calibration and benchmarks, torch-free.

The shared recordings (``../shared/data``, or ``$CSFM_EDGE_DATA``, or ``--data``) give a batch of real
10-s windows for each lead set CSFM is used with: 12-lead resting ECG, bedside lead II + PPG, an
ambulatory single lead, PPG alone. Where no data folder exists (a user's machine), the ECG that
ships with the package gives the single-lead set, and every check says which data it used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csfm_edge.config import WINDOW_SAMPLES
from csfm_edge.errors import CsfmError, InputFileError, ParameterError
from csfm_edge.leads import NUM_CHANNEL_TYPES, PPG_ID, lead_names, resolve_leads, rows_of
from csfm_edge.recordings.sample import sample_ecg
from csfm_edge.runtime.preprocess import sliding_windows
from csfm_edge.spec import check_window_length

# Verification and calibration use disjoint records and windows, so INT8 is not checked on the
# very windows it was calibrated on.
TWELVE_LEAD_RECORDS = {
    "verify": ("E07500", "E07501", "E07502", "E07503", "HR06000", "HR06001", "HR06002", "HR06003"),
    "calibrate": ("E07504", "E07505", "E07506", "E07507", "E07508", "E07509", "HR06004",
                  *(f"JS200{i}" for i in range(10, 20))),
}
# Calibration windows of the long records start 15, 25, 35 and 45 s into each minute: the verification
# windows cover 0-10 s of each minute, so the two never share a sample.
CALIBRATION_OFFSETS_S = (15.0, 25.0, 35.0, 45.0)
DYNAMIC_RECORDS = "cpsc2021_data_*.npz"  # Holter/wearable leads I, II: calibration only
FIRST_WINDOW_S = {"verify": 0.0, "calibrate": 30.0}  # long records: windows every 60 s from here
BEDSIDE_RECORD = "a103l"  # lead II, V (no CSFM id), PLETH at 250 Hz, 330 s
AMBULATORY_RECORD = "mitdb100_5min"  # MLII, V5 at 360 Hz, 300 s


def default_data_dir() -> Path | None:
    """``$CSFM_EDGE_DATA``, else None (the sample that ships with the package). Never the current folder:
    a command must do the same wherever it is run from."""
    env = os.environ.get("CSFM_EDGE_DATA")
    return Path(env) if env else None


@dataclass(frozen=True)
class LeadSetBatch:
    """Real preprocessed windows of one lead set: float32 [B, C, 2500] with their CSFM ids."""

    name: str
    signal: np.ndarray
    channel_ids: np.ndarray
    source: str
    files: tuple[Path, ...] = ()


def read_npz_record(path: Path) -> tuple[np.ndarray, float, np.ndarray]:
    """A recording in the shared schema (signal [C, T], fs, channel_ids) -> (signal, fs, ids)."""
    try:
        with np.load(path) as record:
            return record["signal"], float(record["fs"]), np.asarray(record["channel_ids"], dtype=np.int64)
    except (OSError, KeyError, ValueError) as exc:
        raise InputFileError(f"{path} is not a readable recording ({exc})") from None


def _windows(path: Path, ids: tuple[int, ...], count: int, first_s: float) -> np.ndarray:
    """``count`` windows of the leads ``ids`` every 60 s from ``first_s`` (one for a 10-s record)."""
    signal, fs, channel_ids = read_npz_record(path)
    windows = sliding_windows(signal[rows_of(channel_ids, ids)], fs, list(ids), hop_s=30.0)
    keep = [k for k, s in enumerate(windows.start_s) if s >= first_s and (s - first_s) % 60 == 0] or [0]
    return windows.data[keep[:count]]


def is_shared_layout(data_dir: Path) -> bool:
    """True for the shared recordings' folder (its file names are known); any other folder is a user's."""
    names = (*TWELVE_LEAD_RECORDS["verify"], BEDSIDE_RECORD, AMBULATORY_RECORD)
    return all((Path(data_dir) / f"{name}.npz").exists() for name in names)


def user_batches(data_dir: Path, split: str, per_set: int | None = None, total: int | None = None
                 ) -> list[LeadSetBatch]:
    """Real windows from a user's folder of recordings of any names and formats the runtime reads (those that
    record their rate and leads), grouped by lead set. Verification and calibration never share a window:
    in records of a minute or more, verification takes the window at 0 s of each minute and calibration those
    at 15-45 s; shorter records go whole to one or the other, alternately by file name."""
    from csfm_edge.recordings.batch import find_recordings
    from csfm_edge.recordings.readers import read_recording

    pools: dict[tuple[int, ...], list[np.ndarray]] = {}
    files: dict[tuple[int, ...], list[Path]] = {}
    for index, path in enumerate(find_recordings([data_dir], recursive=True)):
        try:
            recording = read_recording(path)
            signal = np.asarray(recording.signal) if not isinstance(recording.fs, list) else None
            if signal is None:
                continue  # leads at several rates: not used for verification or calibration
            windows = sliding_windows(signal, recording.fs, recording.leads, hop_s=5.0)
        except CsfmError:
            continue  # needs --fs/--leads, or unreadable: not usable here
        long = windows.signal_s >= 60
        keep = [k for k, start in enumerate(windows.start_s)
                if (long and start + 10 <= windows.signal_s
                    and (start % 60 == 0 if split == "verify" else start % 60 in CALIBRATION_OFFSETS_S))
                or (not long and k == 0 and (index % 2 == 0) == (split == "verify"))]
        ids = tuple(int(i) for i in resolve_leads(recording.leads))
        pools.setdefault(ids, []).extend(windows.data[keep])
        files.setdefault(ids, []).append(path)
    if not pools:
        raise InputFileError(f"{data_dir} holds no recording csfm-edge can read with its rate and leads "
                             "(npz with fs and leads, WFDB, EDF/BDF)")
    counts = {ids: len(pool) for ids, pool in pools.items()}
    if total is not None:  # round robin over lead sets
        counts = dict.fromkeys(pools, 0)
        while sum(counts.values()) < total and any(counts[i] < len(pools[i]) for i in pools):
            for i in pools:
                if counts[i] < len(pools[i]) and sum(counts.values()) < total:
                    counts[i] += 1
    elif per_set is not None:
        counts = {ids: min(per_set, len(pool)) for ids, pool in pools.items()}
    return [LeadSetBatch("+".join(lead_names(ids)).lower(), np.stack(pools[ids][:counts[ids]]), np.array(ids),
                         f"{data_dir}: {len(files[ids])} recordings ({split} windows)", tuple(files[ids]))
            for ids in sorted(pools) if counts[ids]]


def lead_set_batches(data_dir: Path | None, batch: int = 4, split: str = "verify") -> list[LeadSetBatch]:
    """Real windows per lead set in ``data_dir`` (vendored ECG if None); ``split`` verify or calibrate."""
    if data_dir is not None and not Path(data_dir).is_dir():
        raise InputFileError(f"data folder {data_dir} does not exist (pass --data with the shared recordings' folder, "
                             "or leave it out to use the sample that ships with the package)")
    if data_dir is not None and not is_shared_layout(data_dir):
        return user_batches(Path(data_dir), split, per_set=batch)
    if data_dir is None:
        recording = sample_ecg()
        windows = sliding_windows(recording.signal, recording.fs, recording.leads, hop_s=4.0).data
        picked = windows[:batch] if split == "verify" else windows[::-1][:batch]
        return [LeadSetBatch("ii", picked, np.array([1]), f"{recording.source} ({split} windows)")]
    data_dir, first = Path(data_dir), FIRST_WINDOW_S[split]
    records = TWELVE_LEAD_RECORDS[split][:batch]
    twelve = np.concatenate([_windows(data_dir / f"{r}.npz", tuple(range(12)), 1, 0.0) for r in records])
    bedside, ambulatory = data_dir / f"{BEDSIDE_RECORD}.npz", data_dir / f"{AMBULATORY_RECORD}.npz"
    every = f"windows every 60 s from {first:g} s"
    return [
        LeadSetBatch("12lead", twelve, np.arange(12), "CinC 2021 Georgia/PTB-XL " + ",".join(records),
                     tuple(data_dir / f"{r}.npz" for r in records)),
        LeadSetBatch("ii+ppg", _windows(bedside, (1, PPG_ID), batch, first), np.array([1, PPG_ID]),
                     f"CinC 2015 {BEDSIDE_RECORD} II+PLETH, {every}", (bedside,)),
        LeadSetBatch("ii", _windows(ambulatory, (1,), batch, first), np.array([1]),
                     f"MIT-BIH {AMBULATORY_RECORD} MLII, {every}", (ambulatory,)),
        LeadSetBatch("ppg", _windows(bedside, (PPG_ID,), batch, first), np.array([PPG_ID]),
                     f"CinC 2015 {BEDSIDE_RECORD} PLETH, {every}", (bedside,)),
    ]


def _calibration_windows(path: Path, ids: tuple[int, ...], offsets_s: tuple[float, ...] | None) -> np.ndarray:
    """Windows of ``ids`` at ``offsets_s`` into every minute (None: every 10 s, for records never verified on)."""
    signal, fs, channel_ids = read_npz_record(path)
    windows = sliding_windows(signal[rows_of(channel_ids, ids)], fs, list(ids), hop_s=5.0)
    keep = [k for k, s in enumerate(windows.start_s)
            if (s % 10 == 0 if offsets_s is None else s % 60 in offsets_s) and s + 10 <= windows.signal_s]
    return windows.data[keep]


def calibration_batches(data_dir: Path | None, windows: int) -> list[LeadSetBatch]:
    """Up to ``windows`` real windows for INT8 calibration, drawn in turn from every lead set the model serves
    (12-lead, II + PPG, II, PPG) and never overlapping a verification window: other 12-lead records, other
    minutes of the long records, and the dynamic ECG records verification does not use."""
    if data_dir is None:
        recording = sample_ecg()  # 22 s: its windows overlap the verification ones; refused unless allowed
        data = sliding_windows(recording.signal, recording.fs, recording.leads, hop_s=4.0).data[::-1][:windows]
        return [LeadSetBatch("ii", data, np.array([1]), f"{recording.source} (calibration windows)")]
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputFileError(f"calibration data folder {data_dir} does not exist")
    if not is_shared_layout(data_dir):
        return user_batches(data_dir, "calibrate", total=windows)
    bedside, ambulatory = data_dir / f"{BEDSIDE_RECORD}.npz", data_dir / f"{AMBULATORY_RECORD}.npz"
    dynamic = sorted(data_dir.glob(DYNAMIC_RECORDS))
    twelve_files = tuple(data_dir / f"{r}.npz" for r in TWELVE_LEAD_RECORDS["calibrate"])
    pools = [
        ("12lead", np.arange(12), [_windows(f, tuple(range(12)), 1, 0.0) for f in twelve_files if f.exists()],
         "CinC 2021 Georgia/PTB-XL/Chapman " + ",".join(f.stem for f in twelve_files if f.exists()), twelve_files),
        ("ii+ppg", np.array([1, PPG_ID]), [_calibration_windows(bedside, (1, PPG_ID), CALIBRATION_OFFSETS_S)],
         f"CinC 2015 {BEDSIDE_RECORD} II+PLETH, 15-45 s of each minute", (bedside,)),
        ("ii", np.array([1]), [_calibration_windows(ambulatory, (1,), CALIBRATION_OFFSETS_S)]
         + [_calibration_windows(f, (1,), None) for f in dynamic],
         f"MIT-BIH {AMBULATORY_RECORD} MLII (15-45 s of each minute) and CPSC 2021 lead II, every 10 s",
         (ambulatory, *dynamic)),
        ("ppg", np.array([PPG_ID]), [_calibration_windows(bedside, (PPG_ID,), CALIBRATION_OFFSETS_S)],
         f"CinC 2015 {BEDSIDE_RECORD} PLETH, 15-45 s of each minute", (bedside,)),
    ]
    available = [np.concatenate(parts) if parts else np.zeros((0, len(ids), WINDOW_SAMPLES), np.float32)
                 for _, ids, parts, _, _ in pools]
    taken = [0] * len(pools)
    while sum(taken) < windows and any(t < len(a) for t, a in zip(taken, available)):
        for k, pool in enumerate(available):  # round robin: every lead set gets its share while it has windows
            if taken[k] < len(pool) and sum(taken) < windows:
                taken[k] += 1
    return [LeadSetBatch(name, pool[:count], ids, source, tuple(f for f in files if f.exists()))
            for (name, ids, _, source, files), pool, count in zip(pools, available, taken) if count]


def real_batch(batches: list[LeadSetBatch], ids, batch: int, time: int = WINDOW_SAMPLES) -> np.ndarray:
    """Real windows arranged as float32 [batch, len(ids), time] for the given channel ids.

    Each id takes its channel from the batches that have it (any real ECG window for an ECG id no
    batch has), so benchmarks and shape checks run on real signal rather than noise.
    """
    check_window_length(time)
    if batch < 1:
        raise ParameterError(f"a batch holds at least one window, got {batch}")
    by_id: dict[int, list[np.ndarray]] = {}
    for b in batches:
        for c, i in enumerate(b.channel_ids):
            by_id.setdefault(int(i), []).extend(b.signal[:, c])
    ecg = [w for i, ws in sorted(by_id.items()) if i != PPG_ID for w in ws]
    pools = [by_id.get(int(i)) or ecg for i in ids]
    return np.asarray([[pool[k % len(pool)][:time] for pool in pools] for k in range(batch)], dtype=np.float32)


def shaped_batch(batches: list[LeadSetBatch], batch: int, channels: int, time: int) -> tuple[np.ndarray, np.ndarray]:
    """Real windows [batch, channels, time] with ids lead II, II + PPG, the first 12 leads (+ PPG for 13)."""
    if not 1 <= channels <= NUM_CHANNEL_TYPES:
        raise ParameterError(f"CSFM takes 1 to {NUM_CHANNEL_TYPES} channels, not {channels}")
    ids = {1: [1], 2: [1, PPG_ID]}.get(channels, list(range(min(channels, 12))) + [PPG_ID] * (channels == 13))
    return real_batch(batches, ids, batch, time), np.asarray(ids, dtype=np.int64)
