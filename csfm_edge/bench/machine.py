"""What machine a result came from, recorded with every benchmark so results compare across machines."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from csfm_edge import __version__
from csfm_edge.bench.timing import in_own_process
from csfm_edge.environment import installed_versions
from csfm_edge.errors import CsfmError
from csfm_edge.runtime.cuda import jetson_module
from csfm_edge.runtime.tuned import cpu_flags, cpu_model


def command_output(*cmd: str) -> str | None:
    """A tool's stdout, or None where it is missing, fails or hangs (nvidia-smi, nvpmodel, git)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


GPU_FIELDS = "name,memory.total,driver_version,compute_cap,clocks.max.sm,clocks.sm,power.limit,pci.bus_id"
GPU_KEYS = ["name", "memory_mib", "driver", "compute_capability", "max_sm_clock_mhz", "sm_clock_mhz",
            "power_limit_w", "pci_bus_id"]


def smi_device_id(pci_bus_id: str | None, visible: str | None) -> str | None:
    """``nvidia-smi --id`` for the GPU CUDA computes on: its PCI bus id where the CUDA layer gives one, else
    the first ``CUDA_VISIBLE_DEVICES`` entry that nvidia-smi understands (a ``GPU-`` UUID; an index only
    when it is the sole one, since CUDA orders fastest first and nvidia-smi by PCI bus); None when
    unknown. nvidia-smi's first GPU is not CUDA's device 0 under either rule."""
    if pci_bus_id:
        return pci_bus_id
    entries = [e.strip() for e in (visible or "").split(",") if e.strip()]
    if entries and entries[0].startswith("GPU-"):
        return entries[0]
    return None


def _cuda_pci_bus_id() -> str | None:
    try:
        from csfm_edge.runtime.cuda import cuda_api

        return cuda_api().pci_bus_id()
    except CsfmError:
        return None


def parse_gpu_line(line: str, which: str) -> dict:
    """One ``--query-gpu`` CSV line as a record; ``which`` says how the GPU was chosen."""
    values = [v.strip() for v in line.split(",")]
    return {**dict(zip(GPU_KEYS, values)), "selected_by": which}


def gpu_record() -> dict | None:
    """nvidia-smi's view of the GPU CUDA computes on (data-center and desktop); Jetson power mode and clocks
    where present. Where that GPU cannot be identified, the first one, and the record says so."""
    device = smi_device_id(_cuda_pci_bus_id(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    query = [f"--query-gpu={GPU_FIELDS}", "--format=csv,noheader,nounits"]
    output = command_output("nvidia-smi", *([f"--id={device}"] if device else []), *query)
    record = None
    if output:
        which = f"CUDA's device ({device})" if device else "nvidia-smi's first GPU (CUDA's device not identified)"
        record = parse_gpu_line(output.splitlines()[0], which)
    if Path("/etc/nv_tegra_release").exists():  # Jetson: record the module and how it was clocked
        record = record or {}
        record["nvidia_smi_name"] = record.get("name")  # JetPack 6's nvidia-smi says "Orin (nvgpu)"
        record["name"] = jetson_module() or "Jetson"  # "NVIDIA Jetson AGX Orin Developer Kit": finds its peak
        record["nvpmodel"] = command_output("nvpmodel", "-q")
        record["jetson_clocks"] = command_output("jetson_clocks", "--show")
    return record


def git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    return command_output("git", "-C", str(root), "rev-parse", "--short", "HEAD") if (root / ".git").exists() else None


def _best_rate(product: Callable[[], object], size: int, seconds: float, windows: int = 3) -> float:
    """TFLOP/s (TOP/s) of a ``size``-cubed product: the best of ``windows`` timed windows (the machine's
    limit is what it reaches when neighbours are quiet, so the fastest window, not the mean)."""
    product()
    best = 0.0
    for _ in range(windows):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / windows:
            product()
            count += 1
        best = max(best, 2 * size**3 * count / (time.perf_counter() - start) / 1e12)
    return best


def measure_matmul_peaks(seconds: float = 1.0, size: int = 2048) -> dict[str, float | None]:
    """This CPU's matrix-product limits in TFLOP/s (TOP/s for int8): fp32 (NumPy's BLAS), bf16 (PyTorch's
    oneDNN: AMX or AVX512-BF16 where present) and int8 x int8 -> int32 (``torch._int_mm``: AMX-INT8/VNNI),
    None where PyTorch is absent. Run it in a process of its own (see :func:`cpu_peaks`)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((size, size), np.float32), rng.standard_normal((size, size), np.float32)
    peaks: dict[str, float | None] = {"fp32": _best_rate(lambda: a @ b, size, seconds), "bf16": None, "int8": None}
    try:
        import torch
    except ImportError:
        return peaks
    x, y = torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16()
    peaks["bf16"] = _best_rate(lambda: x @ y, size, seconds)
    i, j = (torch.randint(-127, 128, (size, size), dtype=torch.int8) for _ in range(2))
    peaks["int8"] = _best_rate(lambda: torch._int_mm(i, j), size, seconds)
    return peaks


def cpu_peaks(seconds: float = 1.0) -> dict[str, float | None]:
    """:func:`measure_matmul_peaks` in a fresh process, so its thread pools leave the benchmark's alone."""
    result = in_own_process(measure_matmul_peaks, seconds)
    return {k: None if v is None else round(v, 3) for k, v in result.items() if k != "error"}


def machine_record() -> dict:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    return {
        "hostname": platform.node(), "cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1) if memory else None, "gpu": gpu_record(),
        "os": platform.platform(), "python": platform.python_version(),
        "packages": installed_versions(), "csfm_edge": __version__,
        "git_commit": git_commit(), "cpu_peak_tflops": cpu_peaks(),
    }
