"""Reading recordings: ``.npz`` (the shared schema), ``.npy``, ``.csv``, WFDB ``.hea`` and EDF/EDF+/BDF.

One function, :func:`read_recording`, serves the CLI and the Python API. Channel labels are mapped to
CSFM leads the way recorders spell them ("ECG II", "EKG V1", "Lead aVR", "Pleth", "SpO2 Pleth", b"MLII",
with a BOM, quotes or spaces), plus a user's ``lead_map`` for anything else; the mapping used is kept
in the :class:`Recording`. ``leads`` selects by name when the file names its channels (in the order
given), by position only when it does not. Labels CSFM has no channel for are dropped and listed,
never silently. Any inconsistency (rows vs names, ``channel_ids`` vs ``leads``, per-lead rates vs
rows, a rate that is not a finite number) is an :class:`~csfm_edge.errors.InputFileError` naming the
file and the problem.

EDF/EDF+/BDF go through pyedflib (extra ``edf``): it reads all three (BDF's 24-bit samples too),
signals at different rates in one file, physical values with their units, and keeps EDF+ annotation
channels out of the signal list. WFDB goes through the ``wfdb`` package (extra ``wfdb``).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csfm_edge.errors import InputFileError, LeadError
from csfm_edge.leads import LEAD_NAMES, PPG_ID, clean_label, lead_id, strip_label, vendor_lead

READABLE_SUFFIXES = (".npz", ".npy", ".csv", ".hea", ".edf", ".bdf")
# ECG in physical units other than millivolts is scaled to mV (PPG keeps its arbitrary units).
TO_MILLIVOLTS = {"V": 1e3, "MV": 1.0, "UV": 1e-3, "\u00b5V".upper(): 1e-3, "\u03bcV".upper(): 1e-3, "NV": 1e-6}


@dataclass
class Recording:
    """A raw recording: one [C, N] array at one rate, or one 1-D array per lead with one rate each."""

    signal: np.ndarray | list[np.ndarray]
    fs: float | list[float]
    leads: list[str]
    dropped: list[str] = field(default_factory=list)  # channel labels CSFM has no lead for
    source: str = ""
    lead_mapping: dict[str, str] = field(default_factory=dict)  # file label (or "row N") -> CSFM lead


def read_lead_map(path: str | Path) -> dict[str, str]:
    """A ``--lead-map`` file: a JSON object ``{"label": "lead"}`` or CSV lines ``label,lead``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputFileError(f"lead map {path} is not readable ({exc.strerror or exc})") from None
    if path.suffix.lower() == ".json":
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputFileError(f"lead map {path.name} is not readable JSON ({exc})") from None
        if not isinstance(mapping, dict):
            raise InputFileError(f"lead map {path.name} must be a JSON object of label -> lead")
    else:
        rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        if any(len(r) != 2 for r in rows):
            raise InputFileError(f"lead map {path.name}: each line must be 'label,lead'")
        mapping = {label: lead for label, lead in rows}
    for label, lead in mapping.items():
        try:
            lead_id(str(lead))
        except LeadError as exc:
            raise InputFileError(f"lead map {path.name}: {label!r} -> {exc}") from None
    return {str(k): str(v) for k, v in mapping.items()}


def _requested_id(lead: str | int) -> int:
    """A ``--leads`` item: a name (aliases and vendor labels too) or a CSFM id given as digits."""
    if isinstance(lead, str) and lead.strip().isdigit():
        return lead_id(int(lead.strip()))
    found = vendor_lead(lead) if isinstance(lead, str) else None
    return found if found is not None else lead_id(lead)


