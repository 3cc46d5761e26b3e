"""OpenVINO backend for exported ONNX graphs on x86 CPUs (an optional extra).

Measured on CPUs (see the README), OpenVINO running the portable INT8 Q/DQ graph is the fastest
accurate CPU path: integer matrix products on VNNI/AMX units, fused attention, and bf16 for the
float parts where the CPU has bf16 units. The inference precision follows the artifact: fp32 graphs
run in f32 (so they keep the fp32 tolerance), fp16/int8 graphs in bf16 where supported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from csfm_edge.errors import BackendUnavailableError


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVINOBackend:
    name = "openvino"

    def __init__(self, path: str | Path, precision: str, threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailableError("the OpenVINO backend needs openvino: pip install 'csfm-edge[openvino]'") \
                from None
        self.ov = ov
        self.path = Path(path)
        core = ov.Core()
        bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self.inference_precision = "bf16" if precision in ("fp16", "int8") and bf16 else "f32"
        config = {"INFERENCE_PRECISION_HINT": self.inference_precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.model = core.compile_model(str(path), "CPU", config)
        self.request = self.model.create_infer_request()
        self.output_names = [o.get_any_name() for o in self.model.outputs]
        self.device = core.get_property("CPU", "FULL_DEVICE_NAME")

    def describe(self) -> dict:
        return {"backend": self.name, "provider": f"CPU ({self.inference_precision})",
                "openvino": self.ov.__version__, "device": self.device, "file": self.path.name}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.request.infer({"signal": feed["signal"], "channel_ids": feed["channel_ids"]})
        return {name: np.array(results[output]) for name, output in zip(self.output_names, self.model.outputs)}

    def close(self) -> None:
        self.request = self.model = None
