"""What a caller may choose about how an artifact runs, checked when chosen (apart from the backends, which
all take it, so that none of them imports the opener)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from csfm_edge.errors import BackendUnavailableError, ParameterError

# What --provider may name: ONNX Runtime's execution providers by alias, OpenVINO, and for the PyTorch
# reference (a checkpoint, or reference=True) the device it runs on (cpu or cuda).
PROVIDERS = ("cpu", "cuda", "tensorrt", "openvino")
AUTOCAST = ("bf16", "fp16")
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")  # OpenVINO's INFERENCE_PRECISION_HINT values


@dataclass(frozen=True)
class BackendOptions:
    """How to run an artifact: every choice a caller can make, checked when made.

    ``provider`` None picks the best this machine has (see :func:`open_backend`); a named one that is not
    here is an error, never a quiet fallback. ``threads`` bounds the CPU backends' thread pools;
    ``device_id`` picks the GPU; ``cuda_graph`` replays TensorRT engines from captured CUDA graphs;
    ``reference`` runs the artifact's weights in PyTorch (``checkpoint`` names them when they are not
    seeded), on ``provider`` cpu or cuda, with ``autocast`` bf16/fp16 if asked; ``inference_precision``
    overrides OpenVINO's (by default f32 for fp32 graphs, bf16 for fp16/int8 where the CPU has it);
    ``streams`` is how many inferences OpenVINO runs at once, the cores split among them: 1 (the default)
    gives one call every core, the lowest latency; more give more windows per second from callers that
    call at once (a gateway's engine threads), where a small model spreads badly over many cores.
    """

    provider: str | None = None
    device_id: int = 0
    threads: int | None = None
    cuda_graph: bool = False
    reference: bool = False
    checkpoint: Path | None = None
    autocast: str | None = None
    inference_precision: str | None = None
    streams: int = 1

    def __post_init__(self) -> None:
        if self.provider is not None:
            provider = str(self.provider).lower()
            if provider not in PROVIDERS:
                raise BackendUnavailableError(f"unknown provider {self.provider!r}: choose from {', '.join(PROVIDERS)}")
            object.__setattr__(self, "provider", provider)
        for name in ("cuda_graph", "reference"):
            if not isinstance(getattr(self, name), bool):
                raise ParameterError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("device_id", "threads", "streams"):
            value = getattr(self, name)
            if (value is not None or name != "threads") and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < (0 if name == "device_id" else 1)):
                raise ParameterError(f"{name} must be a {'non-negative' if name == 'device_id' else 'positive'} "
                                     f"integer, got {value!r}")
        if self.autocast is not None and self.autocast not in AUTOCAST:
            raise ParameterError(f"autocast must be one of {', '.join(AUTOCAST)}, got {self.autocast!r}")
        if self.inference_precision is not None and self.inference_precision not in INFERENCE_PRECISIONS:
            raise ParameterError(f"inference precision must be one of {', '.join(INFERENCE_PRECISIONS)}, "
                                 f"got {self.inference_precision!r}")
        if self.checkpoint is not None:
            if not isinstance(self.checkpoint, (str, Path)):
                raise ParameterError(f"checkpoint must be a path, got {self.checkpoint!r}")
            object.__setattr__(self, "checkpoint", Path(self.checkpoint))

    def with_provider(self, provider: str | None) -> BackendOptions:
        return replace(self, provider=provider)


def option_problem(options: BackendOptions, runs: str, *, kind: str, on_gpu: bool) -> str | None:
    """Why ``options`` ask the backend chosen (``kind``: onnxruntime, openvino, tensorrt or torch; ``runs``:
    what runs where) for something it does not have, or None: an option quietly ignored would be a fallback
    the user never sees (a GPU number on the CPU, CUDA graphs outside TensorRT ...)."""
    if options.device_id and not on_gpu:
        return f"device_id {options.device_id} (--device-id) picks a GPU, but {runs} computes on the CPU"
    if options.cuda_graph and kind != "tensorrt":
        return f"cuda_graph (--cuda-graph) replays TensorRT engines (.plan): {runs} is not one"
    if options.autocast is not None and kind != "torch":
        return f"autocast applies to the PyTorch reference (reference=True or a checkpoint), not to {runs}"
    if options.inference_precision is not None and kind != "openvino":
        return f"inference_precision applies to OpenVINO (provider openvino), not to {runs}"
    if options.streams > 1 and kind != "openvino":
        return f"streams {options.streams} (--streams) runs several OpenVINO inferences at once (provider " \
               f"openvino), not {runs}"
    return None
