"""Benchmark library: FLOP formula, sweep JSON written case by case, skips, and the report."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from conftest import quiet
from torch.utils.flop_counter import FlopCounterMode

from csfm_edge.bench.flops import published_peak, window_flops
from csfm_edge.bench.power import board_power_w, nvml_device, tegrastats_rails
from csfm_edge.bench.report import build_report
from csfm_edge.bench.runner import BenchConfig, run_bench
from csfm_edge.bench.timing import calls_per_second, measure
from csfm_edge.config import SIZES
from csfm_edge.model import build
from csfm_edge.runtime.backends import BackendOptions


@pytest.mark.parametrize(("size", "channels", "time"), [("tiny", 2, 2500), ("tiny", 12, 1250), ("base", 1, 2500)])
def test_flop_formula_matches_pytorch_counter(size, channels, time):
    model = build(size, seed=0)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, channels, time), torch.arange(channels))
    assert window_flops(SIZES[size], channels, time) == counter.get_total_flops()


def test_published_peaks_lookup():
    assert published_peak("NVIDIA H100 80GB HBM3", "fp16") == 989.0  # how nvidia-smi names the SXM part
    assert published_peak("NVIDIA H100 PCIe", "int8") == 1513.0
    assert published_peak("NVIDIA L4", "fp16") == 121.0 and published_peak("NVIDIA L40S", "fp16") == 362.0
    assert published_peak("NVIDIA RTX A6000", "fp16") is None
    assert published_peak("NVIDIA Jetson AGX Orin 64GB", "int8") == 85.0
    assert published_peak(None, "fp16") is None


def tegrastats_power_w(line: str) -> float | None:
    return board_power_w(tegrastats_rails(line))


def test_tegrastats_power_lines():
    """Rail layouts as tegrastats prints them on each module family (see rbonghi/jetson_stats issues #51 and
    #344: POM_5V_IN/VDD_IN is the whole input; AGX Xavier and AGX Orin have no input rail, their rails add up)."""
    orin = ("RAM 2448/30536MB (lfb 6704x4MB) CPU [1%@729,0%@729] GR3D_FREQ 0% cpu@44.5C VDD_GPU_SOC 3064mW/3064mW "
            "VDD_CPU_CV 408mW/408mW VIN_SYS_5V0 2520mW/2520mW VDD_IN 5012mW/5012mW")
    assert tegrastats_power_w(orin) == 5.012
    assert tegrastats_power_w("RAM 1/2MB POM_5V_IN 4805/4805 POM_5V_GPU 0/0") == 4.805
    assert tegrastats_power_w("RAM 1/2MB CPU [1%@729]") is None
    agx_orin = ("RAM 3950/62800MB (lfb 14590x4MB) SWAP 0/31400MB (cached 0MB) CPU [0%@729,off,off] EMC_FREQ 0%@2133 "
                "GR3D_FREQ 0%@[305,305] VIC_FREQ 729 cpu@43.75C soc2@40.093C VDD_GPU_SOC 3191mW/3191mW "
                "VDD_CPU_CV 797mW/797mW VIN_SYS_5V0 4323mW/4323mW NC 0mW/0mW VDDQ_VDD2_1V8AO 703mW/703mW")
    assert tegrastats_rails(agx_orin)["VIN_SYS_5V0"] == 4323 and "RAM" not in tegrastats_rails(agx_orin)
    assert tegrastats_power_w(agx_orin) == (3191 + 797 + 4323 + 0 + 703) / 1000
    orin_nano = ("RAM 2998/7620MB (lfb 3x4MB) CPU [2%@1510,1%@1510] GR3D_FREQ 0% cpu@47.5C VDD_IN 4932mW/4932mW "
                 "VDD_CPU_GPU_CV 517mW/517mW VDD_SOC 1433mW/1433mW")
    assert tegrastats_power_w(orin_nano) == 4.932
    agx_xavier = "RAM 1/2MB GPU 0/0 CPU 311/311 SOC 1243/1243 CV 0/0 VDDRQ 155/155 SYS5V 2013/2013"
    assert tegrastats_power_w(agx_xavier) == (311 + 1243 + 155 + 2013) / 1000


def test_nvml_follows_cuda_visible_devices():
    assert nvml_device(None) == ("index", 0) and nvml_device("") == ("index", 0)
    assert nvml_device("2,3") == ("index", 2)
    uuid = "GPU-5c6a3f2e-1c8b-9d7e-0a1b-2c3d4e5f6a7b"
    assert nvml_device(uuid) == ("uuid", uuid)


def test_measure_reports_percentiles():
    latency = measure(lambda: sum(range(1000)), warmup_s=0.01, duration_s=0.05, min_iterations=20)
    assert latency.iterations >= 20 and latency.min_ms <= latency.median_ms <= latency.p90_ms <= latency.p99_ms


def test_sweep_writes_json_per_case_and_skips_what_cannot_run(tiny_artifacts, data_dir, tmp_path):
    out = tmp_path / "cpu.json"
    broken = tmp_path / "csfm-tiny.fp32.onnx"  # no manifest beside it: must be skipped, not crash the sweep
    broken.write_bytes(b"not a graph")
    record = run_bench(BenchConfig([str(tiny_artifacts["int8"]), str(broken), "torch:tiny"], batches=[1, 2],
                                   lead_sets=["ii+ppg"], warmup_s=0.0, duration_s=0.2, data_dir=data_dir, json_out=out,
                                   options=[BackendOptions(provider="cpu")], progress=quiet))
    saved = json.loads(out.read_text())
    assert saved["results"] == json.loads(json.dumps(record["results"], default=float))
    assert len(saved["results"]) == 4 and saved["skipped"][0]["target"] == str(broken)
    assert "has no manifest" in saved["skipped"][0]["reason"]
    machine = saved["machine"]
    assert machine["cores"] >= 1 and machine["cpu_peak_tflops"]["fp32"] > 0 and "onnxruntime" in machine["packages"]
    first = saved["results"][0]
    assert first["precision"] == "int8" and first["backend"]["provider"] == "CPUExecutionProvider"
    assert first["accuracy_min_cosine_vs_fp32"] >= 0.99
    assert first["flops_per_window"] == window_flops(SIZES["tiny"], 2, 2500)
    assert 0 < first["preprocess_share"] < 1 and first["throughput"]["windows_per_s"] > 0
    torch_row = saved["results"][-1]
    assert torch_row["accuracy_min_cosine_vs_fp32"] == pytest.approx(1.0, abs=1e-6)
    assert torch_row["fraction_of_peak"] is not None and torch_row["peak_source"] == "measured CPU fp32 matmul"
    assert first["peak_source"] == "measured CPU int8 matmul" and first["fraction_of_peak"] > 0

    report_dir = tmp_path / "report"
    written = build_report([out, out], report_dir)
    markdown = (report_dir / "report.md").read_text()
    assert "## CSFM tiny" in markdown and "csfm-tiny.int8.onnx @cpu" in markdown
    assert f"| {machine['cpu']} |" in markdown  # the machines table: CPU, ISA flags and measured limits
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(pngs) == 3 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in pngs)


def test_report_refuses_files_that_are_not_results(tmp_path):
    from csfm_edge.errors import CsfmError

    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CsfmError, match="not a csfm-edge bench JSON"):
        build_report([tmp_path / "x.json"], tmp_path / "out")
    assert not np.any([p.suffix == ".png" for p in tmp_path.glob("out/*")])


def test_calls_per_second_counts_overlapping_callers_and_calls_longer_than_the_duration():
    """Two callers of a 0.3-s call (sleeping: no CPU, so load does not move it) measured for 0.1 s: each still
    makes a timed call after its warm-up one, and the two overlap: about 2 / 0.3 s, not 1 / 0.3 s or 0."""
    rate = calls_per_second(lambda: time.sleep(0.3), callers=2, warmup_s=0.05, duration_s=0.1)
    assert 2 / 0.3 * 0.7 < rate < 2 / 0.3 * 1.05, rate
