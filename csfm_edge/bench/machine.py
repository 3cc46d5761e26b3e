"""What machine a result came from, recorded with every benchmark so results compare across machines."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from csfm_edge import __version__
from csfm_edge.environment import installed_versions
from csfm_edge.errors import CsfmError
from csfm_edge.runtime.cuda import jetson_module


def command_output(*cmd: str) -> str | None:
    """A tool's stdout, or None where it is missing, fails or hangs (nvidia-smi, nvpmodel, git)."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def cpu_peak_gflops(seconds: float = 1.0, size: int = 2048) -> float:
    """The CPU's float32 peak as this process sees it: a large matrix product, timed in the same run."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((size, size), np.float32), rng.standard_normal((size, size), np.float32)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def machine_record() -> dict:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    return {
        "hostname": platform.node(), "cpu": cpu_model(), "cores": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1) if memory else None, "gpu": gpu_record(),
        "os": platform.platform(), "python": platform.python_version(),
        "packages": installed_versions(), "csfm_edge": __version__,
        "git_commit": git_commit(), "cpu_peak_gflops_fp32": round(cpu_peak_gflops(), 1),
    }
