"""OpenVINO backend for exported ONNX graphs on x86 CPUs (an optional extra).

Measured on CPUs (see the README), OpenVINO running the portable INT8 Q/DQ graph is the fastest
accurate CPU path: integer matrix products on VNNI/AMX units, fused attention, and bf16 for the
float parts where the CPU has bf16 units. The inference precision follows the artifact: fp32 graphs
run in f32 (so they keep the fp32 tolerance), fp16/int8 graphs in bf16 where supported.
"""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np

from csfm_edge.errors import BackendUnavailableError
from csfm_edge.spec import SPEC


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVINOBackend:
    """``run(feed)`` over a compiled model. Safe from several threads: each call takes an infer request
    from a pool (one request runs one inference at a time) and returns it when its outputs are copied.

    OpenVINO renames the outputs of some graphs (the FP16 converter's casts), so outputs are taken by
    position and named with ``output_names``, the artifact manifest's names.
    """

    name = "openvino"

    def __init__(self, path: str | Path, precision: str, output_names: list[str], threads: int | None = None):
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
        if len(self.model.outputs) != len(output_names):
            raise BackendUnavailableError(f"{self.path.name} has {len(self.model.outputs)} outputs in OpenVINO, its "
                                          f"manifest names {len(output_names)}: {', '.join(output_names)}")
        self.output_names = list(output_names)
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self.device = core.get_property("CPU", "FULL_DEVICE_NAME")

    def describe(self) -> dict:
        return {"backend": self.name, "provider": f"CPU ({self.inference_precision})",
                "openvino": self.ov.__version__, "device": self.device, "file": self.path.name}

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = self.model.create_infer_request()
        try:
            results = request.infer({name: feed[name] for name in SPEC.input_names})
            return {name: np.array(results[output]) for name, output in zip(self.output_names, self.model.outputs)}
        finally:
            self._requests.put(request)

    def close(self) -> None:
        self._requests = queue.SimpleQueue()
        self.model = None
