"""One object describing the exported graph: names, dtypes, dynamic axes, opset and tolerances.

Export, verification, TensorRT profiles and the Triton configuration all read :data:`SPEC`, so the
graph interface is written down once (the way Optimum's ``OnnxConfig`` describes a model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from csfm_edge.config import PATCH_SAMPLES, WINDOW_SAMPLES
from csfm_edge.leads import NUM_CHANNEL_TYPES

PRECISIONS = ("fp32", "fp16", "int8", "cpu-fp32", "cpu-int8")
# fp32/fp16/int8: portable graphs, precision in the graph, for TensorRT and any runtime.
# cpu-*: ONNX Runtime CPU graphs with its fused attention op (see csfm_edge.export.cpu).
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class AxisRange:
    """Smallest, typical and largest value of one dynamic axis (TensorRT's min/opt/max)."""

    min: int
    opt: int
    max: int
    step: int = 1


@dataclass(frozen=True)
class Tolerance:
    """Export acceptance for one precision: max abs error and/or mean cosine of the features."""

    max_abs: float | None = None
    min_cosine: float | None = None

    def describe(self) -> str:
        parts = []
        if self.max_abs is not None:
            parts.append(f"max abs <= {self.max_abs:g}")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        return " and ".join(parts)


@dataclass(frozen=True)
class ExportSpec:
    opset: int = 17  # LayerNormalization is a single op from 17 (TensorRT 10.x parses it natively)
    input_names: tuple[str, ...] = ("signal", "channel_ids")
    feature_output: str = "features"
    logits_output: str = "logits"
    axes: dict[str, AxisRange] = field(default_factory=lambda: {
        "batch": AxisRange(1, 8, 64),
        "channels": AxisRange(1, 2, NUM_CHANNEL_TYPES),
        "time": AxisRange(PATCH_SAMPLES, WINDOW_SAMPLES, WINDOW_SAMPLES, PATCH_SAMPLES),
    })
    tolerances: dict[str, Tolerance] = field(default_factory=lambda: {
        "fp32": Tolerance(max_abs=1e-4),
        "fp16": Tolerance(min_cosine=0.999),
        "int8": Tolerance(min_cosine=0.99),
        "cpu-fp32": Tolerance(max_abs=1e-4),
        "cpu-int8": Tolerance(min_cosine=0.99),
    })

    def inputs(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """name -> (dtype, symbolic dims)."""
        return {"signal": ("float32", ("batch", "channels", "time")), "channel_ids": ("int64", ("channels",))}

    def outputs(self, dim: int, head_classes: int) -> dict[str, tuple[str, tuple[str | int, ...]]]:
        out: dict[str, tuple[str, tuple[str | int, ...]]] = {self.feature_output: ("float32", ("batch", dim))}
        if head_classes:
            out[self.logits_output] = ("float32", ("batch", head_classes))
        return out

    def dynamic_axes(self, head_classes: int) -> dict[str, dict[int, str]]:
        """The torch.onnx ``dynamic_axes`` argument."""
        axes = {"signal": {0: "batch", 1: "channels", 2: "time"}, "channel_ids": {0: "channels"},
                self.feature_output: {0: "batch"}}
        if head_classes:
            axes[self.logits_output] = {0: "batch"}
        return axes


SPEC = ExportSpec()


def artifact_stem(size: str, precision: str) -> str:
    """``csfm-<size>.<precision>``: the ONNX file and its manifest share it."""
    return f"csfm-{size}.{precision}"
