"""Triton: model repositories validated against Triton's own model-config schema, folded lead sets,
and a real Triton server (PyTriton) under concurrent requests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import quiet

from csfm_edge.errors import ArtifactError, CsfmError
from csfm_edge.runtime.manifest import read_manifest
from csfm_edge.serving.triton_repo import TritonRepoRequest, write_repository

pytestmark = pytest.mark.slow  # exports models or starts live servers

ROOT = Path(__file__).resolve().parents[1]
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"


def parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_repository_configs_parse_and_folded_graphs_match(tiny_artifacts, tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="config validation uses tritonclient's protobuf (dev extra)")
    out = tmp_path / "repo"
    configs = write_repository(TritonRepoRequest([tiny_artifacts["fp32"], tiny_artifacts["int8"]], out,
                                                 ["ii+ppg", "12lead"], max_batch=32, max_queue_delay_us=500,
                                                 instances=2, preprocess=True))
    assert len(configs) == 2 * 2 * 3
    model = parse_config(out / "csfm-tiny-fp32-ii_ppg" / "config.pbtxt")
    assert model.platform == "onnxruntime_onnx" and model.max_batch_size == 32
    assert list(model.input[0].dims) == [2, 2500] and list(model.output[0].dims) == [768]
    assert list(model.dynamic_batching.preferred_batch_size) == [4, 8, 16, 32]
    assert model.dynamic_batching.max_queue_delay_microseconds == 500 and model.instance_group[0].count == 2
    ensemble = parse_config(out / "csfm-tiny-int8-12lead-raw" / "config.pbtxt")
    assert ensemble.platform == "ensemble" and [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "csfm-tiny-int8-12lead-preprocess", "csfm-tiny-int8-12lead"]
    pre = parse_config(out / "csfm-tiny-int8-12lead-preprocess" / "config.pbtxt")
    assert pre.backend == "python" and pre.parameters["leads"].string_value.split(",")[:2] == ["I", "II"]
    compile((out / "csfm-tiny-int8-12lead-preprocess" / "1" / "model.py").read_text(), "model.py", "exec")
    for config in configs:
        parse_config(config)

    python = write_repository(TritonRepoRequest([tiny_artifacts["int8"]], tmp_path / "python", ["12lead"],
                                                platform="python", preprocess=True, provider="openvino"))
    model = parse_config(python[0])
    assert model.backend == "python" and model.instance_group[0].kind == model.instance_group[0].KIND_CPU
    assert {k: v.string_value for k, v in model.parameters.items()} == {
        "artifact": tiny_artifacts["int8"].name, "lead_set": "12lead", "provider": "openvino"}
    # the artifact and its sidecar byte for byte under their own names (a signature, where there is one, holds)
    copied = python[0].parent / "1" / tiny_artifacts["int8"].name
    assert copied.read_bytes() == tiny_artifacts["int8"].read_bytes()
    assert read_manifest(copied).file.name == tiny_artifacts["int8"].name

    folded = ort.InferenceSession(str(out / "csfm-tiny-fp32-ii_ppg" / "1" / "model.onnx"),
                                  providers=["CPUExecutionProvider"])
    assert [i.name for i in folded.get_inputs()] == ["signal"] and folded.get_inputs()[0].shape[1:] == [2, 2500]
    original = ort.InferenceSession(str(tiny_artifacts["fp32"]), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 2, 2500)).astype(np.float32)
    assert np.array_equal(folded.run(None, {"signal": x})[0],
                          original.run(None, {"signal": x, "channel_ids": np.array([1, 12])})[0])


def test_tensorrt_plan_models_carry_a_buildable_folded_graph(tiny_artifacts, tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="config validation uses tritonclient's protobuf (dev extra)")
    out = tmp_path / "repo"
    write_repository(TritonRepoRequest([tiny_artifacts["int8"]], out, ["12lead"], platform="tensorrt_plan",
                                       max_batch=16))
    folder = out / "csfm-tiny-int8-12lead"
    assert parse_config(folder / "config.pbtxt").platform == "tensorrt_plan"
    build_line = (folder / "BUILD.txt").read_text().splitlines()[1].split()
    assert build_line[:3] == ["csfm-edge", "build", "csfm-tiny-int8-12lead/source.onnx"]
    from csfm_edge.export.tensorrt_build import BuildRequest, build_engine
    from csfm_edge.profiles import parse_profile
    from csfm_edge.runtime.tensorrt_lib import load_tensorrt

    try:
        load_tensorrt("tensorrt_rtx")
    except CsfmError:
        pytest.skip("TensorRT for RTX is not installed: the folded graph's build is not checked")
    profile = parse_profile(build_line[build_line.index("--profile") + 1])
    plan = build_engine(BuildRequest(folder / "source.onnx", tmp_path / "model.plan", [profile], target="rtx-sm86",
                                     progress=quiet))
    assert plan.stat().st_size > 1_000_000


def test_bad_repository_requests(tiny_artifacts, tmp_path):
    with pytest.raises(CsfmError, match="unknown lead set 'v9'"):
        write_repository(TritonRepoRequest([tiny_artifacts["fp32"]], tmp_path / "a", ["v9"]))
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"0")
    with pytest.raises(ArtifactError, match="pass the exported .onnx"):
        write_repository(TritonRepoRequest([plan], tmp_path / "b"))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("x")
    with pytest.raises(CsfmError, match="not empty"):
        write_repository(TritonRepoRequest([tiny_artifacts["fp32"]], tmp_path / "c"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not TRITON_PYTHON.exists(), reason="no .venv-triton (PyTriton needs numpy < 2 and its own "
                                                      "environment; scripts/test creates it on x86-64 Linux)")
def test_live_triton_server_batches_and_survives_bad_requests(tiny_artifacts, data_dir):
    port = _free_port()
    done = subprocess.run([str(TRITON_PYTHON), str(ROOT / "tests" / "triton_live.py"), str(tiny_artifacts["fp32"]),
                           str(data_dir), str(port)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["max_abs_vs_session"] <= 1e-4
    assert report["largest_batch"] > 1, report["batch_sizes"]  # Triton's dynamic batcher joined requests
    assert all(report["errors"].values()), report["errors"]  # each bad request got an error response
    assert report["max_abs_after_errors"] <= 1e-4  # and the server kept serving
    # a request with a NaN run gets its own one-line reason (no traceback, no server paths) ...
    for error in report["bad_request_errors"]:
        assert "NaN" in error and "Traceback" not in error and "/" not in error and "\n" not in error
    # ... while every other request, batched with it, is answered normally
    assert report["good_request_errors"] == [""] and report["mixed_batches"] >= 1


# --- the generated repository itself, in the Triton server PyTriton bundles -----------------------

def _raw_requests(data_dir: Path) -> list[tuple[str, np.ndarray, float]]:
    """Raw 10-s records at their own rates: lead II + PPG at 250 and 125 Hz, 12-lead ECGs at 500 Hz."""
    from csfm_edge.leads import rows_of
    from csfm_edge.recordings.datasets import read_npz_record

    signal, fs, ids = read_npz_record(data_dir / "a103l.npz")
    pair = signal[rows_of(ids, [1, 12])]
    requests = [("ii+ppg", pair[:, int(s * fs): int((s + 10) * fs)], fs) for s in range(30, 230, 25)]
    requests += [("ii+ppg", pair[:, int(s * fs): int((s + 10) * fs): 2], fs / 2) for s in range(40, 240, 50)]
    for path in sorted(data_dir.glob("E075*.npz"))[:8]:
        signal, fs, ids = read_npz_record(path)
        requests.append(("12lead", signal[rows_of(ids, list(range(12)))], fs))
    return [(name, np.ascontiguousarray(x, dtype=np.float32), float(rate)) for name, x, rate in requests]


def _group_processes(pgid: int) -> list[str]:
    """Command lines of the live processes in process group ``pgid`` (the server and its stubs)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.mark.skipif(not TRITON_PYTHON.exists(), reason="no .venv-triton (the bundled tritonserver comes with "
                                                      "nvidia-pytriton, numpy < 2; scripts/test creates it)")
