"""CPU-optimised graphs (fused MultiHeadAttention, dynamic int8) and the OpenVINO backend."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from conftest import load_record, quiet

from csfm_edge.export.onnx_export import ExportRequest, export
from csfm_edge.runtime import Session
from csfm_edge.runtime.backends.openvino import openvino_available
from csfm_edge.runtime.manifest import read_manifest


@pytest.fixture(scope="module")
def cpu_artifacts(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("cpu")
    paths = export(ExportRequest(size="tiny", out_dir=out, seed=0, precisions=("cpu-fp32", "cpu-int8"),
                                 data_dir=data_dir, progress=quiet))
    return {p.name.split(".")[1]: p for p in paths}


def test_cpu_graphs_fuse_attention_and_verify(cpu_artifacts):
    for path in cpu_artifacts.values():
        counts = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
        assert counts["MultiHeadAttention"] == 6 and counts["Softmax"] == 0
        manifest = read_manifest(path)
        assert manifest.verification.passed and manifest.precision_detail.runtime == "ONNX Runtime only"
    assert Counter(n.op_type for n in onnx.load(str(cpu_artifacts["cpu-int8"])).graph.node)["MatMulInteger"] > 0
    assert read_manifest(cpu_artifacts["cpu-fp32"]).verification.worst.max_abs <= 1e-4


def test_default_backend_for_cpu_graphs_is_onnxruntime(cpu_artifacts):
    assert Session.open(cpu_artifacts["cpu-int8"]).info()["backend"] == "onnxruntime"


@pytest.mark.skipif(not openvino_available(), reason="OpenVINO is the optional 'openvino' extra")
def test_openvino_runs_the_portable_graphs_within_tolerance(tiny_artifacts, data_dir):
    signal, fs, ids = load_record(data_dir / "E07500.npz")
    reference = Session.open(tiny_artifacts["fp32"], reference=True).embed(signal, fs, ids).features
    fp32 = Session.open(tiny_artifacts["fp32"], provider="openvino")
    assert fp32.info()["provider"] == "CPU (f32)"
    assert np.abs(fp32.embed(signal, fs, ids).features - reference).max() <= 1e-4
    int8 = Session.open(tiny_artifacts["int8"], provider="openvino").embed(signal, fs, ids).features
    cosine = (int8 * reference).sum(-1) / np.linalg.norm(int8, axis=-1) / np.linalg.norm(reference, axis=-1)
    assert cosine.min() >= 0.99
