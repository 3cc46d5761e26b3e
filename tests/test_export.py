"""ONNX export: interface, dynamic shapes, precision structure, tolerances, manifests and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import quiet
from onnx import numpy_helper

from csfm_edge.errors import CsfmError, VerificationError
from csfm_edge.export.onnx_export import ExportRequest, export
from csfm_edge.fileio import sha256_of
from csfm_edge.model import build
from csfm_edge.runtime.backends import BackendOptions, open_backend
from csfm_edge.runtime.manifest import model_outputs, read_manifest
from csfm_edge.spec import PRECISIONS, SPEC, Tolerance

pytestmark = pytest.mark.slow  # exports models or starts live servers


def test_files_and_manifests(tiny_artifacts):
    assert set(tiny_artifacts) == {"fp32", "fp16", "int8"}
    for precision, path in tiny_artifacts.items():
        manifest = read_manifest(path).to_dict()
        assert manifest["precision"] == precision and manifest["model"]["size"] == "tiny"
        assert manifest["weights"] == {"source": "untrained", "seed": 0,
                                       "warning": "UNTRAINED random weights: outputs are meaningless"}
        assert manifest["file"]["sha256"] == sha256_of(path)
        assert manifest["inputs"]["signal"]["dims"] == ["batch", "channels", "time"]
        assert manifest["outputs"] == {"features": {"dtype": "float32", "dims": ["batch", 768]}}
        assert manifest["preprocessing"]["sample_rate_hz"] == 250.0
        assert {"onnx", "onnxruntime", "torch"} <= set(manifest["tools"])
        verification = manifest["verification"]
        assert verification["passed"] and len(verification["cases"]) == 20
        assert {c["case"] for c in verification["cases"]} >= {"real 12lead", "real ii+ppg", "real ii", "real ppg"}
        assert "a103l" in verification["data"]
    assert read_manifest(tiny_artifacts["int8"]).calibration.windows > 0
    assert read_manifest(tiny_artifacts["fp32"]).verification.worst.max_abs <= 1e-4
    assert read_manifest(tiny_artifacts["fp16"]).verification.worst.min_cosine >= 0.999
    # the tolerance bounds the worst window of every case, never a mean
    int8 = read_manifest(tiny_artifacts["int8"]).verification
    assert min(c.min_cosine for c in int8.cases) == int8.worst.min_cosine >= int8.tolerance.min_cosine


def test_every_precision_passes_the_onnx_checker_with_full_shape_inference(tiny_artifacts):
    for path in tiny_artifacts.values():  # the FP16 converter once left its input casts out of topological order
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def test_every_precision_passes_polygraphy_lint(tiny_artifacts, tmp_path):
    for precision, path in tiny_artifacts.items():
        report = tmp_path / f"{precision}.json"
        polygraphy = Path(sys.executable).parent / "polygraphy"  # its console script (no __main__ module)
        done = subprocess.run([str(polygraphy), "check", "lint", str(path), "--input-shapes",
                               "signal:[2,2,2500]", "channel_ids:[2]", "-o", str(report)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "PASSED" in done.stdout + done.stderr, (precision, done.stderr[-2000:])
        assert json.loads(report.read_text())["summary"]["failing"] == [], precision


def test_graph_interface_is_symbolic_and_checks(tiny_artifacts):
    model = onnx.load(str(tiny_artifacts["fp32"]))
    onnx.checker.check_model(model, full_check=True)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"signal": ["batch", "channels", "time"], "channel_ids": ["channels"]}
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert types == {"signal": onnx.TensorProto.FLOAT, "channel_ids": onnx.TensorProto.INT64}
    assert [o.name for o in model.graph.output] == ["features"]
    assert not any("text" in init.name for init in model.graph.initializer)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_dynamic_shapes_run_and_match(tiny_artifacts, precision):
    backend = _cpu_backend(tiny_artifacts[precision])
    reference = build("tiny", seed=0)
    rng = np.random.default_rng(0)
    for batch, channels, time in [(1, 1, 25), (64, 1, 2500), (3, 13, 2500), (2, 5, 1275)]:
        signal = rng.standard_normal((batch, channels, time)).astype(np.float32)
        ids = rng.permutation(13)[:channels].astype(np.int64)
        got = backend.run({"signal": signal, "channel_ids": ids})["features"]
        with torch.inference_mode():
            want = reference(torch.from_numpy(signal), torch.from_numpy(ids)).numpy()
        assert got.shape == (batch, 768) and got.dtype == np.float32
        cosine = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
        assert np.isfinite(got).all()
        if precision == "fp32":
            assert np.abs(got - want).max() <= 1e-4
        elif precision == "fp16":
            assert cosine.min() >= 0.999
        # int8's accuracy is a property of real signals (checked in the manifest's verification);
        # Gaussian noise lies outside its calibration set, so here it only has to run.


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def test_fp16_graph_keeps_norms_and_softmax_in_fp32(tiny_artifacts):
    model = onnx.load(str(tiny_artifacts["fp16"]))
    initializers = {i.name: i for i in model.graph.initializer}
    matmul_weights = [initializers[n.input[1]] for n in model.graph.node
                      if n.op_type == "MatMul" and n.input[1] in initializers]
    assert matmul_weights and all(w.data_type == onnx.TensorProto.FLOAT16 for w in matmul_weights)
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            for name in node.input:
                if name in initializers:
                    assert initializers[name].data_type == onnx.TensorProto.FLOAT
    counts = Counter(n.op_type for n in model.graph.node)
    assert counts["LayerNormalization"] == 2 + 2 * 6 + 1 and counts["Softmax"] == 6 and counts["Cast"] > 0
    assert [i.type.tensor_type.elem_type for i in model.graph.output] == [onnx.TensorProto.FLOAT]


def test_int8_graph_is_symmetric_per_channel_qdq(tiny_artifacts):
    model = onnx.load(str(tiny_artifacts["int8"]))
    counts = Counter(n.op_type for n in model.graph.node)
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] > counts["QuantizeLinear"]
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    per_channel = 0
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = initializers[node.input[2]]
            assert zero_point.dtype == np.int8 and not zero_point.any()
            per_channel += initializers[node.input[1]].size > 1
    assert per_channel >= 6 * 4  # every weight of every block, per output channel
    producers = _producers(model)
    for node in model.graph.node:  # LayerNorm, Softmax and GELU's Erf see float tensors, not int8
        if node.op_type in ("LayerNormalization", "Softmax", "Erf"):
            assert producers.get(node.input[0]) is None or producers[node.input[0]].op_type != "DequantizeLinear"
    quantized_outputs = [n.name for n in model.graph.node if n.op_type == "QuantizeLinear"
                         and getattr(producers.get(n.input[0]), "op_type", None) == "MatMul"]
    assert not quantized_outputs  # MatMul outputs stay float (OpenVINO then runs attention in bf16, not int8)


def test_head_is_exported_as_logits(tmp_path, data_dir):
    model = build("tiny", seed=3)
    head = torch.nn.Linear(768, 2)
    state = {f"encoder.{k}": v for k, v in model.state_dict().items()}
    state.update({"encoder.mlp_head.weight": head.weight.detach(), "encoder.mlp_head.bias": head.bias.detach()})
    torch.save(state, tmp_path / "finetuned.pth")
    [path] = export(ExportRequest(size="tiny", out_dir=tmp_path / "out", checkpoint=tmp_path / "finetuned.pth",
                                  precisions=("fp32",), data_dir=data_dir, progress=quiet))
    manifest = read_manifest(path).to_dict()
    assert manifest["outputs"]["logits"] == {"dtype": "float32", "dims": ["batch", 2]}
    assert manifest["weights"]["source"] == "checkpoint" and manifest["weights"]["name"] == "finetuned.pth"
    assert manifest["verification"]["cases"][0]["logits_max_abs"] <= 1e-4
    out = _cpu_backend(path).run({"signal": np.ones((3, 2, 2500), np.float32),
                                               "channel_ids": np.array([1, 12])})
    assert out["logits"].shape == (3, 2)


def _cpu_backend(path, manifest=None):
    """ONNX Runtime's CPU provider on an exported graph, opened as everything opens backends."""
    return open_backend(path, manifest or read_manifest(path), BackendOptions(provider="cpu"))


