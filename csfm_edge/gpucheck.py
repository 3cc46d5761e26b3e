"""``scripts/gpu-check``: the one command for a user's first NVIDIA machine (Jetson or data-center).

It runs with what the machine has (PyTorch, NumPy, SciPy, ONNX Runtime, cuda-bindings, NVML; TensorRT and
onnx where present), from a checkout, without network, in a few minutes, and writes ``gpu-check.json`` and
``gpu-check.md``. Every step passes, fails with a reason or is skipped with a reason; each is the library's
own code (the machine record, the CUDA layer, the power sampler, export, doctor, the PyTorch reference on
CUDA, TensorRT build and verification, the benchmark runner), so what passes here is what users run.
Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from csfm_edge import __version__
from csfm_edge.errors import CsfmError, InputFileError, OutputError
from csfm_edge.fileio import check_output, write_atomically

BUDGET_S = 7 * 60  # the whole check stays under 8 minutes: a step that would start later is skipped
TORCH_AUTOCASTS = {"fp32": None, "fp16": "fp16", "bf16": "bf16"}
BENCH_BATCHES = [1, 8, 64]
BENCH_LEAD_SETS = ["ii+ppg", "12lead"]
WARD_BEDS, WARD_SECONDS = 256, 5.0


class Skip(Exception):
    """A step that cannot run on this machine; the message says why."""


@dataclass
class Step:
    name: str
    status: str  # "pass", "fail" or "skipped"
    detail: str
    seconds: float = 0.0
    data: dict = field(default_factory=dict)


@dataclass
class GpuCheck:
    """The steps run so far and what later steps need from earlier ones."""

    out: Path
    data_dir: Path | None
    say: Callable[[str], None]
    steps: list[Step] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    artifacts: dict[str, Path] = field(default_factory=dict)

    def run(self, name: str, step: Callable[[], tuple[str, dict] | str]) -> Step:
        """Run one step: its return is the pass detail (and data); Skip skips it; any error fails it."""
        begun = time.perf_counter()
        if begun - self.started > BUDGET_S:
            result = Step(name, "skipped", f"time budget of {BUDGET_S // 60} min used up by the steps before")
        else:
            self.say(f"[gpu-check] {name} ...")
            try:
                value = step()
                detail, data = value if isinstance(value, tuple) else (value, {})
                result = Step(name, "pass", detail, data=data)
            except Skip as skip:
                result = Step(name, "skipped", str(skip))
            except CsfmError as exc:
                result = Step(name, "fail", str(exc).splitlines()[0])
            except Exception as exc:  # a defect, not a machine fact: the report keeps where it happened
                where = traceback.extract_tb(exc.__traceback__)[-1]
                result = Step(name, "fail", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                                            f"({Path(where.filename).name}:{where.lineno})")
        result.seconds = round(time.perf_counter() - begun, 1)
        self.steps.append(result)
        self.say(f"[gpu-check] {result.status:7} {name}: {result.detail}")
        return result

    @property
    def failed(self) -> bool:
        return any(s.status == "fail" for s in self.steps)


# --- what the machine has -------------------------------------------------------------------------


NO_GPU = "no NVIDIA GPU on this machine"


def gpu_presence(nvidia_smi: str | None, cuda_error: str | None, torch_cuda: bool, tegra: bool) -> str | None:
    """Why this machine has no NVIDIA GPU to check, or None when it has one (seen by nvidia-smi, the CUDA
    binding, PyTorch, or a Jetson's release file). A GPU seen by one but not usable by another is a GPU:
    the steps then fail with what is missing, rather than the machine being called GPU-less."""
    if nvidia_smi or cuda_error is None or torch_cuda or tegra:
        return None
    return f"{NO_GPU} (nvidia-smi lists none; CUDA from Python: {cuda_error.split(':')[0]}; PyTorch sees none)"


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _machine() -> tuple[str, dict]:
    from csfm_edge.bench.machine import machine_record
    from csfm_edge.doctor import machine

    record = {"bench": machine_record(), "doctor": machine()}
    gpu = record["doctor"]["gpu"]
    trt = record["doctor"]["tensorrt"]
    detail = (f"{gpu.get('name', gpu.get('missing'))}"
              + (f" (compute {gpu['compute_capability']}, {gpu['cuda_api']})" if "name" in gpu else "")
              + f"; driver {(record['bench']['gpu'] or {}).get('driver', '-')}"
              + f"; TensorRT {trt.get('version', 'absent')}; torch {record['bench']['packages'].get('torch', '-')}")
    return detail, record


# --- the steps ------------------------------------------------------------------------------------


def _cuda_layer() -> tuple[str, dict]:
    from csfm_edge.runtime.cuda import cuda_api
    from csfm_edge.runtime.cuda_selftest import self_test

    api = cuda_api()
    parts = self_test(api)
    failed = [p for p in parts if p.status == "fail"]
    data = {"cuda_api": api.name, "parts": [asdict(p) for p in parts]}
    if failed:
        raise CsfmError("; ".join(f"{p.name}: {p.detail}" for p in failed))
    skipped = [p.name for p in parts if p.status == "skipped"]
    return (f"{api.name}: " + ", ".join(p.name for p in parts if p.status == "pass")
            + (f" (skipped: {', '.join(skipped)})" if skipped else "")), data


def _power() -> tuple[str, dict]:
    from csfm_edge.bench.power import PowerSampler

    sampler = PowerSampler()
    if sampler.source is None:
        raise Skip("neither NVML (pip install nvidia-ml-py) nor tegrastats can read this GPU's power")
    with sampler:
        _busy_gpu(2.0)
    data = {"source": sampler.source, "samples": len(sampler.samples), "average_w": sampler.average_w,
            "energy_j": sampler.energy_j, "peak_gpu_memory_mib": sampler.peak_gpu_memory_mib,
            "device": sampler.device_pci_bus_id()}
    if not sampler.samples:
        raise CsfmError(f"{sampler.source} gave no power reading in 2 s of GPU work")
    return (f"{sampler.source} on {data['device'] or 'the GPU'}: {len(sampler.samples)} samples, average "
            f"{sampler.average_w:.1f} W over 2 s of matrix products"), data


def _busy_gpu(seconds: float) -> None:
    """Matrix products on the GPU for ``seconds`` (so the power reading is of a working GPU)."""
    try:
        import torch
    except ImportError:
        time.sleep(seconds)
        return
    if not torch.cuda.is_available():
        time.sleep(seconds)
        return
    a = torch.randn(4096, 4096, device="cuda")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a @ a
        torch.cuda.synchronize()


def _export(check: GpuCheck) -> tuple[str, dict]:
    from csfm_edge.export.onnx_export import ExportRequest, export

    for module in ("torch", "onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise Skip(f"export needs {module}, which is not installed (pip install 'csfm-edge[export]')") from None
    folder = check.out / "artifacts"
    folder.mkdir(exist_ok=True)
    paths = export(ExportRequest(size="tiny", out_dir=folder, seed=0, precisions=("fp32", "fp16"),
                                 data_dir=check.data_dir, force=True, progress=lambda message: None))
    check.artifacts = {p.name.split(".")[1]: p for p in paths}
    return f"CSFM Tiny (seed 0) fp32 and fp16, verified against PyTorch: {', '.join(p.name for p in paths)}", \
        {"artifacts": [str(p) for p in paths]}


def _doctor(check: GpuCheck) -> tuple[str, dict]:
    from csfm_edge.doctor import run_doctor

    if not check.artifacts:
        raise Skip("no exported artifact to check (see the export step)")
    report = run_doctor(list(check.artifacts.values()), check.data_dir)
    data = report.to_dict()
    failed = [c for c in report.checks if c.status == "fail"]
    if failed:
        raise CsfmError("; ".join(f"{c.name}: {c.detail}" for c in failed))
    counts = {s: sum(c.status == s for c in report.checks) for s in ("pass", "skipped")}
    return f"{counts['pass']} checks passed, {counts['skipped']} skipped (see the JSON for each)", data


def _torch_parity(check: GpuCheck) -> tuple[str, dict]:
    """The PyTorch reference on CUDA against the same model on the CPU, on real windows, per autocast: FP32
    within the fp32 tolerance (TF32 off), FP16 and BF16 autocast within the fp16 one."""
    from csfm_edge.leads import lead_set
    from csfm_edge.metrics import compare
    from csfm_edge.model import build
    from csfm_edge.recordings.datasets import lead_set_batches, real_batch
    from csfm_edge.runtime.backends import BackendOptions, reference_backend
    from csfm_edge.spec import SPEC, precision_record

    batches = lead_set_batches(check.data_dir, batch=4)
    feeds = [SPEC.feed(real_batch(batches, np.asarray(lead_set(name)), 4), np.asarray(lead_set(name)))
             for name in BENCH_LEAD_SETS]
    cpu = reference_backend(build("tiny", seed=0))
    expected = np.concatenate([cpu.run(feed)[SPEC.features] for feed in feeds])
    results, problems = {}, []
    for label, autocast in TORCH_AUTOCASTS.items():
        try:
            backend = reference_backend(build("tiny", seed=0),
                                        BackendOptions(provider="cuda", reference=True, autocast=autocast))
        except CsfmError as exc:
            if autocast == "bf16" and "bfloat16" in str(exc):
                results[label] = {"skipped": str(exc)}
                continue
            raise
        try:
            got = np.concatenate([backend.run(feed)[SPEC.features] for feed in feeds])
        finally:
            backend.close()
        found = compare(expected, got, precision_record("fp32" if autocast is None else "fp16").tolerance)
        results[label] = {"max_abs": found.max_abs, "min_cosine": found.min_cosine, "passed": found.passed}
        if not found.passed:
            problems.append(f"{label}: {found.describe()}")
    if problems:
        raise CsfmError("PyTorch on CUDA differs from the CPU reference beyond tolerance: " + "; ".join(problems))
    shown = ", ".join(f"{k} max abs {v['max_abs']:.1e} / min cosine {v['min_cosine']:.6f}" if "skipped" not in v
                      else f"{k} skipped ({v['skipped']})" for k, v in results.items())
    return f"Tiny on real windows ({', '.join(BENCH_LEAD_SETS)}, batch 4) vs the CPU: {shown}", results


def _tensorrt(check: GpuCheck) -> tuple[str, dict]:
    from csfm_edge.doctor import engine_skip_reason, machine
    from csfm_edge.export.reverify import reverify
    from csfm_edge.export.tensorrt_build import BuildRequest, build_engine
    from csfm_edge.profiles import PRESETS

    record = machine()
    reason = engine_skip_reason("fp16", record["tensorrt"], record["gpu"])
    if reason is not None:
        raise Skip(reason)
    if "fp16" not in check.artifacts:
        raise Skip("no exported fp16 graph to build from (see the export step)")
    plan = build_engine(BuildRequest(check.artifacts["fp16"], check.out / "artifacts" / "csfm-tiny.fp16.plan",
                                     [PRESETS["bedside"], PRESETS["server"]], force=True,
                                     progress=lambda message: None))
    result = reverify(plan, None, check.data_dir)
    check.artifacts["plan"] = plan
    if not result.passed:
        raise CsfmError("engine misses its tolerance: " + "; ".join(result.failures()[:3]))
    worst = result.worst()
    return (f"{record['tensorrt']['library']} {record['tensorrt']['version']}: built {plan.name} (bedside + server "
            f"profiles), verified: max abs {worst.max_abs:.2e}, min cosine {worst.min_cosine:.6f}"), \
        {"plan": str(plan), "worst": asdict(worst)}


def _benchmark(check: GpuCheck) -> tuple[str, dict]:
    from csfm_edge.bench.runner import BenchConfig, run_bench
    from csfm_edge.runtime.backends import BackendOptions

    targets = ["torch:tiny", "torch-fast:tiny"] if _torch_cuda() else []  # on the GPU, as provider cuda asks
    if "plan" in check.artifacts:
        targets.append(str(check.artifacts["plan"]))
    if not targets:
        raise Skip("nothing runs on this GPU here: PyTorch has no CUDA and no TensorRT engine was built")
    record = run_bench(BenchConfig(targets, batches=BENCH_BATCHES, lead_sets=BENCH_LEAD_SETS, warmup_s=0.2,
                                   duration_s=0.5, data_dir=check.data_dir, options=[BackendOptions(provider="cuda")],
                                   json_out=check.out / "gpu-bench.json", progress=lambda message: None))
    rows = [bench_row(r) for r in record["results"]]
    if record["skipped"]:
        raise CsfmError("; ".join(f"{s['target']}: {s['reason']}" for s in record["skipped"]))
    return f"{len(rows)} cases ({', '.join(targets)}), GPU time between CUDA events", {"rows": rows}


def _ward(check: GpuCheck) -> tuple[str, dict]:
    """The ward gateway at saturation on the GPU (the TensorRT engine if one was built, else the PyTorch
    reference with FP16 autocast): windows/s it scores against one batch-1 call per window (one Stream per
    bed), on the vendored ECG as 256 beds. The issue's target is 3x the beds of one Stream per bed."""
    from csfm_edge.bench.ward import ward_saturation
    from csfm_edge.recordings.sample import sample_ecg
    from csfm_edge.runtime import Session
    from csfm_edge.runtime.backends import BackendOptions

    if "plan" in check.artifacts:
        session = Session.open(check.artifacts["plan"])
    elif _torch_cuda() and "fp32" in check.artifacts:
        session = Session.open(check.artifacts["fp32"], BackendOptions(provider="cuda", reference=True,
                                                                        autocast="fp16"))
    else:
        raise Skip("nothing runs on this GPU here: PyTorch has no CUDA and no TensorRT engine was built")
    with session:
        result = {"backend": session.info()["backend"],
                  **ward_saturation(session, sample_ecg(), beds=WARD_BEDS, seconds=WARD_SECONDS)}
    return (f"{result['beds']} beds, {result['backend']}: {result['windows_per_s']} windows/s scored at mean batch "
            f"{result['mean_batch']} vs {result['batch1_windows_per_s']} at batch 1: {result['gain']}x the beds of "
            "one Stream per bed at most"), result


def bench_row(result: dict) -> dict:
    """One benchmark case as a row of the report."""
    gpu = result.get("gpu_compute_ms") or {}
    return {"target": result["label"], "lead_set": result["lead_set"], "batch": result["batch"],
            "latency_ms": round(result["latency_ms"]["median_ms"], 3),
            "gpu_compute_ms": None if not gpu else round(gpu["median_ms"], 3),
            "windows_per_s": round(result["throughput"]["windows_per_s"], 1),
            "accuracy_min_cosine": result["accuracy_min_cosine_vs_fp32"]}


# --- the report -----------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    """The report for people: the steps, then the benchmark table."""
    lines = [f"# csfm-edge gpu-check ({report['finished']})", "",
             f"Machine: {report['summary']}", "", "| step | status | detail | s |", "|---|---|---|---|"]
    for step in report["steps"]:
        detail = step["detail"].replace("|", "/")
        lines.append(f"| {step['name']} | {step['status']} | {detail} | {step['seconds']} |")
    rows = next((s["data"].get("rows") for s in report["steps"] if s["name"] == "gpu benchmark"), None)
    if rows:
        lines += ["", "## GPU benchmark (median; GPU compute between CUDA events)", "",
                  "| target | leads | batch | latency ms | GPU compute ms | windows/s | min cosine vs fp32 |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            cosine = "-" if r["accuracy_min_cosine"] is None else f"{r['accuracy_min_cosine']:.6f}"
            lines.append(f"| {r['target']} | {r['lead_set']} | {r['batch']} | {r['latency_ms']} | "
                         f"{r['gpu_compute_ms'] if r['gpu_compute_ms'] is not None else '-'} | {r['windows_per_s']} | "
                         f"{cosine} |")
    lines += ["", "What each failure means: docs/first-gpu.md", ""]
    return "\n".join(lines)


def run_gpu_check(out: Path, data_dir: Path | None, say: Callable[[str], None]) -> dict:
    """Every step in order; returns the report (also written to ``out``)."""
    from csfm_edge.bench.machine import command_output
    from csfm_edge.runtime.cuda import cuda_api

    check = GpuCheck(out, data_dir, say)
    machine_step = check.run("machine", _machine)
    try:
        cuda_api().gpu()
        cuda_error = None
    except CsfmError as exc:
        cuda_error = str(exc)
    absent = gpu_presence(command_output("nvidia-smi", "-L"), cuda_error, _torch_cuda(),
                          Path("/etc/nv_tegra_release").exists())
    steps = [("cuda layer self-test", _cuda_layer), ("nvml power", _power),
             ("export tiny", lambda: _export(check)), ("doctor", lambda: _doctor(check)),
             ("pytorch on cuda parity", lambda: _torch_parity(check)),
             ("tensorrt build, parity", lambda: _tensorrt(check)), ("gpu benchmark", lambda: _benchmark(check)),
             ("ward gateway", lambda: _ward(check))]
    for name, step in steps:
        if absent is not None:
            check.steps.append(Step(name, "skipped", NO_GPU))
        else:
            check.run(name, step)
    report = {"csfm_edge": __version__, "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "gpu": absent is None, "summary": absent or machine_step.detail, "passed": not check.failed,
              "seconds": round(time.perf_counter() - check.started, 1), "command": sys.argv,
              "steps": [asdict(s) for s in check.steps]}
    write_atomically(out / "gpu-check.json", (json.dumps(report, indent=1, default=str) + "\n").encode())
    write_atomically(out / "gpu-check.md", markdown(report).encode())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check"),
                        help="folder for gpu-check.json/.md, gpu-bench.json and artifacts/ (default ./gpu-check)")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder of recordings (default $CSFM_EDGE_DATA, else the ECG that ships with csfm-edge)")
    parser.add_argument("--force", action="store_true", help="replace an earlier report in --out")
    args = parser.parse_args(argv)
    try:
        from csfm_edge.recordings.datasets import default_data_dir

        if args.out.exists() and not args.out.is_dir():
            raise OutputError(f"--out {args.out} is a file; name a folder")
        if args.data is not None and not args.data.is_dir():
            raise InputFileError(f"--data {args.data} is not a folder of recordings")
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("gpu-check.json", "gpu-check.md", "gpu-bench.json"):
            check_output(args.out / name, protected=[], force=args.force)
        report = run_gpu_check(args.out, args.data or default_data_dir(), lambda message: print(message,
                                                                                                  file=sys.stderr))
    except CsfmError as exc:
        print(f"gpu-check: error: {exc}", file=sys.stderr)
        return 1
    print(f"\ngpu-check: {report['summary']}")
    for step in report["steps"]:
        print(f"  {step['status']:8} {step['name']}: {step['detail']}")
    print(f"wrote {args.out / 'gpu-check.json'} and {args.out / 'gpu-check.md'} ({report['seconds']:.0f} s)")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