def _select(labels: Sequence[str] | None, count: int, leads: Sequence[str | int] | None, source: str,
            lead_map: Mapping[str, str] | None, ids: Sequence[int] | None = None
            ) -> tuple[list[int], list[str], list[str], dict[str, str]]:
    """Rows to keep, their CSFM lead names, the labels dropped and the label -> lead mapping used.

    ``ids``: the CSFM id the file itself records per row (-1: none)."""
    if labels is None:
        if leads is None:
            raise InputFileError(f"{source} names no leads: pass --leads (e.g. --leads II,PPG)")
        if len(leads) != count:
            raise InputFileError(f"{source} has {count} unnamed rows but --leads names {len(leads)}: name one "
                                 "lead per row, in order")
        names = [LEAD_NAMES[_requested_id(lead)] for lead in leads]
        return list(range(count)), names, [], {f"row {r}": n for r, n in enumerate(names)}
    if len(labels) != count:
        raise InputFileError(f"{source} has {count} signal rows but {len(labels)} lead names: they must match")
    mapped: list[int | None] = []
    labels = list(labels)
    for row, label in enumerate(labels):
        recorded = ids[row] if ids is not None else None
        if recorded is not None and recorded < 0:  # the file itself says CSFM has no channel for this row
            labels[row] = f"{label} (no CSFM id)"
            mapped.append(None)
            continue
        found = vendor_lead(label, lead_map)
        if recorded is not None and found is not None and recorded != found:
            raise InputFileError(f"{source}: row {row} is named {clean_label(label)!r} ({LEAD_NAMES[found]}) but its "
                                 f"channel_ids say {LEAD_NAMES[recorded]}: fix the file or pass --lead-map")
        mapped.append(recorded if recorded is not None else found)
    seen: dict[int, str] = {}
    for label, i in zip(labels, mapped):
        if i is not None and i in seen:
            raise InputFileError(f"{source}: labels {seen[i]!r} and {label!r} both map to lead {LEAD_NAMES[i]}; "
                                 "pass --leads to pick one or --lead-map to rename")
        if i is not None:
            seen[i] = label
    if leads is None:
        rows = [r for r, i in enumerate(mapped) if i is not None]
        if not rows:
            raise InputFileError(f"{source}: none of its leads {list(labels)} is one CSFM knows; name them with "
                                 "--leads or --lead-map")
    else:
        rows = []
        for lead in leads:
            wanted = _requested_id(lead)
            if wanted not in mapped:
                present = ", ".join(f"{label} ({LEAD_NAMES[i]})" if i is not None else str(label)
                                    for label, i in zip(labels, mapped))
                raise InputFileError(f"{source} has no lead {LEAD_NAMES[wanted]} (--leads {lead}); it has {present}")
            rows.append(mapped.index(wanted))
    names = [LEAD_NAMES[mapped[r]] for r in rows]
    dropped = [str(labels[r]) for r in range(count) if r not in rows and mapped[r] is None]
    return rows, names, dropped, {str(labels[r]): n for r, n in zip(rows, names)}


def _rate(value, source: str) -> float:
    try:
        rate = float(np.asarray(value).item())
    except (TypeError, ValueError):
        raise InputFileError(f"{source}: sampling rate {value!r} is not a number") from None
    if not math.isfinite(rate) or rate <= 0:
        raise InputFileError(f"{source}: sampling rate {rate} is not a finite positive number")
    return rate


def _check_given_fs(fs: float | None, recorded: Sequence[float], source: str) -> None:
    """``--fs`` is for files that carry no rate: refuse one that contradicts the rate(s) the file records,
    rather than resampling every lead as if recorded at another rate."""
    if fs is None or not len(recorded):
        return
    given = _rate(fs, source)
    if any(abs(float(r) - given) > 1e-9 * given for r in recorded):
        listing = ", ".join(f"{float(r):g}" for r in sorted(set(float(r) for r in recorded)))
        raise InputFileError(f"{source} records its rate ({listing} Hz); --fs {given:g} disagrees: leave --fs out "
                             "(it is for files without a rate)")


def _need_fs(fs: float | None, source: str) -> float:
    if fs is None:
        raise InputFileError(f"{source} does not record its sampling rate: pass --fs")
    return _rate(fs, source)


