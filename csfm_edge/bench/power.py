"""Board power, energy and GPU memory while a benchmark case runs: NVML on data-center and desktop GPUs,
``tegrastats`` on Jetson (where NVML initialises but reports "Not Supported"); None where neither works.

The parsing and selection decisions are plain functions, tested on real output lines.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time

import numpy as np

# "NAME 1234mW/1234mW" (JetPack 5/6) or "NAME 1234/1234" (JetPack 4): current/average of one rail
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?\b")
# Rails that measure the whole board's input: the total when present (see board_power_w).
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


def tegrastats_rails(line: str) -> dict[str, int]:
    """Every power rail of one tegrastats line, in mW (current value)."""
    return {name: int(now) for name, now, _ in _RAIL.findall(line) if not name.startswith(("RAM", "SWAP", "EMC"))}


def board_power_w(rails: dict[str, int]) -> float | None:
    """The board's power from its rails: the input rail where the module has one (Orin NX/Nano ``VDD_IN``,
    Nano/TX2 ``POM_5V_IN``, which already include the others), else the sum of all rails (AGX Orin:
    ``VDD_GPU_SOC``, ``VDD_CPU_CV``, ``VIN_SYS_5V0``, ...; AGX Xavier: ``GPU``, ``CPU``, ``SOC``, ``CV``, ...)."""
    for name in INPUT_RAILS:
        if name in rails:
            return rails[name] / 1000.0
    return sum(rails.values()) / 1000.0 if rails else None


def nvml_device(visible: str | None) -> tuple[str, str | int]:
    """Which NVML device is the GPU this process computes on: NVML counts in PCI order and ignores
    ``CUDA_VISIBLE_DEVICES``, so its first entry (an index or a ``GPU-``/``MIG-`` UUID) is followed."""
    first = (visible or "").split(",")[0].strip()
    if first.startswith(("GPU-", "MIG-")):
        return "uuid", first
    return "index", int(first) if first.isdigit() else 0


def _nvml_handle(pynvml):
    """NVML's handle of the GPU CUDA computes on: by its PCI bus id where the CUDA layer can say, else by
    ``CUDA_VISIBLE_DEVICES`` (right where CUDA_DEVICE_ORDER=PCI_BUS_ID or one GPU is visible)."""
    try:
        from csfm_edge.runtime.cuda import cuda_api

        return pynvml.nvmlDeviceGetHandleByPciBusId(cuda_api().pci_bus_id())
    except Exception:  # no CUDA binding here: fall back to the visible-devices rule
        kind, which = nvml_device(os.environ.get("CUDA_VISIBLE_DEVICES"))
        return pynvml.nvmlDeviceGetHandleByUUID(which) if kind == "uuid" else pynvml.nvmlDeviceGetHandleByIndex(which)


class PowerSampler:
    """Average power, energy and peak GPU memory over a timed block (``with PowerSampler() as power: ...``)."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.samples: list[float] = []
        self.peak_gpu_memory_mib: float | None = None
        self.energy_j: float | None = None
        self.source: str | None = None
        self._nvml = self._handle = None
        self._tegrastats: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = _nvml_handle(pynvml)
            pynvml.nvmlDeviceGetPowerUsage(handle)  # Jetson: initialises, then "Not Supported" here
            self._nvml, self._handle, self.source = pynvml, handle, "nvml"
        except Exception:  # no pynvml, no driver, no GPU, or not supported: Jetson's tool, else nothing
            if shutil.which("tegrastats"):
                self.source = "tegrastats"

    def _energy_mj(self) -> float | None:
        try:  # Volta and later: a counter since the driver loaded (NVML's power reading is a 1-s average)
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:
            return None

    def __enter__(self) -> PowerSampler:
        self._started = time.perf_counter()
        if self.source == "nvml":
            self._energy_start = self._energy_mj()
            self._thread = threading.Thread(target=self._poll, daemon=True)
        elif self.source == "tegrastats":
            interval_ms = max(int(self.interval_s * 1000), 10)
            self._tegrastats = subprocess.Popen(["tegrastats", "--interval", str(interval_ms)],
                                                stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._follow_tegrastats, daemon=True)
        if self._thread is not None:
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0)
                used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20  # device-wide, all processes
                self.peak_gpu_memory_mib = max(used, self.peak_gpu_memory_mib or 0.0)
            except Exception:  # a reading the device stops supporting ends the sampling, not the benchmark
                return
            time.sleep(self.interval_s)

    def _follow_tegrastats(self) -> None:
        for line in self._tegrastats.stdout:
            watts = board_power_w(tegrastats_rails(line))
            if watts is not None:
                self.samples.append(watts)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        seconds = time.perf_counter() - self._started
        if self._tegrastats is not None:
            self._tegrastats.terminate()
            self._tegrastats.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.source == "nvml" and self._energy_start is not None:
            end = self._energy_mj()
            self.energy_j = None if end is None else (end - self._energy_start) / 1000.0
        if self.energy_j is None and self.samples:
            self.energy_j = float(np.mean(self.samples)) * seconds

    def device_pci_bus_id(self) -> str | None:
        """The PCI bus id of the GPU NVML reads (to show it is the one CUDA computes on); None off NVML."""
        if self.source != "nvml":
            return None
        from csfm_edge.runtime.cuda import normal_pci_bus_id

        bus_id = self._nvml.nvmlDeviceGetPciInfo(self._handle).busId
        return normal_pci_bus_id(bus_id.decode() if isinstance(bus_id, bytes) else str(bus_id))

    @property
    def average_w(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None
