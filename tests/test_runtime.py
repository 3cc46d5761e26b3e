"""The slim runtime: Session over ONNX Runtime and the PyTorch reference, recordings of any length and
rate, flags, live streaming, the run CLI and its bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import load_record
from scipy import signal as sps

from csfm_edge.errors import (
    ArtifactError,
    BackendUnavailableError,
    CsfmError,
    LeadError,
    ParameterError,
    ShapeError,
    SignalWarning,
    WindowLengthError,
)
from csfm_edge.runtime import Session
from csfm_edge.runtime.backends import BackendOptions
from csfm_edge.runtime.manifest import Manifest, read_manifest, write_manifest
from csfm_edge.runtime.session import StreamLagWarning


@pytest.fixture(scope="module")
def session(tiny_artifacts):
    return Session.open(tiny_artifacts["fp32"], provider="cpu")


@pytest.fixture(scope="module")
def bedside(data_dir):
    signal, fs, ids = load_record(data_dir / "a103l.npz")
    return signal, fs, ids  # lead II and PPG at 250 Hz, 330 s


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_session_describes_what_it_runs(session):
    info = session.info()
    assert info["backend"] == "onnxruntime" and info["provider"] == "CPUExecutionProvider"
    assert (info["precision"], info["size"], info["head_classes"], info["weights"]) == ("fp32", "tiny", 0, "untrained")


def test_three_backends_agree_on_real_recordings(tiny_artifacts, bedside, data_dir):
    signal, fs, ids = bedside
    reference = Session.open(tiny_artifacts["fp32"], reference=True)
    assert reference.info()["backend"] == "torch"
    expected = reference.embed(signal[:, : 60 * 250], fs, ids).features
    for precision, check in (("fp32", lambda a, b: np.abs(a - b).max() <= 1e-4),
                             ("fp16", lambda a, b: cosine(a, b).min() >= 0.999),
                             ("int8", lambda a, b: cosine(a, b).mean() >= 0.99)):
        got = Session.open(tiny_artifacts[precision], provider="cpu").embed(signal[:, : 60 * 250], fs, ids).features
        assert check(got, expected), precision
    twelve, fs12, ids12 = load_record(data_dir / "E07500.npz")
    onnx = Session.open(tiny_artifacts["fp32"], provider="cpu").embed(twelve, fs12, ids12).features
    assert np.abs(onnx - reference.embed(twelve, fs12, ids12).features).max() <= 1e-4


def test_long_record_becomes_sliding_windows(session, bedside):
    signal, fs, ids = bedside
    result = session.embed(signal, fs, ["II", "PLETH"], hop_s=10)
    assert result.features.shape == (33, 768) and result.logits is None
    assert np.allclose(result.start_s, np.arange(33) * 10.0)
    assert result.aggregate["clean_windows"] == 33 and result.flags == [[]] * 33
    assert np.allclose(result.aggregate["features"], result.features.mean(0))
    hopped = session.embed(signal[:, : 25 * 250], fs, ids, hop_s=4)
    assert list(hopped.start_s) == [0.0, 4.0, 8.0, 12.0, 15.0]  # the last window ends at the record's end


def test_short_record_is_padded_with_a_warning(session, bedside):
    signal, fs, ids = bedside
    with pytest.warns(SignalWarning, match="only 4.0 s"):
        result = session.embed(signal[:, : 4 * 250], fs, ids)
    assert result.flags == [["padded"]] and result.aggregate["clean_windows"] == 0
    assert result.aggregate["features"] is None


def test_flat_channels_and_gaps_are_flagged_not_averaged(session, bedside):
    signal, fs, ids = bedside
    record = signal[:, : 60 * 250].astype(np.float64).copy()
    record[1, 20 * 250: 32 * 250] = record[1, 20 * 250]  # PPG probe off for 12 s
    record[0, 45 * 250: 46 * 250] = np.nan  # 1 s ECG dropout: too long to interpolate
    record[0, 5 * 250: 5 * 250 + 10] = np.nan  # 40 ms: interpolated
    result = session.embed(record, fs, ids)
    assert result.flags[0] == ["interpolated:II"]
    assert "flat:PPG" in result.flags[2] and result.flags[4] == ["gap:II"]
    assert result.flags[1] == [] and result.flags[5] == []
    clean = result.clean
    assert np.allclose(result.aggregate["features"], result.features[clean].mean(0))
    assert result.aggregate["clean_windows"] == int(clean.sum()) < 6


def test_leads_at_different_rates(session, bedside):
    signal, fs, ids = bedside
    seconds = 40
    ecg_500 = sps.resample(signal[0, : seconds * 250], seconds * 500)
    ppg_125 = sps.resample(signal[1, : seconds * 250], seconds * 125)
    mixed = session.embed([ecg_500, ppg_125], [500, 125], ["II", "PPG"])
    single = session.embed(signal[:, : seconds * 250], fs, ids)
    assert mixed.features.shape == single.features.shape == (4, 768)
    assert cosine(mixed.features, single.features).min() >= 0.999
    with pytest.raises(ShapeError, match="per-lead lengths do not match their rates"):
        session.embed([ecg_500, ppg_125[:-250]], [500, 125], ["II", "PPG"])


def test_run_refuses_bad_model_inputs(session):
    x = np.zeros((2, 2, 2500), np.float32)
    assert session.run(x, [1, 12])["features"].shape == (2, 768)
    with pytest.raises(CsfmError, match=r"\[batch, channels, time\]"):
        session.run(x[0], [1, 12])
    with pytest.raises(CsfmError, match="2 channels but 1 channel ids"):
        session.run(x, [1])
    with pytest.raises(WindowLengthError):
        session.run(np.zeros((1, 2, 2510), np.float32), [1, 12])
    with pytest.raises(LeadError, match="duplicate"):
        session.run(x, [1, 1])
    with pytest.raises(CsfmError, match="NaN"):
        session.run(np.full((1, 2, 2500), np.nan, np.float32), [1, 12])


def test_manifest_problems_are_refused(tiny_artifacts, tmp_path):
    import onnx as onnx_lib

    from csfm_edge.export.embed import set_embedded_manifest
    from csfm_edge.runtime.backends import BackendOptions, open_backend

    onnx = tmp_path / "csfm-tiny.fp32.onnx"
    bare = onnx_lib.load(str(tiny_artifacts["fp32"]))
    set_embedded_manifest(bare, None)  # a graph that says nothing about itself
    onnx_lib.save(bare, str(onnx))
    with pytest.raises(ArtifactError, match="has no manifest"):
        Session.open(onnx)
    onnx.with_suffix(".json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not readable JSON"):
        Session.open(onnx)
    manifest = read_manifest(tiny_artifacts["fp32"]).to_dict()
    manifest["model"] = {**manifest["model"], "size": "large", "dim": 1024}
    manifest["outputs"] = {"features": {"dtype": "float32", "dims": ["batch", 1024]}}
    # a manifest that matches the file's hash but lies about the model
    write_manifest(onnx, Manifest.from_dict(manifest))
    with pytest.raises(ArtifactError, match="contradicts the model itself: .*features are 768 wide, not 1024"):
        Session.open(onnx)
    with pytest.raises(ArtifactError, match="manifest claims CSFM large with width 1024"):
        lying = Manifest.from_dict(manifest)
        Session(open_backend(tiny_artifacts["fp32"], lying, BackendOptions(provider="cpu")), lying)


def test_bad_backend_options_are_refused_when_made(tmp_path):
    """Options as a Python user mistypes them: each a CsfmError naming the field, before any file is read."""
    for kwargs, says in [({"threads": 0}, "threads"), ({"threads": "2"}, "threads"), ({"device_id": None}, "device_id"),
                         ({"device_id": -1}, "device_id"), ({"cuda_graph": "no"}, "cuda_graph must be True or False"),
                         ({"reference": "yes"}, "reference must be True or False"), ({"checkpoint": 5}, "checkpoint"),
                         ({"provider": "tpu"}, "tpu"), ({"autocast": "fp32"}, "autocast"),
                         ({"streams": 0}, "streams must be a positive integer")]:
        with pytest.raises(CsfmError, match=says):
            BackendOptions(**kwargs)
    with pytest.raises(ParameterError, match="options must be a BackendOptions, got 'cpu'"):
        Session.open(tmp_path / "model.onnx", "cpu")  # the provider where options go
    with pytest.raises(ParameterError, match="not both"):
        Session.open(tmp_path / "model.onnx", BackendOptions(provider="cpu"), provider="openvino")


def test_options_a_backend_lacks_are_refused_not_ignored(tiny_artifacts):
    """A GPU number, CUDA graphs, autocast or OpenVINO's precision asked of a backend without them."""
    artifact = tiny_artifacts["int8"]
    for options, says in [(BackendOptions(provider="cpu", device_id=1), "device_id 1 .* computes on the CPU"),
                          (BackendOptions(provider="cpu", cuda_graph=True), "cuda_graph .* is not one"),
                          (BackendOptions(provider="cpu", autocast="bf16"), "autocast applies to the PyTorch"),
                          (BackendOptions(provider="cpu", inference_precision="f16"), "applies to OpenVINO"),
                          (BackendOptions(reference=True, device_id=1), "PyTorch reference computes on the CPU"),
                          (BackendOptions(reference=True, cuda_graph=True), "PyTorch reference is not one"),
                          (BackendOptions(provider="cpu", streams=2), "streams 2 .* not .* on cpu"),
                          (BackendOptions(reference=True, streams=2), "streams 2 .* not the PyTorch")]:
        with pytest.raises(BackendUnavailableError, match=says):
            Session.open(artifact, options)
    pytest.importorskip("openvino")
    with Session.open(artifact, BackendOptions(provider="openvino", threads=1, inference_precision="f32")) as session:
        assert session.info()["provider"] == "CPU (f32)" and session.backend.streams == 1
    with Session.open(artifact, BackendOptions(provider="openvino", streams=2)) as session:
        assert session.info()["streams"] == 2
        compiled = session.backend.model
        assert compiled.get_property("NUM_STREAMS") == 2  # OpenVINO's own record of what it set up