def test_missed_tolerance_writes_nothing(tmp_path, data_dir, monkeypatch):
    monkeypatch.setitem(PRECISIONS, "fp16", replace(PRECISIONS["fp16"], tolerance=Tolerance(max_abs=1e-7)))
    with pytest.raises(VerificationError, match=r"csfm-tiny\.fp16\.onnx misses its tolerance \(max abs <= 1e-07\)"):
        export(ExportRequest(size="tiny", out_dir=tmp_path, precisions=("fp16",), data_dir=data_dir, progress=quiet))
    assert list(tmp_path.iterdir()) == []


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "csfm_edge", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def _assert_clean_error(done: subprocess.CompletedProcess, message: str) -> None:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) <= 3


def test_bad_export_requests(tmp_path, tiny_artifacts):
    out = tmp_path / "out"
    _assert_clean_error(_cli("export", "--size", "huge", "--out", str(out)), "unknown CSFM size 'huge'")
    torch.save(build("tiny", seed=0).state_dict(), tmp_path / "tiny.pt")
    _assert_clean_error(_cli("export", "--size", "base", "--checkpoint", str(tmp_path / "tiny.pt"), "--out",
                             str(out)), "is a CSFM tiny checkpoint, not base")
    (tmp_path / "notes.pth").write_text("hello")
    _assert_clean_error(_cli("export", "--size", "tiny", "--checkpoint", str(tmp_path / "notes.pth"), "--out",
                             str(out)), "not a readable PyTorch checkpoint")
    _assert_clean_error(_cli("export", "--size", "tiny", "--calibration-data", str(tmp_path / "nowhere"), "--out",
                             str(out)), "calibration data folder")
    (tmp_path / "a-file").write_text("")  # a folder cannot be made inside a file, even by root
    _assert_clean_error(_cli("export", "--size", "tiny", "--out", str(tmp_path / "a-file" / "sub")),
                        "a-file is a file, not a folder")
    existing = tiny_artifacts["fp32"].parent
    _assert_clean_error(_cli("export", "--size", "tiny", "--precision", "fp32", "--out", str(existing)),
                        "already exist")
    assert not list(out.glob("*.onnx")) if out.exists() else True


