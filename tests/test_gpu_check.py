"""scripts/gpu-check: here (no GPU) it says so and exits 0; its steps and the CUDA self-test are exercised on a
simulated GPU (a NumPy CUDA with real copy and capture semantics, PyTorch's CUDA path on the CPU)."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from csfm_edge.errors import BackendUnavailableError
from csfm_edge.runtime.cuda_selftest import self_test

ROOT = Path(__file__).resolve().parents[1]


class NumpyCuda:
    """The CUDA layer's interface over host memory: copies happen at once, or are recorded while capturing and
    replayed by launch_graph; synchronize during a capture invalidates it, as CUDA does."""

    name = "cuda-python"

    def __init__(self, stale_replay: bool = False, leak: bool = False):
        self.stale_replay, self.leak = stale_replay, leak
        self.buffers: dict[int, np.ndarray] = {}
        self.device_bytes = 0
        self.capturing: list | None = None
        self.invalid = False
        self.clock = 0.0

    def activate(self):
        return contextlib.nullcontext()

    def gpu(self):
        from csfm_edge.runtime.cuda import GpuInfo

        return GpuInfo("NVIDIA H200", "9.0", 141 << 30, 132)

    def pci_bus_id(self):
        return "00000000:C1:00.0"

    def memory_info(self):
        return (80 << 30) - self.device_bytes, 80 << 30

    def stream(self):
        return 1

    def _alloc(self, nbytes):
        array = np.zeros(nbytes, np.uint8)
        self.buffers[array.ctypes.data] = array
        return array.ctypes.data

    def device_alloc(self, nbytes):
        self.device_bytes += nbytes
        return self._alloc(nbytes)

    def host_alloc(self, nbytes):
        return self._alloc(nbytes)

    def _copy(self, dst, src, nbytes):
        if self.capturing is None:
            ctypes.memmove(dst, src, nbytes)
        elif self.stale_replay:  # a broken capture: the data, not the copy, goes into the graph
            frozen = bytes((ctypes.c_uint8 * nbytes).from_address(src))
            self.capturing.append(lambda: ctypes.memmove(dst, frozen, nbytes))
        else:
            self.capturing.append(lambda: ctypes.memmove(dst, src, nbytes))

    copy_to_device = copy_to_host = lambda self, dst, src, nbytes, stream: self._copy(dst, src, nbytes)

    def synchronize(self, stream):
        if self.capturing is not None:
            self.invalid = True
            raise BackendUnavailableError("CUDA stream synchronize failed: operation not permitted when stream is "
                                          "capturing")

    def begin_capture(self, stream):
        self.capturing, self.invalid = [], False
        return True

    def end_capture(self, stream, enqueued=True):
        ops, self.capturing = self.capturing, None
        return None if self.invalid or not enqueued else ops

    def launch_graph(self, graph, stream):
        for op in graph:
            op()

    def event(self):
        return [0.0]

    def record(self, event, stream):
        self.clock += 2.5
        event[0] = self.clock

    def elapsed_ms(self, start, end):
        return end[0] - start[0]

    def last_error(self):
        return None

    def free(self, device, host, stream=None, graphs=(), events=()):
        if not self.leak:
            self.device_bytes = 0
        for address in (*device, *host):
            del self.buffers[address]


def test_cuda_self_test_passes_on_a_correct_layer():
    api = NumpyCuda()
    parts = {p.name: p for p in self_test(api, nbytes=1 << 20)}
    assert [p.status for p in parts.values()] == ["pass"] * 5, parts
    assert "replayed 3 times" in parts["graph capture and replay"].detail
    assert api.buffers == {} and api.device_bytes == 0


@pytest.mark.parametrize(("fault", "part", "message"), [
    ({"stale_replay": True}, "graph capture and replay", "replay 1 did not carry the changed input through"),
    ({"leak": True}, "released", "MiB after"),
])
def test_cuda_self_test_finds_a_faulty_layer(fault, part, message):
    parts = {p.name: p for p in self_test(NumpyCuda(**fault), nbytes=32 << 20)}
    assert parts[part].status == "fail" and message in parts[part].detail
    assert sum(p.status == "fail" for p in parts.values()) == 1


def test_cuda_self_test_skips_capture_without_cuda_python():
    api = NumpyCuda()
    api.name = "pycuda"
    parts = {p.name: p for p in self_test(api, nbytes=1 << 20)}
    assert parts["graph capture and replay"].status == "skipped" and "pycuda" in parts["failed capture"].detail
    assert parts["round trips"].status == parts["released"].status == "pass"


def test_gpu_presence():
    from csfm_edge.gpucheck import gpu_presence

    assert gpu_presence("GPU 0: NVIDIA H200 (UUID: GPU-1)", "no CUDA binding for Python: pip ...", False, False) is None
    assert gpu_presence(None, None, False, False) is None and gpu_presence(None, "x", True, False) is None
    assert gpu_presence(None, "x", False, True) is None  # a Jetson without nvidia-smi
    absent = gpu_presence(None, "no CUDA binding for Python (cuda-python or PyCUDA) is installed: pip x", False, False)
    assert absent.startswith("no NVIDIA GPU on this machine") and "pip" not in absent


def test_gpu_check_here_says_there_is_no_gpu(tmp_path):
    out = tmp_path / "report"
    done = subprocess.run([str(ROOT / "scripts" / "gpu-check"), "--out", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "gpu-check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert report["gpu"] is False and report["passed"] and report["summary"].startswith("no NVIDIA GPU")
    assert steps["machine"]["status"] == "pass" and "TensorRT" in steps["machine"]["detail"]
    assert len(steps) == 9 and all(s["status"] == "skipped" and s["detail"] == "no NVIDIA GPU on this machine"
                                   for name, s in steps.items() if name != "machine")
    assert "| cuda layer self-test | skipped |" in (out / "gpu-check.md").read_text()
    assert "gpu-check: no NVIDIA GPU on this machine" in done.stdout
    again = subprocess.run([str(ROOT / "scripts" / "gpu-check"), "--out", str(out)], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 1 and "already exists: pass --force" in again.stderr
    (tmp_path / "file").write_text("mine")
    refused = subprocess.run([str(ROOT / "scripts" / "gpu-check"), "--out", str(tmp_path / "file")],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "is a file" in refused.stderr and (tmp_path / "file").read_text() == "mine"


@pytest.mark.slow
def test_gpu_check_steps_on_a_simulated_gpu(tmp_path, tiny_artifacts, data_dir, monkeypatch):
    """Every step's own code, with the GPU simulated: the NumPy CUDA above, PyTorch's CUDA path run on the CPU,
    TensorRT hidden (its step skips with doctor's reason), a one-shape benchmark."""
    from csfm_edge import gpucheck
    from csfm_edge.runtime import cuda, tensorrt_lib
    from csfm_edge.runtime.backends import torch_ref

    def cpu_as_cuda(path, manifest, options, *, model=None):
        backend = torch_ref.TorchBackend(path, manifest, dataclasses.replace(options, provider=None), model=model)
        if options.provider == "cuda":  # what the GPU class has, on the CPU
            backend.on_gpu = backend.device_timing = True
            backend.execute_only = lambda: None
            backend.gpu_compute_ms = lambda: 1.0
            backend.describe = lambda d=backend.describe: {**d(), "gpu": "NVIDIA H200"}
        return backend

    monkeypatch.setattr(cuda, "cuda_api", lambda: NumpyCuda())
    monkeypatch.setattr(tensorrt_lib, "_import", lambda library: None)
    monkeypatch.setattr(torch_ref, "open_reference", cpu_as_cuda)
    monkeypatch.setattr(torch_ref, "check_device", lambda options: None)  # fp16 autocast on the CPU here
    monkeypatch.setattr(gpucheck, "_torch_cuda", lambda: True)
    monkeypatch.setattr(gpucheck, "gpu_presence", lambda *facts: None)
    monkeypatch.setattr(gpucheck, "BENCH_BATCHES", [1])
    monkeypatch.setattr(gpucheck, "BENCH_LEAD_SETS", ["ii+ppg"])
    monkeypatch.setattr(gpucheck, "WARD_BEDS", 8)
    monkeypatch.setattr(gpucheck, "WARD_SECONDS", 2.0)
    monkeypatch.setattr(gpucheck, "_export", lambda check: check.artifacts.update(
        {k: tiny_artifacts[k] for k in ("fp32", "fp16")}) or "reused the test's export")
    report = gpucheck.run_gpu_check(tmp_path, data_dir, lambda message: None)
    steps = {s["name"]: s for s in report["steps"]}
    assert report["gpu"] and report["passed"], [s for s in report["steps"] if s["status"] == "fail"]
    cuda_layer = steps["cuda layer self-test"]
    assert cuda_layer["status"] == "pass" and len(cuda_layer["data"]["parts"]) == 5
    assert steps["doctor"]["status"] == "pass" and steps["doctor"]["data"]["passed"]
    parity = steps["pytorch on cuda parity"]
    assert parity["status"] == "pass" and parity["data"]["fp32"]["max_abs"] < 1e-4
    assert parity["data"]["bf16"]["min_cosine"] > 0.99 and parity["data"]["bf16"]["passed"]
    tensorrt = steps["tensorrt build, parity"]
    assert tensorrt["status"] == "skipped" and "no TensorRT" in tensorrt["detail"]  # an H200 without TensorRT
    assert steps["machine"]["data"]["doctor"]["gpu"]["name"] == "NVIDIA H200"
    rows = steps["gpu benchmark"]["data"]["rows"]
    assert len(rows) == 2 and all(r["gpu_compute_ms"] == 1.0 and r["accuracy_min_cosine"] > 0.99 for r in rows)
    assert "## GPU benchmark" in (tmp_path / "gpu-check.md").read_text()
    ward = steps["ward gateway"]["data"]
    assert ward["backend"] == "torch" and ward["windows_per_s"] > 0 and ward["batch1_windows_per_s"] > 0
