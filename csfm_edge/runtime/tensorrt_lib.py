"""One thin adapter over TensorRT (10.x/11.x, Jetson and data-center) and TensorRT for RTX.

Their Python APIs are nearly the same (Builder, OnnxParser, IBuilderConfig, Runtime,
IExecutionContext); what differs is the module name, how a target GPU is chosen (RTX can build
ahead of time for a named compute capability, without a GPU) and, on old releases, how precision
is set. Everything else in csfm-edge talks to :class:`TensorRT`.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from types import ModuleType

from csfm_edge.errors import BackendUnavailableError
from csfm_edge.spec import precision_record

FULL, RTX = "tensorrt", "tensorrt_rtx"
MODULES = {FULL: "tensorrt", RTX: "tensorrt_rtx_bindings"}
# Ahead-of-time targets of TensorRT for RTX: Turing, Ampere (A100, RTX 30), Ada, Blackwell consumer.
RTX_TARGETS = {"rtx-sm75": "SM75", "rtx-sm80": "SM80", "rtx-sm86": "SM86", "rtx-sm89": "SM89",
               "rtx-sm120": "SM120", "rtx-sm121": "SM121"}
TARGETS = ("native", *RTX_TARGETS)
INSTALL_HINT = ("install one: on Jetson, JetPack's TensorRT (make the venv with --system-site-packages); on x86 "
                "GPUs, TensorRT from NVIDIA's index for the driver's CUDA major (nvidia-smi's \"CUDA Version\"): "
                "pip install --extra-index-url https://pypi.nvidia.com tensorrt-cu13 (R580+ drivers, CUDA 13) or "
                "tensorrt-cu12 (CUDA 12); for ahead-of-time RTX builds without a GPU, pip install "
                "'csfm-edge[tensorrt-rtx]'")


@dataclass(frozen=True)
class TensorRT:
    library: str  # "tensorrt" or "tensorrt_rtx"
    module: ModuleType

    @property
    def version(self) -> str:
        return str(self.module.__version__)

    def logger(self, ignore: tuple[str, ...] = ()):
        """A logger that prints warnings and keeps the errors, so a failure can say why in one line.

        ``ignore``: messages expected in this use (an ahead-of-time build on a machine without a GPU
        logs CUDA driver errors that do not stop it).
        """
        trt = self.module
        ignore = ("Int64 binding", *ignore)

        class CollectingLogger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity, msg):
                if any(pattern in msg for pattern in ignore):
                    return
                if severity <= trt.ILogger.Severity.ERROR:
                    self.errors.append(str(msg))
                if severity <= trt.ILogger.Severity.WARNING:
                    print(f"[{self_library}] {msg}", file=sys.stderr)

        self_library = self.library
        return CollectingLogger()

    def ahead_of_time_noise(self, target: str) -> tuple[str, ...]:
        """Log lines an RTX build for a named GPU prints on a machine without one."""
        return () if target == "native" else ("cudaError 35", "CUDA driver version is insufficient",
                                              "timing cache")

    def network_flags(self) -> int:
        """Strongly typed where the release has it (precision comes from the graph's casts and Q/DQ)."""
        flag = getattr(self.module.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return 0 if flag is None else 1 << int(flag)

    def weakly_typed_precision_flags(self, config, precision: str) -> None:
        """TensorRT releases without strong typing need builder flags for reduced precision."""
        if self.network_flags():
            return
        for name in precision_record(precision).tensorrt_flags:
            config.set_flag(getattr(self.module.BuilderFlag, name))

    def allow_tf32(self, config, precision: str) -> bool:
        """TF32 (on by default on Ampere and later) rounds FP32 matrix products to a 10-bit mantissa, which the
        FP32 tolerance (1e-4) does not allow: off for FP32 engines, on for the others. Returns the setting."""
        allowed = precision_record(precision).tf32
        if not allowed:
            config.clear_flag(self.module.BuilderFlag.TF32)
        return allowed

    def hardware_compatibility(self, config) -> str | None:
        """The build's hardware-compatibility level (``NONE``: this GPU model only), where the release has one
        (TensorRT for RTX builds for a compute capability and has none)."""
        if self.library == RTX:
            return None
        level = getattr(config, "hardware_compatibility_level", None)
        return None if level is None else str(getattr(level, "name", level))

    def set_target(self, config, target: str) -> None:
        """RTX targets compile for a named compute capability; native builds for the GPU present."""
        if target == "native":
            return
        if self.library != RTX:
            raise BackendUnavailableError(f"target {target} needs TensorRT for RTX; {INSTALL_HINT}")
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(self.module.ComputeCapability, RTX_TARGETS[target]), 0)


def _import(library: str) -> TensorRT | None:
    try:
        module = importlib.import_module(MODULES[library])
        module.Builder  # noqa: B018  (the index's placeholder package imports but has no API)
    except Exception:  # ImportError, or a placeholder/broken install raising at import time
        return None
    return TensorRT(library, module)


def load_tensorrt(library: str | None = None) -> TensorRT:
    """``library`` ("tensorrt" or "tensorrt_rtx"), or the full TensorRT if present, else TensorRT for RTX."""
    for name in ([library] if library else [FULL, RTX]):
        if name not in MODULES:
            raise BackendUnavailableError(f"unknown TensorRT library {name!r}")
        found = _import(name)
        if found is not None:
            return found
    wanted = MODULES[library] if library else "tensorrt or tensorrt_rtx_bindings"
    raise BackendUnavailableError(f"no TensorRT library ({wanted}) is installed: {INSTALL_HINT}")


def native_build_problem(library: str, compute_capability: str) -> str | None:
    """Why ``library`` cannot build (or run) an engine for this GPU, or None.

    TensorRT for RTX compiles only for the compute capabilities of its ``ComputeCapability`` enum (Turing,
    Ampere, Ada, consumer Blackwell): no Hopper (H100/H200 are 9.0), no data-center Blackwell (10.0), no
    Jetson (8.7). On those GPUs only the full TensorRT builds engines."""
    if library != RTX:
        return None
    sm = "SM" + compute_capability.replace(".", "")
    if sm in RTX_TARGETS.values():
        return None
    return (f"TensorRT for RTX has no target for compute capability {compute_capability} (it builds for "
            f"{', '.join(RTX_TARGETS.values())}); this GPU needs the full TensorRT: {INSTALL_HINT}")


def library_for_target(target: str) -> str | None:
    if target not in TARGETS:
        raise BackendUnavailableError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    return RTX if target in RTX_TARGETS else None