def test_verify_cli_passes_and_catches_a_changed_file(tiny_artifacts, tmp_path, data_dir):
    done = _cli("verify", str(tiny_artifacts["int8"]), "--data", str(data_dir))
    assert done.returncode == 0 and "PASS: csfm-tiny.int8.onnx" in done.stdout
    copy = tmp_path / tiny_artifacts["fp16"].name
    copy.write_bytes(tiny_artifacts["fp16"].read_bytes()[:-10] + b"0123456789")
    manifest = json.loads(tiny_artifacts["fp16"].with_suffix(".json").read_text())
    copy.with_suffix(".json").write_text(json.dumps(manifest))
    _assert_clean_error(_cli("verify", str(copy)), "does not match its manifest")
    copy.with_suffix(".json").unlink()
    _assert_clean_error(_cli("verify", str(copy)), "has no manifest")


def test_a_custom_architecture_is_exported_under_its_own_name(tmp_path, data_dir):
    from csfm_edge.config import CSFMConfig

    model = build(CSFMConfig(dim=64, depth=2, heads=2, mlp_dim=128), seed=5)
    torch.save({f"encoder.{k}": v for k, v in model.state_dict().items()}, tmp_path / "small.pth")
    [path] = export(ExportRequest(size=None, out_dir=tmp_path / "out", checkpoint=tmp_path / "small.pth",
                                  precisions=("fp32",), data_dir=data_dir, progress=quiet))
    assert path.name == "csfm-custom-d64x2.fp32.onnx"
    manifest = read_manifest(path)
    assert (manifest.model.size, manifest.model.dim, manifest.model.depth) == ("custom-d64x2", 64, 2)
    assert manifest.verification.passed and manifest.outputs["features"].width == 64
    with pytest.raises(CsfmError, match="--size"):
        export(ExportRequest(size=None, out_dir=tmp_path / "out2", progress=quiet))


def test_stale_staging_folders_of_killed_exports_are_removed(tmp_path):
    import os

    from csfm_edge.export.onnx_export import remove_stale_exports

    dead = tmp_path / ".csfm-export-999999999-abc"
    live = tmp_path / f".csfm-export-{os.getpid()}-def"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "traced.onnx").write_bytes(b"x" * 1000)
    assert remove_stale_exports(tmp_path) == [dead]
    assert not dead.exists() and live.exists()


def test_calibration_draws_every_lead_set_and_never_a_verification_window(data_dir):
    from csfm_edge.export.calibration import RecordingCalibrationReader
    from csfm_edge.recordings.datasets import CALIBRATION_OFFSETS_S, TWELVE_LEAD_RECORDS, calibration_batches

    batches = {b.name: b for b in calibration_batches(data_dir, 256)}
    assert set(batches) == {"12lead", "ii+ppg", "ii", "ppg"} and sum(len(b.signal) for b in batches.values()) == 256
    assert not set(TWELVE_LEAD_RECORDS["verify"]) & set(TWELVE_LEAD_RECORDS["calibrate"])
    # long records: verification windows cover 0-10 s of each minute, calibration ones start 15-45 s in
    assert all(10 <= offset and offset + 10 <= 60 for offset in CALIBRATION_OFFSETS_S)
    reader = RecordingCalibrationReader(list(batches.values()))
    reader.set_range(10, 12)  # ONNX Runtime's strided calibration: one stride at a time
    assert [reader.get_next() is not None for _ in range(3)] == [True, True, False]
    assert reader.describe().windows == 256


