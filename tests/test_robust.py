"""A runtime that never dies on a bad signal and never lies: lead-off leads, streams, threads, trusted
artifacts, plausibility checks and typed errors, on real recordings and real exported graphs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import load_record

from csfm_edge.errors import (
    ArtifactError,
    CsfmError,
    FlatChannelError,
    ImplausibleSignalError,
    LeadError,
    NoSignalError,
    ParameterError,
    SampleRateError,
    ShapeError,
    SignalWarning,
)
from csfm_edge.runtime import Session
from csfm_edge.runtime.backends.openvino import openvino_available
from csfm_edge.runtime.manifest import manifest_path, read_manifest

OFF = [6, 7, 8]  # V1-V3 lead-off for the whole record


@pytest.fixture(scope="module")
def session(tiny_artifacts):
    with Session.open(tiny_artifacts["fp32"], provider="cpu") as s:
        yield s


@pytest.fixture(scope="module")
def twelve_lead(data_dir):
    return load_record(data_dir / "JS20010.npz")


@pytest.fixture(scope="module")
def bedside(data_dir):
    return load_record(data_dir / "a103l.npz")


# --- lead-off leads ---------------------------------------------------------------------------------

def test_lead_off_leads_are_dropped_and_the_rest_scored(session, twelve_lead):
    signal, fs, ids = twelve_lead
    off = signal.copy()
    off[OFF] = 0.0
    result = session.embed(off, fs, ids)
    assert [d.lead for d in result.dropped] == ["V1", "V2", "V3"]
    assert {d.reason for d in result.dropped} == {"flat"}
    assert result.leads == ["I", "II", "III", "aVR", "aVL", "aVF", "V4", "V5", "V6"]
    keep = [c for c in range(12) if c not in OFF]
    direct = session.embed(signal[keep], fs, ids[keep])  # the same leads given alone
    np.testing.assert_allclose(result.features, direct.features, atol=1e-5)
    assert result.aggregate["clean_windows"] == 1
    with pytest.raises(FlatChannelError, match="V1: flat for the whole recording"):
        session.embed(off, fs, ids, strict=True)
    missing = signal.copy()
    missing[OFF] = np.nan  # not recorded at all
    assert {d.reason for d in session.embed(missing, fs, ids).dropped} == {"missing"}
    with pytest.raises(NoSignalError, match="no lead carries signal"):
        session.embed(np.zeros_like(signal), fs, ids)


def test_a_lead_off_in_some_windows_is_scored_on_the_good_leads(session, bedside):
    signal, fs, ids = bedside
    x = signal[:, : int(60 * fs)].copy()
    x[1, int(12 * fs): int(38 * fs)] = x[1, int(12 * fs)]  # PPG probe off for 26 s
    result = session.embed(x, fs, ids, hop_s=10)
    flags = dict(zip(result.start_s.tolist(), result.flags))
    assert flags[0.0] == [] and flags[20.0] == ["flat:PPG"] and flags[50.0] == []
    ecg_only = session.embed(x[:1], fs, ids[:1], hop_s=10)
    twenty = list(result.start_s).index(20.0)
    np.testing.assert_allclose(result.features[twenty], ecg_only.features[twenty], atol=1e-5)
    assert result.aggregate["clean_windows"] == sum(not f for f in result.flags)


def test_cli_reports_dropped_leads_and_strict_refuses(tiny_artifacts, twelve_lead, tmp_path):
    signal, fs, ids = twelve_lead
    off = signal.copy()
    off[OFF] = 0.0
    record = tmp_path / "off.npz"
    np.savez(record, signal=off, fs=fs, leads=np.array(["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3",
                                                        "V4", "V5", "V6"]))
    done = _cli("run", str(tiny_artifacts["fp32"]), str(record), "--out", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    assert "dropped V1, V2, V3: flat for the whole recording" in done.stdout
    assert [d["lead"] for d in json.loads((tmp_path / "r.json").read_text())["dropped"]] == ["V1", "V2", "V3"]
    strict = _cli("run", str(tiny_artifacts["fp32"]), str(record), "--strict")
    assert strict.returncode == 1 and "Traceback" not in strict.stderr and "V1" in strict.stderr


# --- streams ----------------------------------------------------------------------------------------

def test_stream_survives_probe_off_nan_and_bad_calls(session, bedside):
    signal, fs, ids = bedside
    x = signal[:, : int(70 * fs)].copy()
    x[1, int(14 * fs): int(26 * fs)] = x[1, int(14 * fs)]  # PPG probe off 12 s
    x[:, int(38 * fs): int(50 * fs)] = np.nan  # both leads lost for 12 s
    stream = session.stream(fs, ["II", "PPG"], window_s=10, hop_s=1)
    results = []
    for start in range(0, x.shape[1], int(fs // 2)):
        if start == int(30 * fs):
            for bad in ("text", np.zeros((3, 5)), np.ones((2, 4), bool)):  # caller errors raise ...
                with pytest.raises(ShapeError):
                    stream.push(bad)
        results += stream.push(x[:, start: start + int(fs // 2)])  # ... and change nothing
    by_end = {round(r.end_s): r for r in results}
    assert len(results) == 61 and stream.total == x.shape[1]
    assert by_end[24].flags == ["flat:PPG"] and by_end[24].features is not None
    assert by_end[49].features is None and "no_signal" in by_end[49].flags
    assert any("gap:" in f for f in by_end[52].flags)
    assert by_end[70].flags == [] and by_end[70].features is not None  # good again
    offline = session.embed(x[:, int(60 * fs): int(70 * fs)], fs, ["II", "PPG"])
    np.testing.assert_allclose(by_end[70].features, offline.features[0], atol=1e-5)


@pytest.mark.parametrize("fs", [0, -1, float("nan"), 1e9, True, "250", 16])
def test_stream_construction_refuses_bad_rates(session, fs):
    with pytest.raises(SampleRateError):
        session.stream(fs, ["II"])


@pytest.mark.parametrize("kwargs", [{"window_s": 0.5}, {"window_s": 11}, {"hop_s": 0}, {"hop_s": -1},
                                    {"hop_s": float("nan")}])
def test_stream_construction_refuses_bad_windows(session, kwargs):
    with pytest.raises(ParameterError):
        session.stream(250, ["II"], **kwargs)


# --- threads ----------------------------------------------------------------------------------------

def _backends(tiny_artifacts):
    yield "onnxruntime", lambda: Session.open(tiny_artifacts["int8"], provider="cpu")
    if openvino_available():
        yield "openvino", lambda: Session.open(tiny_artifacts["int8"], provider="openvino")
    yield "torch", lambda: Session.open(tiny_artifacts["int8"], reference=True)


@pytest.mark.parametrize("threads", [2, 8])
def test_threads_on_one_session_equal_sequential_runs(tiny_artifacts, bedside, threads):
    signal, fs, ids = bedside
    records = [signal[:, int(k * 7 * fs): int((k * 7 + 25) * fs)] for k in range(threads)]
    for name, open_session in _backends(tiny_artifacts):
        with open_session() as shared:
            sequential = [shared.embed(r, fs, ids, hop_s=5).features for r in records]
            for _ in range(2):
                with ThreadPoolExecutor(threads) as pool:
                    parallel = list(pool.map(lambda r: shared.embed(r, fs, ids, hop_s=5).features, records))
                for a, b in zip(sequential, parallel):
                    np.testing.assert_array_equal(a, b, err_msg=name)


# --- artifacts with a classifier head, and manifests that must be trusted ------------------------------

@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_head_artifacts_open_with_the_default_backend(head_artifacts, bedside, precision):
    paths, checkpoint = head_artifacts
    signal, fs, ids = bedside
    with Session.open(paths[precision]) as session:  # OpenVINO where installed: it renames FP16 outputs
        result = session.embed(signal[:, : int(30 * fs)], fs, ids)
        reference = Session.open(paths[precision], reference=True, checkpoint=checkpoint)
        expected = reference.embed(signal[:, : int(30 * fs)], fs, ids)
    assert result.logits.shape == (len(result.start_s), 5)
    cosine = (result.logits * expected.logits).sum(1) / np.linalg.norm(result.logits, axis=1) / \
        np.linalg.norm(expected.logits, axis=1)
    assert cosine.min() > 0.98


def _copy(artifact, folder, name="model"):
    onnx_path = folder / f"{name}.onnx"
    shutil.copyfile(artifact, onnx_path)
    shutil.copyfile(manifest_path(artifact), onnx_path.with_suffix(".json"))
    return onnx_path


def _edit(path, change):
    data = json.loads(path.with_suffix(".json").read_text())
    change(data)
    path.with_suffix(".json").write_text(json.dumps(data))


@pytest.mark.parametrize("field,change", [
    ("model", lambda d: d["model"].update(size="base")),
    ("weights", lambda d: d.update(weights={"source": "checkpoint", "name": "trained.pth", "sha256": "0" * 64})),
    ("preprocessing", lambda d: d["preprocessing"]["ppg"].update(order=4)),
])
def test_an_edited_sidecar_is_refused_naming_the_field(tiny_artifacts, tmp_path, field, change):
    path = _copy(tiny_artifacts["fp32"], tmp_path)
    _edit(path, change)
    with pytest.raises(ArtifactError, match=f"disagrees with the manifest inside model.onnx in {field}"):
        Session.open(path)


def test_renamed_artifacts_open_from_their_embedded_manifest(tiny_artifacts, tmp_path):
    renamed = _copy(tiny_artifacts["fp16"], tmp_path)  # model.onnx + model.json, as deployments name them
    assert Session.open(renamed).precision == "fp16"
    alone = tmp_path / "alone.onnx"  # no sidecar at all
    shutil.copyfile(tiny_artifacts["int8"], alone)
    manifest = read_manifest(alone)
    assert manifest.precision == "int8" and manifest.weights.untrained
    corrupt = bytearray(alone.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF  # one flipped byte inside the graph's weights
    alone.write_bytes(bytes(corrupt))
    with pytest.raises(ArtifactError, match="graph does not match the manifest inside it"):
        read_manifest(alone)


@pytest.mark.parametrize("change,message", [
    (lambda d: d.pop("model"), "model.json: field model is missing"),
    (lambda d: d["model"].update(dim="768"), "model.json: field model.dim must be int"),
    (lambda d: d["preprocessing"]["ppg"].update(order="three"), "preprocessing.ppg.order"),
    (lambda d: d.update(manifest_version=1), "layout version 2"),
])
def test_schema_broken_manifests_are_clear_errors(tiny_artifacts, tmp_path, change, message):
    path = _copy(tiny_artifacts["fp32"], tmp_path)
    _edit(path, change)
    with pytest.raises(ArtifactError, match=message):
        Session.open(path)
    done = _cli("info", str(path))
    assert done.returncode == 1 and "Traceback" not in done.stderr


def test_truncated_manifest_is_refused(tiny_artifacts, tmp_path):
    path = _copy(tiny_artifacts["fp32"], tmp_path)
    text = path.with_suffix(".json").read_text()
    path.with_suffix(".json").write_text(text[: len(text) // 2])
    with pytest.raises(ArtifactError, match="not readable JSON"):
        Session.open(path)


# --- plausibility --------------------------------------------------------------------------------------

def test_implausible_rates_and_values_are_refused(session, bedside, twelve_lead):
    signal, fs, ids = bedside
    x = signal[:, : int(30 * fs)]
    for bad_fs in (1, True, "250", float("inf"), 25_000):
        with pytest.raises(SampleRateError):
            session.embed(x, bad_fs, ids)
    with pytest.raises(ImplausibleSignalError, match="overflowing"):
        session.embed(np.full(x.shape, 1e300), fs, ids)
    with pytest.raises(CsfmError):
        session.embed(x > 0, fs, ids)  # booleans are not a signal
    ppg_25hz = x[1:, ::10]  # 25-Hz wrist PPG is real and must pass
    assert session.embed(ppg_25hz, 25.0, ["PPG"]).features.shape == (3, 768)
    with pytest.warns(SignalWarning, match="ECG sampled at 50 Hz"):
        session.embed(x[:1, ::5], 50.0, ["II"])


def test_clipping_is_flagged(session, data_dir):
    signal, fs, ids = load_record(data_dir / "mitdb100_5min.npz")
    x = signal[:1, : int(60 * fs)].copy()
    rail = np.percentile(x, 82)  # the ADC saturates: 18% of samples at the rail
    x[x > rail] = rail
    result = session.embed(x, fs, ids[:1], hop_s=10)
    assert all("clipped:II" in f for f in result.flags)
    assert not any("clipped" in f for f in session.embed(signal[:1, : int(60 * fs)], fs, ids[:1]).flags)


def test_run_warns_on_windows_that_are_not_zscored(session, bedside):
    signal, fs, ids = bedside
    raw = np.stack([signal[:, :2500], signal[:, 2500:5000]]).astype(np.float32) * 1000  # microvolts, not z-scores
    with pytest.warns(SignalWarning, match="not"):
        session.run(raw, ids)
    windows = session.embed(signal[:, : int(20 * fs)], fs, ids, hop_s=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from csfm_edge.runtime.preprocess import sliding_windows

        session.run(sliding_windows(signal[:, : int(20 * fs)], fs, ids).data, ids)
    assert windows.features.shape[0] == 2


@pytest.mark.parametrize("kwargs,error", [({"hop_s": 0}, ParameterError), ({"hop_s": -2}, ParameterError),
                                          ({"hop_s": float("nan")}, ParameterError),
                                          ({"batch_size": 0}, ParameterError), ({"leads": None}, LeadError)])
def test_bad_arguments_are_typed_errors(session, bedside, kwargs, error):
    signal, fs, ids = bedside
    arguments = {"leads": ids, **kwargs}
    with pytest.raises(error):
        session.embed(signal[:, : int(20 * fs)], fs, **arguments)


def test_run_refuses_an_empty_batch(session):
    with pytest.raises(ShapeError, match="0 windows"):
        session.run(np.zeros((0, 2, 2500), np.float32), [1, 12])


def test_cli_refuses_an_implausible_rate_in_one_line(tiny_artifacts, data_dir, tmp_path):
    with np.load(data_dir / "mitdb100_5min.npz") as record:
        np.save(tmp_path / "rec.npy", record["signal"])  # no rate in the file: --fs gives it
    done = _cli("run", str(tiny_artifacts["int8"]), str(tmp_path / "rec.npy"), "--fs", "1", "--leads", "MLII,V5")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "sampling rate 1 Hz" in line
    done = _cli("run", str(tiny_artifacts["int8"]), str(data_dir / "mitdb100_5min.npz"), "--fs", "1")
    [line] = done.stderr.strip().splitlines()  # a file that records its rate: --fs may not contradict it
    assert done.returncode == 1 and "records its rate (360 Hz); --fs 1 disagrees" in line


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csfm_edge", *args], capture_output=True, text=True, timeout=300)
