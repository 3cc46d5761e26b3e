"""Reading recordings for ``csfm-edge run``: ``.npz`` (the shared schema), ``.npy``, ``.csv`` and WFDB.

WFDB goes through the field's own reader (the ``wfdb`` package, extra ``wfdb``), including
multi-frequency records whose leads have different rates. Every unreadable or inconsistent input
raises :class:`~csfm_edge.errors.InputFileError` naming the file and the problem.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csfm_edge.errors import InputFileError, LeadError
from csfm_edge.leads import lead_id, lead_names


@dataclass
class Recording:
    """A raw recording: one [C, N] array at one rate, or one 1-D array per lead with one rate each."""

    signal: np.ndarray | list[np.ndarray]
    fs: float | list[float]
    leads: list[str]
    dropped: list[str] = field(default_factory=list)  # recorded leads CSFM has no channel for
    source: str = ""


def _known_leads(names: list[str], source: str) -> tuple[list[int], list[str], list[str]]:
    """Rows whose names CSFM knows, their canonical names, and the names dropped."""
    rows, keep, dropped = [], [], []
    for row, name in enumerate(names):
        try:
            keep.append(lead_names([lead_id(str(name))])[0])
            rows.append(row)
        except LeadError:
            dropped.append(str(name))
    if not rows:
        raise InputFileError(f"{source}: none of its leads {names} is one CSFM knows; name them with --leads")
    return rows, keep, dropped


def _select(names_in_file: list[str] | None, count: int, leads: list[str] | None, source: str
            ) -> tuple[list[int], list[str], list[str]]:
    """``leads`` given: one per row (or the rows named so in the file); ``None``/auto: the file's names."""
    if leads is None:
        if names_in_file is None:
            raise InputFileError(f"{source} names no leads: pass --leads (e.g. --leads II,PPG)")
        return _known_leads(names_in_file, source)
    if names_in_file is not None and all(n in names_in_file for n in leads) and len(leads) < count:
        return [names_in_file.index(n) for n in leads], list(leads), []
    if len(leads) != count:
        raise InputFileError(f"{source} has {count} leads but --leads names {len(leads)}")
    return list(range(count)), list(leads), []


def _need_fs(fs: float | None, source: str) -> float:
    if fs is None:
        raise InputFileError(f"{source} does not record its sampling rate: pass --fs")
    return fs


def read_recording(path: str | Path, fs: float | None = None, leads: list[str] | None = None) -> Recording:
    """Read ``path`` by its suffix; ``fs``/``leads`` override or supply what the file lacks."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path} does not exist")
    suffix = path.suffix.lower()
    if suffix != ".hea" and path.stat().st_size == 0:
        raise InputFileError(f"{path} is empty")
    if suffix == ".npz":
        return _read_npz(path, fs, leads)
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputFileError(f"{path} is not a readable .npy array ({exc})") from None
        return _rows(array, _need_fs(fs, path.name), None, leads, path.name)
    if suffix == ".csv":
        return _read_csv(path, fs, leads)
    if suffix == ".hea":
        return _read_wfdb(path, fs, leads)
    raise InputFileError(f"{path.name}: unknown input type {suffix!r} (use .npz, .npy, .csv or a WFDB .hea)")


def _rows(array: np.ndarray, fs: float, names: list[str] | None, leads: list[str] | None, source: str) -> Recording:
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.size == 0:
        raise InputFileError(f"{source}: expected a [leads, samples] array, got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise InputFileError(f"{source}: expected numbers, got dtype {array.dtype}")
    rows, keep, dropped = _select(names, array.shape[0], leads, source)
    return Recording(array[rows], fs, keep, dropped, source)


def _read_npz(path: Path, fs: float | None, leads: list[str] | None) -> Recording:
    try:
        with np.load(path, allow_pickle=False) as record:
            if "signal" not in record:
                raise InputFileError(f"{path.name} has no 'signal' array (fields: signal [C, T], fs, leads)")
            signal = record["signal"]
            file_fs = float(record["fs"]) if "fs" in record else None
            names = [str(n) for n in record["leads"]] if "leads" in record else None
            ids = record["channel_ids"] if "channel_ids" in record else None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InputFileError(f"{path.name} is not a readable .npz (truncated or corrupt: {exc})") from None
    if names is not None and ids is not None and leads is None:
        # the shared schema's ids say which rows CSFM knows (-1: none, e.g. a103l's unnamed 'V')
        names = [lead_names([i])[0] if i >= 0 else f"{n} (no CSFM id)" for n, i in zip(names, ids)]
    return _rows(signal, _need_fs(fs if fs is not None else file_fs, path.name), names, leads, path.name)


def _read_csv(path: Path, fs: float | None, leads: list[str] | None) -> Recording:
    with open(path) as f:
        first = f.readline().strip()
    cells = [c.strip() for c in first.split(",")]
    header = not all(_is_number(c) for c in cells if c)
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1 if header else 0, ndmin=2)
    except ValueError as exc:
        raise InputFileError(f"{path.name}: not a numeric CSV of one column per lead ({exc})") from None
    return _rows(table.T, _need_fs(fs, path.name), cells if header else None, leads, path.name)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_wfdb(path: Path, fs: float | None, leads: list[str] | None) -> Recording:
    try:
        import wfdb
    except ImportError:
        raise InputFileError("reading WFDB records needs the wfdb package: pip install 'csfm-edge[wfdb]'") from None
    try:
        record = wfdb.rdrecord(str(path.with_suffix("")), smooth_frames=False)
    except Exception as exc:  # wfdb raises many types for missing .dat files and bad headers
        raise InputFileError(f"{path.name}: WFDB record not readable ({type(exc).__name__}: {exc})") from None
    names = list(record.sig_name)
    signals = record.e_p_signal  # one array per lead, each at fs x its samples per frame
    rates = [float(record.fs) * int(spf) for spf in record.samps_per_frame]
    rows, keep, dropped = _select(names, len(names), leads, path.name)
    if len(set(rates[r] for r in rows)) == 1:
        return Recording(np.stack([signals[r] for r in rows]), fs or rates[rows[0]], keep, dropped, path.name)
    return Recording([signals[r] for r in rows], [rates[r] for r in rows], keep, dropped, path.name)
