"""NVIDIA ModelOpt's ONNX INT8 quantization vs csfm-edge's, on the same windows, in one run.

Usage (ModelOpt brings onnxruntime-gpu and its own pins, so it gets an environment of its own):
    python -m venv .venv-modelopt && .venv-modelopt/bin/pip install torch==2.13.0 "nvidia-modelopt[onnx]"
    .venv-modelopt/bin/pip install --no-deps -e .
    .venv-modelopt/bin/python benchmarks/modelopt_int8.py [--size tiny] [--windows 64] [--out DIR]

For the seeded UNTRAINED weights and their STRESS variant (see benchmarks/calibration.py): the FP32 graph,
then INT8 made by ModelOpt (``modelopt.onnx.quantization.quantize``, int8, max and entropy, CPU
calibration, FP32 kept as the high precision) from the same calibration and held-out windows as
benchmarks/calibration.py (csfm-edge's own path; its ONNX Runtime is newer than the onnxruntime-gpu
ModelOpt pins, so it runs in the main environment): each graph's worst feature cosine vs FP32 PyTorch
per lead set, and where its Q/DQ pairs sit (the op types they feed).
``--out`` keeps the graphs, e.g. to build them with TensorRT for RTX.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import tempfile
import time
from pathlib import Path

import onnx
from calibration import stressed  # benchmarks/calibration.py: the same STRESS weights
from common import add_data_flag

from csfm_edge.config import size_config
from csfm_edge.export.calibration import RecordingCalibrationReader
from csfm_edge.export.graph import export_fp32
from csfm_edge.metrics import cosine_rows
from csfm_edge.model import build
from csfm_edge.recordings.datasets import calibration_batches, lead_set_batches
from csfm_edge.runtime.backends import BackendOptions, open_backend, reference_backend
from csfm_edge.runtime.manifest import graph_manifest, untrained_weights
from csfm_edge.spec import SPEC


class ModelOptReader(RecordingCalibrationReader):
    """The same windows; ModelOpt also asks its reader for the first feed without consuming it."""

    def get_first(self):
        return self.feeds[0]


def modelopt_int8(fp32: Path, out: Path, reader: RecordingCalibrationReader, method: str) -> None:
    from modelopt.onnx.quantization import quantize

    reader = ModelOptReader(reader.batches)
    with contextlib.redirect_stdout(io.StringIO()):
        quantize(str(fp32), quantize_mode="int8", calibration_data_reader=reader, calibration_method=method,
                 calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=str(out), log_level="ERROR")


METHODS = ("max", "entropy")


def qdq_placement(path: Path) -> str:
    """Which op types take a DequantizeLinear output (what runs in INT8), and how many Q nodes there are."""
    graph = onnx.load(str(path), load_external_data=False).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    fed = collections.Counter(n.op_type for n in graph.node if n.op_type != "QuantizeLinear"
                              and any(i in dq_outputs for i in n.input))
    quantize_nodes = sum(n.op_type == "QuantizeLinear" for n in graph.node)
    return f"{quantize_nodes} Q; " + ", ".join(f"{op} {count}" for op, count in fed.most_common())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="keep the INT8 graphs here")
    add_data_flag(parser)
    args = parser.parse_args()
    held_out = lead_set_batches(args.data)
    calibration = calibration_batches(args.data, args.windows)
    print(f"CSFM {args.size}, UNTRAINED seed 0, {args.windows} calibration windows; worst feature cosine vs FP32 "
          "PyTorch on held-out windows")
    print(f"{'weights':9} {'quantizer':22} " + " ".join(f"{b.name:>8}" for b in held_out) + f" {'worst':>8} "
          f"{'s':>4}  Q/DQ feeds")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for variant in ("untrained", "STRESS"):
            model = build(size_config(args.size), seed=0)
            model = stressed(model) if variant == "STRESS" else model
            reference = [reference_backend(model).run(SPEC.feed(b.signal, b.channel_ids))[SPEC.features]
                         for b in held_out]
            fp32 = Path(tmp) / f"{variant}.fp32.onnx"
            export_fp32(model, fp32)
            for method in METHODS:
                started = time.perf_counter()
                name = f"modelopt {method}"
                path = out / f"{args.size}-{variant}-modelopt-{method}.int8.onnx"
                modelopt_int8(fp32, path, RecordingCalibrationReader(calibration), method)
                backend = open_backend(path, graph_manifest(model.config, "int8", untrained_weights(0)),
                                       BackendOptions(provider="cpu"))
                worst = [float(cosine_rows(backend.run(SPEC.feed(b.signal, b.channel_ids))[SPEC.features],
                                           ref).min()) for b, ref in zip(held_out, reference)]
                backend.close()
                print(f"{variant:9} {name:22} " + " ".join(f"{w:8.5f}" for w in worst) + f" {min(worst):8.5f} "
                      f"{time.perf_counter() - started:4.0f}  {qdq_placement(path)}", flush=True)


if __name__ == "__main__":
    main()