def test_bundled_tritonserver_serves_the_python_repository_and_its_ensembles(head_artifacts, data_dir, tmp_path):
    """`triton-repo --platform python --preprocess` in `csfm-edge serve --repository`: raw signals at their own
    rates from concurrent gRPC clients give Session.embed's outputs; batches form; bad requests get their own
    errors while the requests batched with them are answered; SIGTERM leaves no process behind."""
    grpc = pytest.importorskip("tritonclient.grpc", reason="the client side uses tritonclient (dev extra)")
    from tritonclient.utils import InferenceServerException

    from csfm_edge.leads import lead_set
    from csfm_edge.runtime.session import Session
    from csfm_edge.serving.triton_repo import model_name

    artifact = head_artifacts[0]["int8"]  # a 5-class head: features and logits both served
    repo = tmp_path / "repo"
    write_repository(TritonRepoRequest([artifact], repo, ["ii+ppg", "12lead"], platform="python", max_batch=16,
                                       max_queue_delay_us=50_000, preprocess=True, provider="cpu"))
    port, log = _free_port(), tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([str(TRITON_PYTHON), "-m", "csfm_edge", "serve", "--repository", str(repo),
                                   "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, cwd=tmp_path)
    try:
        url = f"127.0.0.1:{port + 1}"
        client = grpc.InferenceServerClient(url)
        deadline = time.monotonic() + 240
        while not _ready(client):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        session = Session.open(artifact, provider="cpu")
        names = {s: model_name(session.model.size, session.precision, s) for s in ("ii+ppg", "12lead")}
        requests = _raw_requests(data_dir)
        expected = [session.embed(x, fs, list(lead_set(s))) for s, x, fs in requests]
        bad_raw = requests[0][1].copy()
        bad_raw[1, 500:800] = np.nan  # a 1.2-s PPG dropout: more than may be interpolated

        def raw_infer(lead_set_name: str, raw: np.ndarray, fs: float, dtype: str = "FP32"):
            own = grpc.InferenceServerClient(url)
            try:
                a = grpc.InferInput("raw", [1, *raw.shape], dtype)
                a.set_data_from_numpy(raw[None].astype(np.float64 if dtype == "FP64" else np.float32))
                b = grpc.InferInput("fs", [1, 1], "FP32")
                b.set_data_from_numpy(np.array([[fs]], np.float32))
                result = own.infer(f"{names[lead_set_name]}-raw", [a, b], client_timeout=120)
                return result.as_numpy("features")[0], result.as_numpy("logits")[0]
            except InferenceServerException as exc:
                return str(exc)
            finally:
                own.close()

        cases = [(s, x, fs) for s, x, fs in requests] + [("ii+ppg", bad_raw, requests[0][2])]
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda case: raw_infer(*case), cases, timeout=300))
        for (s, _, fs), answer, want in zip(requests, answers, expected):
            assert not isinstance(answer, str), f"{s} at {fs} Hz: {answer}"
            np.testing.assert_allclose(answer[0], want.features[0], atol=1e-4, err_msg=f"{s} at {fs} Hz")
            np.testing.assert_allclose(answer[1], want.logits[0], atol=1e-4, err_msg=f"{s} at {fs} Hz")
        assert "PPG" in answers[-1] and "NaN" in answers[-1] and "Traceback" not in answers[-1], answers[-1]
        stats = {s: client.get_inference_statistics(n).model_stats[0] for s, n in names.items()}
        assert any(m.inference_count > m.execution_count for m in stats.values()), stats  # batches were formed

        # wrong lead count and wrong dtype are refused by Triton against the config, each on its own
        wrong_leads = raw_infer("ii+ppg", np.zeros((3, 2500), np.float32), 250.0)
        wrong_dtype = raw_infer("ii+ppg", requests[0][1], 250.0, dtype="FP64")
        assert isinstance(wrong_leads, str) and "shape" in wrong_leads, wrong_leads
        assert isinstance(wrong_dtype, str) and "FP64" in wrong_dtype, wrong_dtype

        # preprocessed windows straight to the CSFM model: a NaN request fails alone inside its batch
        windows = np.stack([session.prepare(x, fs, list(lead_set(s))).windows.data[0]
                            for s, x, fs in requests if s == "ii+ppg"])
        windows[3, 0, 10:50] = np.nan

        def window_infer(i: int):
            own = grpc.InferenceServerClient(url)
            try:
                tensor = grpc.InferInput("signal", [1, 2, 2500], "FP32")
                tensor.set_data_from_numpy(windows[i: i + 1])
                return own.infer(names["ii+ppg"], [tensor], client_timeout=120).as_numpy("features")[0]
            except InferenceServerException as exc:
                return str(exc)
            finally:
                own.close()

        before = client.get_inference_statistics(names["ii+ppg"]).model_stats[0]
        with ThreadPoolExecutor(len(windows)) as pool:
            direct = list(pool.map(window_infer, range(len(windows)), timeout=300))
        after = client.get_inference_statistics(names["ii+ppg"]).model_stats[0]
        assert isinstance(direct[3], str) and "NaN" in direct[3] and "\n" not in direct[3], direct[3]
        good = [i for i in range(len(windows)) if i != 3]
        np.testing.assert_allclose(np.stack([direct[i] for i in good]),
                                   session.run(windows[good], lead_set("ii+ppg"))["features"], atol=1e-4)
        assert after.execution_count - before.execution_count < len(windows)  # the NaN one rode in a batch
        assert server.poll() is None  # still serving after every bad request
        client.close()
        session.close()
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(90)
        finally:
            left = _group_processes(server.pid)
            if left:
                os.killpg(server.pid, signal.SIGKILL)
    assert code == 0, log.read_text()[-3000:]
    assert not left, left