def test_stream_matches_offline_windows_and_keeps_up(session, bedside):
    signal, fs, ids = bedside
    stream = session.stream(fs, ["II", "PPG"], window_s=10, hop_s=1)
    rng = np.random.default_rng(0)
    results, position = [], 0
    while position < 25 * 250:
        size = int(rng.integers(1, 400))
        results += stream.push(signal[:, position: position + size])
        position += size
    assert [r.end_s for r in results] == [float(t) for t in range(10, 26)][: len(results)]
    assert len(results) == 16
    last = session.embed(signal[:, 15 * 250: 25 * 250], fs, ids).features[0]
    assert np.array_equal(results[-1].features, last)  # per-window filtering, as the preprocessing defines
    summary = stream.latency_summary()
    assert summary["results"] == 16 and summary["behind"] == 0 and 0 < summary["p50_s"] < 1.0
    with pytest.raises(CsfmError, match="chunk must be"):
        stream.push(np.zeros((3, 10)))


def test_stream_says_when_it_falls_behind(session, bedside):
    signal, fs, ids = bedside
    stream = session.stream(fs, ids, window_s=10, hop_s=0.0001)  # no machine scores a window in 0.1 ms
    with pytest.warns(StreamLagWarning, match="not keeping up"):
        results = stream.push(signal[:, : 10 * 250])
    assert results[-1].behind and stream.latency_summary()["behind"] >= 1


