"""One object describing the exported graph (tensor names, dtypes, dynamic axes, opset) and the precisions.

Export, verification, TensorRT profiles, the Triton configuration, the backends and the tests all
read :data:`SPEC` (the way Optimum's ``OnnxConfig`` describes a model): no other module spells a
tensor name or decides which window lengths the model takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from csfm_edge.config import PATCH_SAMPLES, WINDOW_SAMPLES
from csfm_edge.errors import ParameterError, WindowLengthError
from csfm_edge.leads import NUM_CHANNEL_TYPES, PPG_ID
from csfm_edge.metrics import Tolerance


@dataclass(frozen=True)
class AxisRange:
    """Smallest, typical and largest value of one dynamic axis (TensorRT's min/opt/max)."""

    min: int
    opt: int
    max: int

    def contains(self, value: int) -> bool:
        return self.min <= value <= self.max


@dataclass(frozen=True)
class Precision:
    """One artifact precision, declared as data (Optimum's ``VARIANTS`` habit): every decision that
    depends on a precision reads this record instead of testing its name.

    ``portable``: a graph of standard ONNX operators (TensorRT, OpenVINO, any runtime); the ``cpu-*``
    graphs use ONNX Runtime's fused-attention contrib op. ``tensorrt_flags``: builder flags a weakly
    typed TensorRT needs for it. ``tf32``: whether TF32 may round its matrix products (not within the
    fp32 tolerance). ``openvino_hint``: OpenVINO's inference precision where the CPU has bf16 units.
    ``quantized``: int8 inside (Q/DQ or dynamic); ``calibrated``: made from real calibration windows.
    ``made_by``: how the graph is made, for humans. ``compute``: the arithmetic of its matrix products
    (which published or measured peak its speed is a fraction of).
    """

    name: str
    portable: bool
    tolerance: Tolerance
    made_by: str
    tensorrt_flags: tuple[str, ...] = ()
    tf32: bool = True
    openvino_hint: str = "f32"
    quantized: bool = False
    calibrated: bool = False
    compute: str = "fp32"


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", True, Tolerance(max_abs=1e-4), "the exported graph, float32 throughout", tf32=False),
    Precision("fp16", True, Tolerance(min_cosine=0.999), "ONNX Runtime's float16 converter; norms and softmax "
              "in float32", tensorrt_flags=("FP16",), openvino_hint="bf16", compute="fp16"),
    Precision("int8", True, Tolerance(min_cosine=0.99), "Q/DQ from ONNX Runtime's static quantization on real "
              "windows", tensorrt_flags=("INT8", "FP16"), openvino_hint="bf16", quantized=True,
              calibrated=True, compute="int8"),
    Precision("cpu-fp32", False, Tolerance(max_abs=1e-4), "ONNX Runtime CPU graph with fused attention", tf32=False),
    Precision("cpu-int8", False, Tolerance(min_cosine=0.99), "ONNX Runtime CPU graph, dynamic int8 linear layers",
              quantized=True, compute="int8"),
)}
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")


def precision_record(name: str) -> Precision:
    """The record of a precision name; an unknown one names the choices."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ParameterError(f"unknown precision {name!r}; choose from {', '.join(PRECISIONS)}") from None


def check_window_length(samples: int) -> None:
    """The model takes whole patches up to the 10-s window: multiples of 25 samples, 25 to 2500."""
    if samples % PATCH_SAMPLES or not PATCH_SAMPLES <= samples <= WINDOW_SAMPLES:
        raise WindowLengthError(
            f"window length {samples} samples: CSFM takes multiples of {PATCH_SAMPLES} from "
            f"{PATCH_SAMPLES} to {WINDOW_SAMPLES} samples (0.1-10 s at 250 Hz)")


@dataclass(frozen=True)
class ExportSpec:
    # LayerNormalization is a single op from 17 (TensorRT 10.x parses it natively); torch.export's ONNX
    # exporter (dynamo=True) writes 18 or later.
    opset: int = 18
    signal: str = "signal"
    channel_ids: str = "channel_ids"
    features: str = "features"
    logits: str = "logits"
    axes: dict[str, AxisRange] = field(default_factory=lambda: {
        "batch": AxisRange(1, 8, 64),
        "channels": AxisRange(1, 2, NUM_CHANNEL_TYPES),
        "time": AxisRange(PATCH_SAMPLES, WINDOW_SAMPLES, WINDOW_SAMPLES),
    })
    # Verification grid: every combination is checked against PyTorch on real windows.
    verification_grid: dict[str, tuple[int, ...]] = field(default_factory=lambda: {
        "batch": (1, 4), "channels": (1, 2, 12, 13), "time": (WINDOW_SAMPLES, WINDOW_SAMPLES // 2)})

    @property
    def input_names(self) -> tuple[str, str]:
        return (self.signal, self.channel_ids)

    def inputs(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """name -> (dtype, symbolic dims)."""
        return {self.signal: ("float32", ("batch", "channels", "time")), self.channel_ids: ("int64", ("channels",))}

    def output_names(self, head_classes: int) -> list[str]:
        return [self.features] + ([self.logits] if head_classes else [])

    def outputs(self, dim: int, head_classes: int) -> dict[str, tuple[str, tuple[str | int, ...]]]:
        widths = {self.features: dim, self.logits: head_classes}
        return {name: ("float32", ("batch", widths[name])) for name in self.output_names(head_classes)}

    def dynamic_shapes(self) -> dict[str, dict[int, object]]:
        """The ``dynamic_shapes`` argument of torch.export (dynamo=True): one named Dim per symbolic axis.

        Bounds only check the trace (the ONNX dims are symbolic); batch has none."""
        import torch  # export side only

        dims = {name: torch.export.Dim(name, min=axis.min, **({} if name == "batch" else {"max": axis.max}))
                for name, axis in self.axes.items()}
        return {name: {i: dims[axis] for i, axis in enumerate(axes)} for name, (_, axes) in self.inputs().items()}

    def dynamic_axes(self, head_classes: int) -> dict[str, dict[int, str]]:
        """The torch.onnx ``dynamic_axes`` argument."""
        axes: dict[str, dict[int, str]] = {self.signal: {0: "batch", 1: "channels", 2: "time"},
                                           self.channel_ids: {0: "channels"}}
        axes.update({name: {0: "batch"} for name in self.output_names(head_classes)})
        return axes

    def feed(self, signal: np.ndarray, channel_ids) -> dict[str, np.ndarray]:
        """The graph's inputs in their dtypes: float32 [B, C, T] and int64 [C]."""
        return {self.signal: np.ascontiguousarray(signal, dtype=np.float32),
                self.channel_ids: np.ascontiguousarray(channel_ids, dtype=np.int64)}

    def example_feed(self, batch: int = 2, channel_ids=(1, PPG_ID), time: int = WINDOW_SAMPLES
                     ) -> dict[str, np.ndarray]:
        """Zeros of a shape inside every axis range: tracing examples and probe inferences."""
        return self.feed(np.zeros((batch, len(channel_ids), time), np.float32), channel_ids)


SPEC = ExportSpec()


def artifact_stem(model_name: str, precision: str) -> str:
    """``csfm-<model>.<precision>``: the ONNX file and its manifest share it."""
    return f"csfm-{model_name}.{precision}"