def _ready(client) -> bool:
    try:
        return client.is_server_ready()
    except Exception:  # not listening yet
        return False


def test_bundled_server_refuses_repositories_it_cannot_serve(tiny_artifacts, tmp_path, capsys):
    from csfm_edge.cli import main
    from csfm_edge.serving.bundled_server import check_bundled_can_serve, repository_models

    repo = tmp_path / "repo"
    write_repository(TritonRepoRequest([tiny_artifacts["fp32"]], repo, ["ii"], preprocess=True))
    models = repository_models(repo)
    assert models == {"csfm-tiny-fp32-ii": "onnxruntime_onnx", "csfm-tiny-fp32-ii-preprocess": "python",
                      "csfm-tiny-fp32-ii-raw": "ensemble"}
    with pytest.raises(CsfmError, match=r"cannot serve csfm-tiny-fp32-ii \(onnxruntime_onnx\).*--platform python"):
        check_bundled_can_serve(models)
    with pytest.raises(CsfmError, match="holds no model"):
        repository_models(tmp_path)
    with pytest.raises(CsfmError, match="does not exist"):
        repository_models(tmp_path / "missing")
    assert main(["serve", "--repository", str(repo)]) == 1  # refused before any server starts
    assert "cannot serve csfm-tiny-fp32-ii (onnxruntime_onnx)" in capsys.readouterr().err
    assert main(["serve"]) == 1 and "ARTIFACT or --repository" in capsys.readouterr().err
    assert main(["serve", str(tiny_artifacts["fp32"]), "--repository", str(repo)]) == 1
