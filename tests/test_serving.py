"""Triton: model repositories validated against Triton's own model-config schema, folded lead sets,
and a real Triton server (PyTriton) under concurrent requests."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import quiet

from csfm_edge.errors import ArtifactError, CsfmError
from csfm_edge.serving.triton_repo import TritonRepoRequest, write_repository

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