def read_recording(path: str | Path, fs: float | None = None, leads: Sequence[str | int] | None = None,
                   lead_map: Mapping[str, str] | None = None) -> Recording:
    """Read ``path`` by its suffix; ``fs``/``leads`` override or supply what the file lacks."""
    path = check_recording_file(path)
    suffix = path.suffix.lower()
    if suffix != ".hea" and path.stat().st_size == 0:
        raise InputFileError(f"{path} is empty")
    readers = {".npz": _read_npz, ".npy": _read_npy, ".csv": _read_csv, ".hea": _read_wfdb, ".edf": _read_edf,
               ".bdf": _read_edf}
    if suffix not in readers:
        raise InputFileError(f"{path.name}: unknown input type {suffix!r} (use {', '.join(READABLE_SUFFIXES)})")
    return readers[suffix](path, fs, leads, lead_map)


def check_recording_file(path: str | Path) -> Path:
    """``path`` if it is a regular file; else an :class:`InputFileError` saying what it is instead, before anything
    opens it (opening a FIFO blocks until someone writes to it)."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path} is a broken symlink or a symlink loop" if path.is_symlink()
                             else f"{path} does not exist")
    if path.is_dir():
        raise InputFileError(f"{path} is a folder, not a recording")
    if not path.is_file():  # a FIFO or a device: reading it could block for ever
        raise InputFileError(f"{path} is not a regular file (a FIFO or a device?)")
    return path


def _rows(array: np.ndarray, fs: float, labels: Sequence[str] | None, leads, source: str, lead_map,
          ids: Sequence[int] | None = None) -> Recording:
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.size == 0:
        raise InputFileError(f"{source}: expected a [leads, samples] array, got shape {array.shape}")
    if array.dtype.kind not in "iuf":
        raise InputFileError(f"{source}: expected numbers, got dtype {array.dtype}")
    rows, names, dropped, mapping = _select(labels, array.shape[0], leads, source, lead_map, ids)
    return Recording(array[rows], fs, names, dropped, source, mapping)


def _read_npy(path: Path, fs, leads, lead_map) -> Recording:
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")  # rows are copied as windows are cut
    except (ValueError, OSError) as exc:
        raise InputFileError(f"{path} is not a readable .npy array ({exc})") from None
    return _rows(array, _need_fs(fs, path.name), None, leads, path.name, lead_map)


def _read_npz(path: Path, fs, leads, lead_map) -> Recording:
    try:
        with np.load(path, allow_pickle=False) as record:
            if "signal" not in record:
                raise InputFileError(f"{path.name} has no 'signal' array (fields: signal [C, T], fs, leads)")
            signal = record["signal"]
            file_fs = record["fs"] if "fs" in record else None
            labels = [strip_label(n) for n in np.atleast_1d(record["leads"])] if "leads" in record else None
            ids = np.atleast_1d(record["channel_ids"]) if "channel_ids" in record else None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InputFileError(f"{path.name} is not a readable .npz (truncated or corrupt: {exc})") from None
    if fs is None and file_fs is not None and np.size(file_fs) > 1:
        rates = np.ravel(file_fs)
        if len(rates) != np.shape(signal)[0]:
            raise InputFileError(f"{path.name}: {len(rates)} sampling rates for {np.shape(signal)[0]} signal rows")
        if len(set(_rate(r, path.name) for r in rates)) > 1:
            raise InputFileError(f"{path.name}: rows of one [C, T] array share one sampling rate, but fs gives "
                                 f"{sorted(set(rates.tolist()))}: store each lead at one rate (or resample first)")
        file_fs = rates[0]
    if ids is not None:
        if len(ids) != np.shape(signal)[0]:
            raise InputFileError(f"{path.name}: {len(ids)} channel_ids for {np.shape(signal)[0]} signal rows")
        ids = [int(i) for i in ids]
        if labels is None:
            labels = [LEAD_NAMES[i] if i >= 0 else f"row {r}" for r, i in enumerate(ids)]
    if fs is not None and file_fs is not None:
        _check_given_fs(fs, [_rate(np.ravel(file_fs)[0], path.name)], path.name)
    rate = _need_fs(fs if fs is not None else file_fs, path.name)
    return _rows(np.asarray(signal), rate, labels, leads, path.name, lead_map, ids)


def _read_csv(path: Path, fs, leads, lead_map) -> Recording:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: Excel's byte-order mark
            first = f.readline()
        dialect = csv.Sniffer().sniff(first, delimiters=",;\t") if first.strip() else csv.excel
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path.name} is not a readable text CSV ({exc})") from None
    except csv.Error:
        dialect = csv.excel
    cells = next(csv.reader([first], dialect))
    header = not all(_is_number(c) for c in cells if c.strip())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": said below, in one line
            table = np.loadtxt(path, delimiter=dialect.delimiter, skiprows=1 if header else 0, ndmin=2,
                               encoding="utf-8-sig", quotechar='"')  # quoted numbers: as spreadsheets write them
    except ValueError as exc:
        raise InputFileError(f"{path.name}: not a numeric CSV of one column per lead ({exc})") from None
    if table.size == 0:
        raise InputFileError(f"{path.name} has {'a header but ' if header else ''}no rows of samples")
    labels = [strip_label(c) for c in cells] if header else None
    return _rows(table.T, _need_fs(fs, path.name), labels, leads, path.name, lead_map)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_wfdb(path: Path, fs, leads, lead_map) -> Recording:
    try:
        import wfdb
    except ImportError:
        raise InputFileError("reading WFDB records needs the wfdb package: pip install 'csfm-edge[wfdb]'") from None
    try:
        record = wfdb.rdrecord(str(path.with_suffix("")), smooth_frames=False)
    except Exception as exc:  # wfdb raises many types for missing .dat files and bad headers
        raise InputFileError(f"{path.name}: WFDB record not readable ({type(exc).__name__}: {exc})") from None
    rates = [float(record.fs) * int(spf) for spf in record.samps_per_frame]
    return _per_lead(list(record.sig_name), record.e_p_signal, rates, fs, leads, lead_map, path.name)


def _per_lead(labels: list[str], signals: Sequence[np.ndarray], rates: list[float], fs, leads, lead_map,
              source: str) -> Recording:
    """Leads stored one array per channel, each at its own rate (WFDB, EDF)."""
    rows, names, dropped, mapping = _select(labels, len(labels), leads, source, lead_map)
    _check_given_fs(fs, [rates[r] for r in rows], source)
    if fs is not None:
        rates = [_rate(fs, source)] * len(rates)
    chosen = [np.asarray(signals[r], dtype=np.float64) for r in rows]
    if len({rates[r] for r in rows}) == 1 and len({len(x) for x in chosen}) == 1:
        return Recording(np.stack(chosen), rates[rows[0]], names, dropped, source, mapping)
    return Recording(chosen, [rates[r] for r in rows], names, dropped, source, mapping)


class EdfRows:
    """The chosen rows of a single-rate EDF/BDF, read on demand: ``rows[:, start:stop]`` reads only that
    stretch, so a 24-h Holter is scored a segment at a time (``np.asarray(rows)`` reads all of it)."""

    ndim = 2
    dtype = np.dtype(np.float64)

    def __init__(self, path: Path, rows: list[int], scales: list[float], samples: int):
        self.path, self.rows, self.scales = path, rows, scales
        self.shape = (len(rows), samples)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key) -> np.ndarray:
        import pyedflib

        rows, columns = key if isinstance(key, tuple) else (key, slice(None))
        start, stop, step = columns.indices(self.shape[1]) if isinstance(columns, slice) else (columns, columns + 1, 1)
        picked = np.arange(len(self.rows))[rows]
        reader = pyedflib.EdfReader(str(self.path))
        try:
            out = np.stack([reader.readSignal(self.rows[i], start, max(stop - start, 0)) * self.scales[i]
                            for i in np.atleast_1d(picked)])
        finally:
            reader.close()
        out = out[:, ::step]
        return out if np.ndim(picked) else out[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:, :].astype(dtype or self.dtype, copy=False)


class EdfLead:
    """One lead of a multi-rate EDF/BDF (ECG 500 Hz beside PPG 125 Hz), read on demand: ``lead[start:stop]``
    reads only that stretch, so a multi-rate Holter is also scored a segment at a time."""

    ndim = 1
    dtype = np.dtype(np.float64)

    def __init__(self, path: Path, row: int, scale: float, samples: int):
        self.path, self.row, self.scale = path, row, scale
        self.shape = (samples,)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        import pyedflib

        start, stop, step = key.indices(self.shape[0])
        reader = pyedflib.EdfReader(str(self.path))
        try:
            return (reader.readSignal(self.row, start, max(stop - start, 0)) * self.scale)[::step]
        finally:
            reader.close()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return self[:].astype(dtype or self.dtype, copy=False)


def _check_edf_size(path: Path) -> None:
    """Refuse an EDF/BDF whose header accounts for fewer data records than the file holds: readers follow the
    header and would silently leave the rest of the recording out (a header not updated after a crash)."""
    with open(path, "rb") as f:
        header = f.read(256)
        try:
            signals = int(header[252:256].decode("ascii").strip())
            records = int(header[236:244].decode("ascii").strip())
            f.seek(256 + signals * 216)
            per_record = sum(int(f.read(8).decode("ascii").strip()) for _ in range(signals))
        except (ValueError, UnicodeDecodeError):
            return  # pyedflib says what is wrong with the header
    width = 3 if header[:1] == b"\xff" else 2  # BDF: 24-bit samples
    expected = 256 * (signals + 1) + records * per_record * width
    size = path.stat().st_size
    if records >= 0 and per_record and size >= expected + per_record * width:
        held = (size - 256 * (signals + 1)) // (per_record * width)
        raise InputFileError(f"{path.name}: its header counts {records} data records but the file holds {held}: "
                             "the header is damaged or was not updated; refusing to read part of the recording "
                             "(repair the header's record count)")


def _read_edf(path: Path, fs, leads, lead_map) -> Recording:
    try:
        import pyedflib
    except ImportError:
        raise InputFileError("reading EDF/BDF needs pyedflib: pip install 'csfm-edge[edf]'") from None
    _check_edf_size(path)
    try:
        reader = pyedflib.EdfReader(str(path))
    except OSError as exc:
        raise InputFileError(f"{path.name}: not a readable EDF/EDF+/BDF file ({exc})") from None
    try:
        labels = [str(label) for label in reader.getSignalLabels()]
        if not labels:
            raise InputFileError(f"{path.name} holds no signals (an annotations-only EDF+ file)")
        rates = [float(reader.getSampleFrequency(i)) for i in range(len(labels))]
        units = [str(reader.getPhysicalDimension(i)).strip().upper() for i in range(len(labels))]
        lengths = [int(n) for n in reader.getNSamples()]
        rows, names, dropped, mapping = _select(labels, len(labels), leads, path.name, lead_map)
        _check_given_fs(fs, [rates[r] for r in rows], path.name)
        # physical values; ECG scaled to millivolts from the unit the file records
        scales = [1.0 if vendor_lead(labels[r], lead_map) == PPG_ID else TO_MILLIVOLTS.get(units[r], 1.0)
                  for r in rows]
        if len({rates[r] for r in rows}) == 1 and len({lengths[r] for r in rows}) == 1:
            rate = _rate(fs, path.name) if fs is not None else rates[rows[0]]
            return Recording(EdfRows(path, rows, scales, lengths[rows[0]]), rate, names, dropped, path.name, mapping)
    finally:
        reader.close()
    chosen = [rates[r] for r in rows] if fs is None else [_rate(fs, path.name)] * len(rows)
    return Recording([EdfLead(path, r, scale, lengths[r]) for r, scale in zip(rows, scales)], chosen, names,
                     dropped, path.name, mapping)
