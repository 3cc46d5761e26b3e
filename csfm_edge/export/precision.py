"""FP16 and INT8 graphs made from the FP32 export with the field's tooling, precision in the graph.

TensorRT 11 (and strongly typed builds on 10.x) take precision from the graph, so these decide the
engines' accuracy:
- FP16: ONNX Runtime's ``float16`` converter; weights and matrix products in FP16, LayerNormalization,
  Softmax and reductions blocked to FP32 (the overflow spots of FP16 transformers); inputs and
  outputs stay float32.
- INT8: ONNX Runtime's ``quantize_static`` in QDQ format, symmetric int8 (zero point 0) activations
  and per-channel weights, as TensorRT requires; only the inputs of the weighted MatMuls are quantized
  (the attention-score MatMuls, LayerNorm, Softmax and GELU stay float); calibrated on real recordings.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from csfm_edge.errors import CsfmError
from csfm_edge.export.calibration import RecordingCalibrationReader

FP32_OPS_IN_FP16_GRAPH = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt")
CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
INT8_OPS = ("MatMul",)
ATTENTION = "attention"  # the attention-score MatMuls; see float_matmuls
# Kept in float by default: with activation outliers (a trained transformer's, or benchmarks/calibration.py's
# STRESS weights) quantizing Q.K^T and softmax.V costs the most accuracy (README, "INT8 calibration");
# NVIDIA ModelOpt leaves them unquantized in this graph too.
DEFAULT_KEEP_FLOAT = (ATTENTION,)
PERCENTILE = 99.999


def to_fp16(fp32_path: Path, out_path: Path) -> dict:
    """Write the FP16 graph; return how it was made, for the manifest."""
    model = onnx.load(str(fp32_path))
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS_IN_FP16_GRAPH))
    fp16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    # The converter appends the input casts at the end of the node list; ONNX requires topological order
    # ("Nodes in a graph must be topologically sorted"), which onnx.checker and Polygraphy enforce.
    sorted_model = OnnxModel(fp16)
    sorted_model.topological_sort()
    onnx.save(sorted_model.model, str(out_path))
    return {"tool": "onnxruntime.transformers.float16.convert_float_to_float16",
            "kept_fp32_ops": list(FP32_OPS_IN_FP16_GRAPH), "io_types": "float32 (casts inside the graph)"}


def keep_float_patterns(keep: Sequence[str]) -> dict[str, re.Pattern | None]:
    """``--int8-keep-float`` entries compiled (None for :data:`ATTENTION`); a bad one is refused at once."""
    compiled: dict[str, re.Pattern | None] = {}
    for entry in keep:
        try:
            compiled[entry] = None if entry == ATTENTION else re.compile(entry)
        except re.error as exc:
            raise CsfmError(f"--int8-keep-float {entry!r}: {exc}") from None
    return compiled


def float_matmuls(model: onnx.ModelProto, keep: Sequence[str]) -> list[str]:
    """Names of the MatMul nodes to leave in float: :data:`ATTENTION` selects the activation-by-activation
    ones (Q.K^T and softmax.V, whatever the exporter named them); any other entry is a regular expression
    searched in each MatMul's name and module path (the ``namespace`` torch.export records)."""
    constants = {i.name for i in model.graph.initializer} | {o for n in model.graph.node
                                                            if n.op_type == "Constant" for o in n.output}
    matmuls = [n for n in model.graph.node if n.op_type in INT8_OPS]
    kept: list[str] = []
    for entry, pattern in keep_float_patterns(keep).items():
        if pattern is None:
            hits = [n.name for n in matmuls if not any(i in constants for i in n.input)]
        else:
            hits = [n.name for n in matmuls
                    if pattern.search(" ".join([n.name, *(p.value for p in n.metadata_props if p.key == "namespace")]))]
        if not hits:
            raise CsfmError(f"--int8-keep-float {entry!r} matches no MatMul of the graph")
        kept += [h for h in hits if h not in kept]
    return kept


def to_int8(fp32_path: Path, out_path: Path, reader: RecordingCalibrationReader, method: str,
            keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT) -> dict:
    """Write the QDQ INT8 graph calibrated with ``reader``; return how it was made, for the manifest.

    ``keep_float``: MatMuls left in float (see :func:`float_matmuls`); empty quantizes every MatMul.
    """
    if method not in CALIBRATION_METHODS:
        raise CsfmError(f"unknown calibration method {method!r}; choose {', '.join(CALIBRATION_METHODS)}")
    excluded = float_matmuls(onnx.load(str(fp32_path), load_external_data=False), keep_float) if keep_float else []
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # skip_symbolic_shape must stay True: ONNX Runtime's symbolic shape inference fails on the dynamic
        # graph and, on its way out, writes the model's weights as ``<uuid>.data`` into the *current*
        # folder (that is how a 73 MB stray file once reached the repository). ONNX shape inference,
        # which quant_pre_process still runs, is enough for quantize_static.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        # Not CalibMaxIntermediateOutputs: in onnxruntime 1.32 it discards the collected batches
        # before computing their ranges ("No data is collected.").
        # One window per stride: ONNX Runtime computes and merges each stride's ranges (min/max, or the
        # histograms of entropy/percentile) and frees its activations before the next, so peak memory is
        # that of one window whatever the number of windows.
        # MatMul outputs stay float: quantizing them (ONNX Runtime's default) adds a Q/DQ pair after every
        # linear layer, and OpenVINO then carries q, k and v in int8 into its fused attention, which runs
        # on AVX-512 rather than AMX. Without them the attention runs in bf16 and the features move closer
        # to fp32 (docs/performance-cpu.md: worst cosine 0.99988 -> 0.99993 on the seeded Tiny).
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True,
                 "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}, "CalibStridedMinMax": 1,
                 "OpTypesToExcludeOutputQuantization": list(INT8_OPS)}
        if method == "percentile":
            extra["CalibPercentile"] = PERCENTILE
        reader.rewind()
        with contextlib.redirect_stdout(io.StringIO()):  # its histogram calibrators print a line per stride
            quantize_static(str(prepared), str(out_path), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(INT8_OPS), per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CALIBRATION_METHODS[method], nodes_to_exclude=excluded,
                            extra_options=extra)
    return {"tool": "onnxruntime.quantization.quantize_static (QDQ)", "calibration_method": method,
            "percentile": PERCENTILE if method == "percentile" else None,
            "activations": "int8 symmetric per tensor at MatMul inputs (their outputs stay float)",
            "weights": "int8 symmetric per channel (axis 1)",
            "quantized_ops": list(INT8_OPS), "float_ops": ["LayerNormalization", "Softmax", "Erf (GELU)", "Add"],
            "float_matmuls": {"selected_by": list(keep_float), "count": len(excluded)}}
