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
from csfm_edge.runtime.backends.options import BackendOptions
from csfm_edge.runtime.manifest import Manifest
from csfm_edge.spec import SPEC

# OpenVINO's inference precision hints and the CPU capability each needs.
UNITS = {"f32": "FP32", "bf16": "BF16", "f16": "FP16"}


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
    on_gpu = False
    device_timing = False

    def __init__(self, path: str | Path, manifest: Manifest, options: BackendOptions):
        try:
            import openvino as ov
        except ImportError:
            raise BackendUnavailableError("the OpenVINO backend needs openvino: pip install 'csfm-edge[openvino]'") \
                from None
        self.ov = ov
        self.path = Path(path)
        core = ov.Core()
        record = manifest.precision_record
        if not record.portable:
            raise BackendUnavailableError(f"{self.path.name} is a {record.name} graph ({record.made_by}): "
                                          "ONNX Runtime only, not OpenVINO")
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self.inference_precision = options.inference_precision or (
            record.openvino_hint if UNITS[record.openvino_hint] in capabilities else "f32")
        if self.inference_precision != "f32" and UNITS[self.inference_precision] not in capabilities:
            raise BackendUnavailableError(f"this CPU has no {self.inference_precision} units for OpenVINO "
                                          f"(it has {', '.join(capabilities)})")
        config = {"INFERENCE_PRECISION_HINT": self.inference_precision, "PERFORMANCE_HINT": "LATENCY"}
        if options.streams > 1:  # the cores split among streams, one inference each at a time
            config.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": options.streams})
        self.streams = options.streams
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = options.threads
        self.model = core.compile_model(str(path), "CPU", config)
        output_names = manifest.output_names
        if len(self.model.outputs) != len(output_names):
            raise BackendUnavailableError(f"{self.path.name} has {len(self.model.outputs)} outputs in OpenVINO, its "
                                          f"manifest names {len(output_names)}: {', '.join(output_names)}")
        self.output_names = list(output_names)
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self.device = core.get_property("CPU", "FULL_DEVICE_NAME")

    def describe(self) -> dict:
        return {"backend": self.name, "provider": f"CPU ({self.inference_precision})", "streams": self.streams,
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
