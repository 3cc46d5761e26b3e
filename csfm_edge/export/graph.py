"""CSFM to ONNX and the graph's checks: symbolic axes, output widths, size, the ONNX checker.

The portable graph comes from torch.export (``torch.onnx.export(dynamo=True)``), the exporter PyTorch
maintains; the TorchScript tracer, deprecated since PyTorch 2.9, remains as ``exporter="tracer"`` and
for the ONNX Runtime CPU graphs, whose fused-attention op is a TorchScript symbolic function.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch

from csfm_edge import __version__
from csfm_edge.config import CSFMConfig
from csfm_edge.errors import CsfmError
from csfm_edge.model import CSFM
from csfm_edge.spec import SPEC

PROTOBUF_LIMIT = 2 * 1024**3
EXPORTERS = {"dynamo": "torch.onnx.export(dynamo=True) (torch.export)",
             "tracer": "torch.onnx.export (TorchScript tracer)"}


class Outputs(torch.nn.Module):
    """Features, plus the head's logits when the model has one: the graph's outputs."""

    def __init__(self, model: CSFM):
        super().__init__()
        self.model = model

    def forward(self, signal: torch.Tensor, channel_ids: torch.Tensor):
        features = self.model(signal, channel_ids)
        return features if self.model.head is None else (features, self.model.head(features))


def export_fp32(model: CSFM, path: Path, opset: int = SPEC.opset, exporter: str = "dynamo") -> str:
    """Export with symbolic batch/channels/time, fix output dims, check with full shape inference.

    Returns the exporter's description, for the manifest."""
    if exporter not in EXPORTERS:
        raise CsfmError(f"unknown exporter {exporter!r}; choose {', '.join(EXPORTERS)}")
    if exporter == "dynamo":
        dynamo_export(Outputs(model), model.config, path, opset)
    else:
        trace(Outputs(model), model.config, path, opset, do_constant_folding=True)
    finish_graph(path, model.config, full_check=True)
    return EXPORTERS[exporter]


def dynamo_export(module: torch.nn.Module, config: CSFMConfig, path: Path, opset: int) -> None:
    """torch.export ``module`` on :data:`SPEC`'s example inputs, with one named dynamic Dim per axis."""
    if opset < 18:
        raise CsfmError(f"the dynamo exporter writes opset 18 or later, not {opset}: pass --opset 18, or "
                        "--exporter tracer for an older opset")
    example = tuple(torch.from_numpy(array) for array in SPEC.example_feed().values())
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = registry.level
    registry.setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # its progress lines and axis-naming notices
        try:
            program = torch.onnx.export(module.eval(), example, dynamo=True, opset_version=opset, verbose=False,
                                        input_names=list(SPEC.input_names),
                                        output_names=SPEC.output_names(config.head_classes),
                                        dynamic_shapes=SPEC.dynamic_shapes())
        finally:
            registry.setLevel(level)
    # Its intermediate value_info goes stale under graph rewrites (the float16 converter leaves float32
    # types on tensors it made float16, which full shape inference then refuses); shape inference
    # recomputes it for these standard ops. Not done for every graph: the CPU graphs' contrib attention
    # op needs the types the tracer records, which ONNX shape inference cannot derive.
    program.save(str(path))
    graph = onnx.load(str(path))
    del graph.graph.value_info[:]
    onnx.save(graph, str(path))


def trace(module: torch.nn.Module, config: CSFMConfig, path: Path, opset: int, **options) -> None:
    """TorchScript-trace ``module`` on :data:`SPEC`'s example inputs with its names and dynamic axes."""
    example = tuple(torch.from_numpy(array) for array in SPEC.example_feed().values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=opset,
                          input_names=list(SPEC.input_names), output_names=SPEC.output_names(config.head_classes),
                          dynamic_axes=SPEC.dynamic_axes(config.head_classes), **options)


def finish_graph(path: Path, config: CSFMConfig, full_check: bool) -> None:
    """Name the output dims, check the size limit, the checker (with full shape inference) and the axes."""
    graph = onnx.load(str(path))
    for output in graph.graph.output:  # the tracer names the static dims after nodes; give them numbers
        dims = output.type.tensor_type.shape.dim
        dims[0].dim_param = "batch"
        dims[1].dim_value = config.dim if output.name == SPEC.features else config.head_classes
    graph.doc_string = f"CSFM {config.name or 'custom'} signal encoder, exported by csfm-edge {__version__}"
    onnx.save(graph, str(path))
    if path.stat().st_size >= PROTOBUF_LIMIT:
        raise CsfmError(f"{path.name} exceeds the 2 GB protobuf limit")
    onnx.checker.check_model(str(path), full_check=full_check)
    check_symbolic_axes(onnx.load(str(path), load_external_data=False))


def check_symbolic_axes(model: onnx.ModelProto) -> None:
    """The saved graph must keep batch, channels and time symbolic, or dynamic shapes silently break."""
    inputs = {i.name: [d.dim_param for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    expected = {name: list(dims) for name, (_, dims) in SPEC.inputs().items()}
    if inputs != expected:
        raise CsfmError(f"exported inputs {inputs} are not the symbolic {expected}")