def test_runtime_never_imports_torch(tiny_artifacts, data_dir):
    code = (
        "import sys, numpy as np\nfrom csfm_edge.runtime import Session\n"
        f"s = Session.open({str(tiny_artifacts['int8'])!r}, provider='cpu')\n"
        f"d = np.load({str(data_dir / 'a103l.npz')!r})\n"
        "r = s.embed(d['signal'][[0, 2], :2500], 250, ['II', 'PPG'])\n"
        "print(r.features.shape, [m for m in ('torch', 'tensorrt', 'neurokit2') if m in sys.modules])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 768) []"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csfm_edge", *args], capture_output=True, text=True, timeout=600)


def test_run_cli_formats_and_outputs(tiny_artifacts, data_dir, tmp_path):
    onnx = str(tiny_artifacts["fp32"])
    done = _cli("run", onnx, str(data_dir / "a103l.npz"), "--hop", "30", "--check", "--out", str(tmp_path / "r.npz"))
    assert done.returncode == 0, done.stderr
    assert "dropped V (no CSFM id)" in done.stdout and "12 windows" in done.stdout  # 0, 30, ..., 300 and 320 s
    assert "check vs PyTorch reference: max abs" in done.stdout
    saved = np.load(tmp_path / "r.npz")
    assert saved["features"].shape == (12, 768) and list(saved["leads"]) == ["II", "PPG"]

    signal, fs, ids = load_record(data_dir / "mitdb100_5min.npz")
    np.save(tmp_path / "rec.npy", signal[:, : 20 * 360])
    done = _cli("run", onnx, str(tmp_path / "rec.npy"), "--fs", "360", "--leads", "MLII,V5", "--out",
                str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["leads"] == ["II", "V5"] and payload["start_s"] == [0.0, 10.0]

    np.savetxt(tmp_path / "rec.csv", signal[:, : 12 * 360].T, delimiter=",", header="MLII,V5", comments="")
    done = _cli("run", onnx, str(tmp_path / "rec.csv"), "--fs", "360")
    assert done.returncode == 0 and "leads II, V5" in done.stdout


def test_run_cli_reads_multifrequency_wfdb(tiny_artifacts, tmp_path, bedside):
    wfdb = pytest.importorskip("wfdb", reason="WFDB support is the optional 'wfdb' extra")
    signal, _, _ = bedside
    ecg = sps.resample(signal[0, : 20 * 250], 20 * 500)  # lead II at 500 Hz, PPG at 125 Hz (2 and 1 per frame)
    ppg = sps.resample(signal[1, : 20 * 250], 20 * 125)
    wfdb.wrsamp("bedside", fs=125, units=["mV", "NU"], sig_name=["II", "PLETH"], e_p_signal=[ecg, ppg],
                samps_per_frame=[4, 1], fmt=["16", "16"], write_dir=str(tmp_path))
    done = _cli("run", str(tiny_artifacts["fp32"]), str(tmp_path / "bedside.hea"), "--out", str(tmp_path / "w.json"))
    assert done.returncode == 0, done.stderr
    assert "leads II, PPG" in done.stdout and json.loads((tmp_path / "w.json").read_text())["start_s"] == [0.0, 10.0]


def test_run_cli_bad_inputs(tiny_artifacts, data_dir, tmp_path):
    onnx = str(tiny_artifacts["fp32"])
    out = tmp_path / "never.json"
    (tmp_path / "empty.csv").write_text("")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes((data_dir / "E07500.npz").read_bytes()[:5000])
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4000)))
    np.save(tmp_path / "two.npy", np.zeros((2, 4000)))
    other = tmp_path / "csfm-tiny.fp16.onnx"  # an artifact whose manifest belongs to another file
    other.write_bytes(tiny_artifacts["fp16"].read_bytes())
    other.with_suffix(".json").write_text(tiny_artifacts["fp32"].with_suffix(".json").read_text())
    cases = [
        ((onnx, str(tmp_path / "empty.csv"), "--fs", "250"), "is empty"),
        ((onnx, str(truncated)), "truncated or corrupt"),
        ((onnx, str(tmp_path / "cube.npy"), "--fs", "250", "--leads", "I,II"), "expected a [leads, samples] array"),
        ((onnx, str(tmp_path / "two.npy"), "--fs", "250", "--leads", "I,X9"), "unknown lead 'X9'"),
        ((onnx, str(tmp_path / "two.npy"), "--leads", "I,II"), "pass --fs"),
        ((onnx, str(tmp_path / "two.npy"), "--fs", "250"), "pass --leads"),
        ((onnx, str(tmp_path / "two.npy"), "--fs", "250", "--leads", "I,II"), "flat"),
        ((onnx, str(tmp_path / "missing.npz")), "does not exist"),
        ((str(other), str(data_dir / "a103l.npz")), "describes 'csfm-tiny.fp32.onnx'"),
    ]
    for args, message in cases:
        done = _cli("run", *args, "--out", str(out))
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and message in done.stderr, (args, done.stderr)
        assert not out.exists()
