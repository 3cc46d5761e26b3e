"""CPU-optimised ONNX graphs for ONNX Runtime's CPU provider (gateways without an NVIDIA GPU).

The portable graph spells attention out in MatMul/Softmax so TensorRT and every runtime take it, but
ONNX Runtime's optimizer finds no attention pattern in it: the 1201-token softmax of a 12-lead window
then dominates. These variants put attention in one ``com.microsoft::MultiHeadAttention`` node (ONNX
Runtime's fused CPU kernel, softmax in float32) and, for ``cpu-int8``, quantize the linear layers'
weights to int8 with dynamic (per-batch) activation scales, which runs on VNNI / AMX integer units.
They are for ONNX Runtime only; the ``fp32``/``fp16``/``int8`` graphs remain the TensorRT artifacts.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic

from csfm_edge.export.graph import Outputs, finish_graph, trace
from csfm_edge.model import CSFM, build, fused_attention
from csfm_edge.spec import SPEC, precision_record


class _MultiHeadAttention(torch.autograd.Function):
    """Computes attention in PyTorch when traced; exports as ONNX Runtime's fused contrib op."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        return fused_attention(q, k, v, heads)

    @staticmethod
    def symbolic(g, q, k, v, heads: int):
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=heads)
        out.setType(q.type())  # same shape and dtype as q: lets the exporter's shape inference through
        return out


def onnxruntime_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    return _MultiHeadAttention.apply(q, k, v, heads)


def export_cpu(model: CSFM, precision: str, out_path: Path, opset: int = SPEC.opset) -> dict:
    """Write the CPU graph for ``precision``; return how it was made, for the manifest."""
    cpu_model = build(model.config, attention=onnxruntime_attention)
    cpu_model.load_state_dict(model.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        traced = Path(tmp) / "traced.onnx"
        trace(Outputs(cpu_model), model.config, traced, opset, custom_opsets={"com.microsoft": 1})
        finish_graph(traced, model.config, full_check=False)  # ONNX's checker does not know contrib ops
        if not precision_record(precision).quantized:
            onnx.save(onnx.load(str(traced)), str(out_path))
        else:
            quiet_root = logging.getLogger().level
            logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" notice: not needed here
            try:
                quantize_dynamic(str(traced), str(out_path), weight_type=QuantType.QInt8, per_channel=True,
                                 op_types_to_quantize=["MatMul"])
            finally:
                logging.getLogger().setLevel(quiet_root)
    how = {"tool": "torch.onnx.export + com.microsoft::MultiHeadAttention", "runtime": "ONNX Runtime only",
           "attention": "fused MultiHeadAttention (float32 softmax)"}
    if precision_record(precision).quantized:
        how.update({"quantization": "onnxruntime.quantization.quantize_dynamic", "weights": "int8 per channel",
                    "activations": "dynamic per-batch uint8 scales", "quantized_ops": ["MatMul (linear layers)"]})
    return how