def test_too_few_calibration_windows_are_refused(tmp_path):
    with pytest.raises(CsfmError, match="allow-small-calibration"):  # the bundled 22-s ECG has a few windows
        export(ExportRequest(size="tiny", out_dir=tmp_path, precisions=("int8",), data_dir=None, progress=quiet))
    assert not list(tmp_path.glob("*.onnx"))


def test_export_verifies_and_calibrates_on_a_users_own_folder(tmp_path, data_dir):
    """Recordings under the user's own names (and a sub-folder): no shared file name is needed."""
    folder = tmp_path / "our-ward"
    (folder / "holter").mkdir(parents=True)
    for source, name in [("a103l", "bed7.npz"), ("JS20011", "ecg-0001.npz"), ("JS20012", "ecg-0002.npz"),
                         ("cpsc2021_data_8_2", "holter/day1.npz")]:
        (folder / name).write_bytes((data_dir / f"{source}.npz").read_bytes())
    [path] = export(ExportRequest(size="tiny", out_dir=tmp_path / "out", precisions=("int8",), data_dir=folder,
                                  calibration_windows=32, progress=quiet))
    manifest = read_manifest(path)
    assert manifest.verification.passed and str(folder) in manifest.verification.data
    assert manifest.calibration.windows == 32 and "ii+ppg" in manifest.calibration.lead_sets
    assert "bed7.npz" in manifest.calibration.files_sha256
    with pytest.raises(CsfmError, match="no recordings"):
        (tmp_path / "empty").mkdir()
        export(ExportRequest(size="tiny", out_dir=tmp_path / "out2", precisions=("fp32",), data_dir=tmp_path / "empty",
                             progress=quiet))


def test_int8_keeps_the_attention_score_matmuls_in_float(tiny_artifacts, tmp_path):
    from csfm_edge.export.precision import ATTENTION, float_matmuls

    graph = onnx.load(str(tiny_artifacts["int8"]))
    dq_outputs = {o for n in graph.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    matmuls = [n for n in graph.graph.node if n.op_type == "MatMul"]
    float_ones = [n for n in matmuls if not any(i in dq_outputs for i in n.input)]
    depth = read_manifest(tiny_artifacts["int8"]).model.depth
    assert len(float_ones) == 2 * depth and len(matmuls) == 6 * depth + 1  # Q.K^T and softmax.V per block
    assert read_manifest(tiny_artifacts["int8"]).precision_detail.float_matmuls == {
        "selected_by": [ATTENTION], "count": 2 * depth}
    fp32 = onnx.load(str(tiny_artifacts["fp32"]))
    assert float_matmuls(fp32, [ATTENTION]) == [n.name for n in float_ones]
    assert len(float_matmuls(fp32, ["to_qkv"])) == depth  # module paths, whatever the exporter named the node
    with pytest.raises(CsfmError, match="matches no MatMul"):
        float_matmuls(fp32, ["no_such_layer"])
    with pytest.raises(CsfmError, match="--int8-keep-float"):
        float_matmuls(fp32, ["(unclosed"])


def test_both_exporters_give_the_same_symbolic_graph_and_old_opsets_need_the_tracer(tmp_path, tiny_artifacts):
    from csfm_edge.config import CSFMConfig
    from csfm_edge.export.graph import Outputs, export_fp32

    model = build(CSFMConfig(dim=64, depth=2, heads=2, mlp_dim=128, head_classes=3), seed=2)
    manifest = replace(read_manifest(tiny_artifacts["fp32"]), outputs=model_outputs(model.config))
    x = np.random.default_rng(0).standard_normal((3, 12, 1250)).astype(np.float32)
    outputs = {}
    for exporter, opset in (("dynamo", 18), ("tracer", 17)):
        path = tmp_path / f"{exporter}.onnx"
        assert exporter in export_fp32(model, path, opset, exporter)
        graph = onnx.load(str(path))
        assert graph.opset_import[0].version == opset
        backend = _cpu_backend(path, manifest)
        outputs[exporter] = backend.run(SPEC.feed(x, list(range(12))))
        backend.close()
    reference = Outputs(model)(torch.from_numpy(x), torch.arange(12))
    for name, value in zip(("features", "logits"), reference):
        for exporter in outputs:
            np.testing.assert_allclose(outputs[exporter][name], value.detach().numpy(), atol=1e-4, err_msg=exporter)
    with pytest.raises(CsfmError, match="opset 18 or later"):
        export_fp32(model, tmp_path / "old.onnx", 17, "dynamo")
    with pytest.raises(CsfmError, match="unknown exporter"):
        export_fp32(model, tmp_path / "x.onnx", 18, "jit")
