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


def gpu_record() -> dict | None:
    """nvidia-smi's view of GPU 0 (data-center and desktop); Jetson power mode and clocks where present."""
    fields = "name,memory.total,driver_version,compute_cap,clocks.max.sm,clocks.sm,power.limit"
    line = command_output("nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits")
    record = None
    if line:
        values = [v.strip() for v in line.splitlines()[0].split(",")]
        record = dict(zip(["name", "memory_mib", "driver", "compute_capability", "max_sm_clock_mhz",
                           "sm_clock_mhz", "power_limit_w"], values))
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
