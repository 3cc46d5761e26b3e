"""Recordings in, results out: EDF/BDF written by pyedflib itself, vendor labels, Excel CSVs, --leads by
name, refusals naming the file, folders into one Parquet table, resume, and outputs that never destroy."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pyedflib
import pytest
from conftest import load_record
from pyedflib import highlevel

from csfm_edge.errors import InputFileError, OutputError, ParameterError
from csfm_edge.recordings.batch import BatchRequest, run_batch
from csfm_edge.recordings.readers import read_recording
from csfm_edge.runtime import Session


@pytest.fixture(scope="module")
def bedside(data_dir):
    with np.load(data_dir / "a103l.npz") as record:
        return record["signal"].astype(np.float64), float(record["fs"])


def _edf(path, signals, labels, rates, dims, file_type):
    """Written by pyedflib's own writer, one 1-s data record at a time (channels at their own rates)."""
    bdf = file_type in (pyedflib.FILETYPE_BDF, pyedflib.FILETYPE_BDFPLUS)
    digital = (-8388608, 8388607) if bdf else (-32768, 32767)
    headers = [highlevel.make_signal_header(label, dimension=dim, sample_frequency=rate,
                                            physical_min=float(np.floor(np.min(x))) - 1,
                                            physical_max=float(np.ceil(np.max(x))) + 1,
                                            digital_min=digital[0], digital_max=digital[1])
               for x, label, rate, dim in zip(signals, labels, rates, dims)]
    writer = pyedflib.EdfWriter(str(path), len(signals), file_type=file_type)
    try:
        writer.setSignalHeaders(headers)
        for second in range(len(signals[0]) // rates[0]):
            for x, rate in zip(signals, rates):
                writer.writePhysicalSamples(np.ascontiguousarray(x[second * rate: (second + 1) * rate], np.float64))
        if file_type == pyedflib.FILETYPE_EDFPLUS:
            writer.writeAnnotation(1.0, -1, "electrode check")  # an EDF+ annotation, to be ignored
    finally:
        writer.close()
    return path


@pytest.mark.parametrize("file_type,suffix", [(pyedflib.FILETYPE_EDF, ".edf"), (pyedflib.FILETYPE_EDFPLUS, ".edf"),
                                              (pyedflib.FILETYPE_BDF, ".bdf")])
def test_edf_and_bdf_with_vendor_labels_and_two_rates(tiny_artifacts, tmp_path, bedside, file_type, suffix):
    signal, fs = bedside
    ecg_uv = signal[0, : int(60 * fs)] * 1000  # microvolts, as many recorders store ECG
    ecg_500 = np.interp(np.arange(0, 60, 1 / 500), np.arange(len(ecg_uv)) / fs, ecg_uv)
    ppg = signal[2, : int(60 * fs)]
    resp = np.sin(np.arange(int(60 * 25)) / 25 * 2 * np.pi * 0.25)
    path = _edf(tmp_path / f"monitor{suffix}", [ecg_500, ppg, resp], ["ECG II", "SpO2 Pleth", "Resp"],
                [500, 250, 25], ["uV", "%", "Ohm"], file_type)
    recording = read_recording(path)
    assert recording.leads == ["II", "PPG"] and recording.dropped == ["Resp"]
    assert recording.fs == [500.0, 250.0] and recording.lead_mapping == {"ECG II": "II", "SpO2 Pleth": "PPG"}
    assert np.abs(recording.signal[0] - ecg_500 / 1000).max() < 0.01  # scaled from uV to mV
    with Session.open(tiny_artifacts["fp32"], provider="cpu") as session:
        result = session.embed(recording.signal, recording.fs, recording.leads)
    assert result.features.shape == (6, 768) and not any(result.flags)


def test_vendor_labels_leads_by_name_and_lead_maps(tmp_path, bedside):
    signal, fs = bedside
    path = tmp_path / "vendor.npz"
    np.savez(path, signal=signal[:, : int(30 * fs)], fs=fs, leads=np.array([b"Lead II", b"Chest", b"Pleth"]))
    recording = read_recording(path)
    assert recording.leads == ["II", "PPG"] and recording.dropped == ["Chest"]
    chosen = read_recording(path, leads=["PPG", "II"])  # by name, in the order given
    assert chosen.leads == ["PPG", "II"] and np.array_equal(chosen.signal[0], signal[2, : int(30 * fs)])
    assert read_recording(path, leads=["12", "1"]).leads == ["PPG", "II"]  # ids, as the help says
    with pytest.raises(InputFileError, match="no lead V5 .*it has Lead II \\(II\\), Chest, Pleth \\(PPG\\)"):
        read_recording(path, leads=["II", "V5"])
    mapped = read_recording(path, lead_map={"chest": "V2"})
    assert mapped.leads == ["II", "V2", "PPG"] and mapped.lead_mapping["Chest"] == "V2"


def test_excel_csv_with_bom_quotes_and_semicolons(tmp_path, bedside):
    signal, fs = bedside
    x = signal[[0, 2], : int(20 * fs)]
    text = "\ufeff\"ECG II\";\"Pleth\"\n" + "\n".join(f"{a:.6f};{b:.6f}" for a, b in x.T)
    (tmp_path / "excel.csv").write_text(text, encoding="utf-8")
    recording = read_recording(tmp_path / "excel.csv", fs=fs)
    assert recording.leads == ["II", "PPG"] and recording.dropped == []
    np.testing.assert_allclose(recording.signal, x, atol=1e-6)


@pytest.mark.parametrize("fields,message", [
    ({"leads": np.array(["II", "PPG"])}, "3 signal rows but 2 lead names"),
    ({"leads": np.array(["II", "V", "PLETH"]), "channel_ids": np.array([2, -1, 12])}, "channel_ids say III"),
    ({"leads": np.array(["II", "V", "PLETH"]), "fs": np.array([250.0, 250.0])}, "2 sampling rates for 3"),
    ({"leads": np.array(["II", "V", "PLETH"]), "fs": np.array([500.0, 250.0, 125.0])}, "share one sampling rate"),
    ({"leads": np.array(["II", "V", "PLETH"]), "fs": np.array("fast")}, "is not a number"),
    ({"leads": np.array(["II", "V", "PLETH"]), "fs": np.array(np.nan)}, "not a finite positive number"),
])
def test_inconsistent_files_are_refused_naming_file_and_problem(tmp_path, bedside, fields, message):
    signal, fs = bedside
    arrays = {"signal": signal[:, : int(20 * fs)], "fs": np.array(fs), **fields}
    np.savez(tmp_path / "odd.npz", **arrays)
    with pytest.raises(InputFileError, match=f"odd.npz.*{message}"):
        read_recording(tmp_path / "odd.npz")


def test_positional_leads_only_for_unnamed_rows(tmp_path, bedside):
    signal, fs = bedside
    np.save(tmp_path / "rows.npy", signal[[0, 2], : int(20 * fs)])
    assert read_recording(tmp_path / "rows.npy", fs=fs, leads=["II", "PPG"]).leads == ["II", "PPG"]
    with pytest.raises(InputFileError, match="2 unnamed rows but --leads names 3"):
        read_recording(tmp_path / "rows.npy", fs=fs, leads=["II", "PPG", "V5"])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csfm_edge", *args], capture_output=True, text=True, timeout=600)


def _folder(tmp_path, data_dir, count=6):
    folder = tmp_path / "ptbxl"
    folder.mkdir()
    for name in ("E07500", "E07501", "E07502", "HR06000", "HR06001", "JS20010")[:count]:
        (folder / f"{name}.npz").write_bytes((data_dir / f"{name}.npz").read_bytes())
    return folder


def test_folder_into_one_table_with_a_corrupt_file(tiny_artifacts, tmp_path, data_dir):
    folder = _folder(tmp_path, data_dir)
    (folder / "broken.npz").write_bytes((data_dir / "E07503.npz").read_bytes()[:3000])
    out = tmp_path / "scores.parquet"
    done = _cli("run", str(tiny_artifacts["int8"]), str(folder), "--out", str(out))
    assert done.returncode == 2, done.stderr
    assert "6 of 7 recordings scored" in done.stdout and "failed " in done.stdout and "broken.npz" in done.stdout
    table = pq.read_table(out)
    assert table.num_rows == 6 and table.column("features").type.list_size == 768
    assert set(table.column("record_sha256").to_pylist()) and all(table.column("artifact_sha256").to_pylist())
    metadata = json.loads(table.schema.metadata[b"csfm_edge"])
    assert metadata["artifact"].endswith("csfm-tiny.int8.onnx")
    [failure] = json.loads(out.with_name("scores.errors.json").read_text())
    assert failure["path"].endswith("broken.npz") and "truncated or corrupt" in failure["error"]
    with Session.open(tiny_artifacts["int8"]) as session:  # the table holds what Session.embed gives
        signal, fs, ids = load_record(folder / "E07500.npz")
        row = table.column("record").to_pylist().index(str(folder / "E07500.npz"))
        np.testing.assert_allclose(table.column("features")[row].values.to_numpy(),
                                   session.embed(signal, fs, ids).features[0], atol=1e-5)
    none = _cli("run", str(tiny_artifacts["int8"]), str(folder / "broken.npz"), str(folder / "broken.npz"))
    assert none.returncode == 1


def test_interrupted_batch_resumes_without_losing_work(tiny_artifacts, tmp_path, data_dir):
    folder = _folder(tmp_path, data_dir)
    out = tmp_path / "scores.parquet"

    class Interrupting(Session):
        calls = 0

        def score(self, prepared, batch_size=16):
            Interrupting.calls += 1
            if Interrupting.calls == 4:
                raise KeyboardInterrupt
            return super().score(prepared, batch_size)

    session = Session.open(tiny_artifacts["int8"], provider="cpu")
    session.__class__ = Interrupting
    with pytest.raises(KeyboardInterrupt):
        run_batch(BatchRequest(tiny_artifacts["int8"], [folder], out=out, progress=False), session)
    parts = out.with_name(out.name + ".parts")
    assert len(list(parts.glob("*.parquet"))) == 3 and not out.exists()
    refused = _cli("run", str(tiny_artifacts["int8"]), str(folder), "--out", str(out))
    assert refused.returncode == 1 and "--resume" in refused.stderr
    resumed = _cli("run", str(tiny_artifacts["int8"]), str(folder), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "3 already scored (resumed)" in resumed.stdout and not parts.exists()
    assert pq.read_table(out).num_rows == 6


def test_outputs_never_destroy_anything(tiny_artifacts, tmp_path, data_dir):
    record = tmp_path / "a103l.npz"
    record.write_bytes((data_dir / "a103l.npz").read_bytes())
    before = record.read_bytes()
    for out, message in [(record, "an input of this run"),
                         (tiny_artifacts["int8"], "an input of this run"),
                         (tiny_artifacts["int8"].with_suffix(".json"), "an input of this run"),
                         (tmp_path / "missing" / "r.json", "does not exist")]:
        done = _cli("run", str(tiny_artifacts["int8"]), str(record), "--out", str(out))
        assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert record.read_bytes() == before
    existing = tmp_path / "r.json"
    existing.write_text("keep me")
    done = _cli("run", str(tiny_artifacts["int8"]), str(record), "--out", str(existing))
    assert done.returncode == 1 and "--force" in done.stderr and existing.read_text() == "keep me"
    assert _cli("run", str(tiny_artifacts["int8"]), str(record), "--out", str(existing), "--force").returncode == 0
    assert json.loads(existing.read_text())["leads"] == ["II", "PPG"]
    from csfm_edge.fileio import check_output

    with pytest.raises(OutputError, match="an input"):
        check_output(record, protected=[record])


def test_a_hop_that_makes_too_many_windows_is_refused(tiny_artifacts, data_dir):
    done = _cli("run", str(tiny_artifacts["int8"]), str(data_dir / "a103l.npz"), "--hop", "0.004")
    assert done.returncode == 1 and "--max-windows" in done.stderr and "Traceback" not in done.stderr
    with Session.open(tiny_artifacts["int8"]) as session, pytest.raises(ParameterError, match="80001 windows"):
        signal, fs, ids = load_record(data_dir / "a103l.npz")
        session.embed(signal, fs, ids, hop_s=0.004)


def test_a_long_record_is_scored_in_bounded_memory(tiny_artifacts, tmp_path, data_dir):
    """12 h of real bedside II + PPG (a103l tiled), memory-mapped: peak memory stays within the record's raw
    float32 size plus 1 GB, and the windows equal whole-record processing away from the record's ends."""
    signal, fs, ids = load_record(data_dir / "a103l.npz")
    hours = 12
    tiled = np.tile(signal.astype(np.float32), int(np.ceil(hours * 3600 * fs / signal.shape[1])))
    tiled = tiled[:, : int(hours * 3600 * fs)]
    path = tmp_path / "holter.npy"
    np.save(path, tiled)
    raw_bytes = tiled.nbytes
    del tiled
    out = tmp_path / "holter.json"
    # VmHWM, not ru_maxrss: Linux carries the forking parent's (pytest's) peak into the child's ru_maxrss
    code = ("import re, sys; from pathlib import Path; from csfm_edge.cli import main; "
            f"rc = main(['run', {str(tiny_artifacts['int8'])!r}, {str(path)!r}, '--fs', '250', '--leads', 'II,PPG', "
            f"'--hop', '60', '--provider', 'cpu', '--out', {str(out)!r}]); "
            "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', Path('/proc/self/status').read_text()).group(1); "
            "print('peak', int(hwm) * 1024); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout.split("peak")[-1])
    assert peak < raw_bytes + (1 << 30), (peak, raw_bytes)
    result = json.loads(out.read_text())
    assert len(result["start_s"]) == (hours * 3600 - 10) // 60 + 2  # every 60 s, and the window ending at the end
    assert result["start_s"][-1] == hours * 3600 - 10


def test_edf_rows_read_only_the_stretch_asked_for(tmp_path, bedside):
    signal, fs = bedside
    ecg, ppg = signal[0, : int(120 * fs)], signal[2, : int(120 * fs)]
    path = _edf(tmp_path / "one-rate.edf", [ecg, ppg], ["EKG II", "PPG"], [250, 250], ["mV", "NU"],
                pyedflib.FILETYPE_EDFPLUS)
    recording = read_recording(path)
    rows = recording.signal
    assert rows.shape == (2, int(120 * fs)) and recording.fs == 250.0
    whole = np.asarray(rows)
    np.testing.assert_array_equal(rows[:, 5000:7500], whole[:, 5000:7500])
    np.testing.assert_allclose(whole[1], ppg, atol=1e-3)


def test_long_records_in_segments_equal_whole_record_processing(tiny_artifacts, data_dir, monkeypatch):
    from csfm_edge.runtime import session as session_module

    signal, fs, ids = load_record(data_dir / "mitdb100_5min.npz")
    record = np.tile(signal[:1], 8)  # 40 min of MLII: longer than LONG_RECORD_S
    record[0, int(1500 * fs): int(2000 * fs)] = 0.0  # the lead off for 500 s inside it
    with Session.open(tiny_artifacts["fp32"], provider="cpu") as session:
        segmented = session.embed(record, fs, ids[:1], hop_s=30)
        monkeypatch.setattr(session_module, "segment_plan", lambda *args: None)
        whole = session.embed(record, fs, ids[:1], hop_s=30)
    assert segmented.flags == whole.flags and sum("no_signal" in f for f in whole.flags) > 10
    scored = np.isfinite(whole.features).all(axis=1)
    np.testing.assert_array_equal(np.isfinite(segmented.features).all(axis=1), scored)
    inner = scored.copy()
    inner[[0, -1]] = False  # the two end windows: whole-record resampling wraps the record's ends together
    assert np.abs(segmented.features[inner] - whole.features[inner]).max() < 1e-4
