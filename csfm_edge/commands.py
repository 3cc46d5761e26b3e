"""Subcommands of the ``csfm-edge`` CLI; each parses flags and calls library code."""

from __future__ import annotations

import argparse
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from csfm_edge.cli import command
from csfm_edge.errors import CsfmError

PACKAGES = ("csfm-edge", "numpy", "scipy", "onnxruntime", "onnx", "torch", "tensorrt", "tensorrt-rtx-cu12-bindings",
            "cuda-python", "neurokit2", "wfdb")


def package_versions() -> dict[str, str | None]:
    """Installed versions (None where absent), read from metadata so nothing heavy is imported."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@command("env", "print Python, platform and package versions (for bug reports)", lambda p: None)
def env(args: argparse.Namespace) -> int:
    print(f"python      {platform.python_version()} ({platform.machine()}, {platform.platform()})")
    for name, version in package_versions().items():
        print(f"{name:26} {version or '-'}")
    return 0


def _export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", required=True, help="tiny, base or large")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", type=Path, help="authors'-format checkpoint of that size")
    weights.add_argument("--seed", type=int, default=0, help="seed of the UNTRAINED random weights (default 0)")
    p.add_argument("--precision", default="fp32,fp16,int8",
                   help="comma-separated: fp32, fp16, int8 (portable, TensorRT-ready); cpu-fp32, cpu-int8 "
                        "(ONNX Runtime CPU graphs with fused attention)")
    p.add_argument("--data", type=Path, default=None,
                   help="recordings for verification (default $CSFM_EDGE_DATA or ../shared/data, "
                        "else the ECG shipped with the package)")
    p.add_argument("--calibration-data", type=Path, help="recordings for INT8 calibration (default: --data)")
    p.add_argument("--calibration-method", default="minmax", choices=("minmax", "entropy", "percentile"))
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite existing artifacts")


@command("export", "export CSFM to ONNX (fp32/fp16/int8), verified against PyTorch, with manifests", _export_flags)
def export(args: argparse.Namespace) -> int:
    from csfm_edge.datasets import default_data_dir
    from csfm_edge.export.onnx_export import ExportRequest
    from csfm_edge.export.onnx_export import export as run_export

    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    run_export(ExportRequest(size=args.size.lower(), out_dir=args.out, checkpoint=args.checkpoint,
                             seed=None if args.checkpoint else args.seed, precisions=precisions,
                             data_dir=args.data or default_data_dir(), calibration_data=args.calibration_data,
                             calibration_method=args.calibration_method, opset=args.opset, force=args.force))
    return 0


def _verify_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=Path, help=".onnx (or .plan) with its manifest beside it")
    p.add_argument("--checkpoint", type=Path, help="the checkpoint it was exported from (not needed if untrained)")
    p.add_argument("--data", type=Path, default=None, help="recordings (default as for export)")
    p.add_argument("--provider", default=None, help="ONNX Runtime provider (default: best available)")


@command("verify", "re-run an artifact's verification against the PyTorch reference", _verify_flags)
def verify(args: argparse.Namespace) -> int:
    from csfm_edge.datasets import default_data_dir
    from csfm_edge.export.reverify import reverify

    result = reverify(args.artifact, args.checkpoint, args.data or default_data_dir(), args.provider)
    print(f"{'case':18} {'shape':>14} {'max abs':>10} {'cosine':>10}")
    for r in result.results:
        print(f"{r.case:18} {'x'.join(map(str, r.shape)):>14} {r.max_abs:10.2e} {r.mean_cosine:10.6f}")
    verdict = "PASS" if result.passed else "FAIL"
    print(f"{verdict}: {args.artifact.name} ({result.precision}, {result.tolerance.describe()}); data: {result.data}")
    return 0 if result.passed else 2


def _build_flags(p: argparse.ArgumentParser) -> None:
    from csfm_edge.profiles import PRESETS
    from csfm_edge.runtime.tensorrt_lib import TARGETS

    p.add_argument("onnx", type=Path, help="an exported .onnx with its manifest")
    p.add_argument("--profile", action="append", default=None,
                   help=f"preset ({', '.join(PRESETS)}) or NAME:batch=MIN,OPT,MAX:channels=...:time=...; "
                        "repeat for several (default: all presets)")
    p.add_argument("--target", default="native", choices=TARGETS,
                   help="native: this machine's GPU; rtx-smXX: ahead of time with TensorRT for RTX (no GPU needed)")
    p.add_argument("--workspace", type=int, default=None, metavar="MB", help="builder workspace limit")
    p.add_argument("--timing-cache", type=Path, default=None, help="read before and written after the build")
    p.add_argument("--out", type=Path, default=None, help="plan path (default: beside the ONNX file)")
    p.add_argument("--force", action="store_true", help="overwrite an existing plan")


@command("build", "build a TensorRT engine (.plan) from an exported ONNX graph", _build_flags)
def build(args: argparse.Namespace) -> int:
    from csfm_edge.export.tensorrt_build import BuildRequest, build_engine
    from csfm_edge.profiles import PRESETS, parse_profile

    profiles = [parse_profile(p) for p in args.profile] if args.profile else list(PRESETS.values())
    build_engine(BuildRequest(args.onnx, args.out, profiles, args.target, args.workspace, args.timing_cache,
                              args.force))
    return 0


def _info_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=Path, help=".onnx or .plan with its manifest")


@command("info", "print an artifact's manifest readably (and check the file against it)", _info_flags)
def info(args: argparse.Namespace) -> int:
    from csfm_edge.runtime.manifest import describe_manifest, read_manifest

    print(describe_manifest(read_manifest(args.artifact)))
    return 0


def _run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=Path, help=".onnx, .plan or a checkpoint (.pt/.pth: PyTorch reference)")
    p.add_argument("input", type=Path, help="recording: .npz (shared schema), .npy, .csv or WFDB .hea")
    p.add_argument("--fs", type=float, default=None, help="sampling rate in Hz (where the file lacks it)")
    p.add_argument("--leads", default="auto", help="comma-separated lead names or ids, or auto (from the file)")
    p.add_argument("--hop", type=float, default=10.0, help="seconds between window starts (default 10)")
    p.add_argument("--provider", default=None, help="ONNX Runtime provider: cpu, cuda, tensorrt (default: best)")
    p.add_argument("--check", action="store_true", help="also run the PyTorch reference and print the deviation")
    p.add_argument("--checkpoint", type=Path, help="the checkpoint behind the artifact (for --check)")
    p.add_argument("--out", type=Path, default=None, help="write results to .npz or .json")


@command("run", "run an artifact on a recording: per-window features/logits with times and flags", _run_flags)
def run(args: argparse.Namespace) -> int:
    import time

    from csfm_edge.runtime.io import read_recording
    from csfm_edge.runtime.results import compare_results, write_results
    from csfm_edge.runtime.session import Session

    if args.out is not None and args.out.suffix.lower() not in (".npz", ".json"):
        raise CsfmError(f"--out must end in .npz or .json, not {args.out.suffix!r}")
    leads = None if args.leads.strip().lower() == "auto" else [x.strip() for x in args.leads.split(",") if x.strip()]
    recording = read_recording(args.input, args.fs, leads)
    session = Session.open(args.artifact, provider=args.provider)
    started = time.perf_counter()
    result = session.embed(recording.signal, recording.fs, recording.leads, hop_s=args.hop)
    took = time.perf_counter() - started
    info = session.info()
    print(f"{args.input.name}: leads {', '.join(recording.leads)}"
          + (f" (dropped {', '.join(recording.dropped)}: no CSFM channel)" if recording.dropped else ""))
    print(f"{info['backend']} ({info['provider']}), CSFM {info['size']} {info['precision']}"
          + (", UNTRAINED weights" if info["weights"] == "untrained" else ""))
    flagged = [(s, f) for s, f in zip(result.start_s, result.flags) if f]
    print(f"{len(result.start_s)} windows in {took:.2f} s; {result.aggregate['clean_windows']} clean, "
          f"{len(flagged)} flagged")
    for start, flags in flagged[:10]:
        print(f"  window at {start:7.1f} s: {', '.join(flags)}")
    if result.aggregate["features"] is not None:
        print(f"aggregate features: dim {result.aggregate['features'].shape[0]}, "
              f"L2 norm {np.linalg.norm(result.aggregate['features']):.3f}")
    if args.check:
        reference = Session.open(args.artifact, reference=True, checkpoint=args.checkpoint)
        expected = reference.embed(recording.signal, recording.fs, recording.leads, hop_s=args.hop)
        deviation = compare_results(expected, result)
        print(f"check vs PyTorch reference: max abs {deviation['max_abs']:.2e}, "
              f"mean cosine {deviation['mean_cosine']:.6f}, min cosine {deviation['min_cosine']:.6f}")
    if args.out is not None:
        write_results(args.out, result, info)
        print(f"wrote {args.out}")
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CsfmError(f"expected comma-separated integers, got {text!r}") from None


def _bench_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", help="artifacts (.onnx, .plan, PATH@provider) or torch:SIZE / torch-fast:SIZE")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--leads", default="ii+ppg,12lead", help="lead sets: ii, ppg, ii+ppg, 12lead, 12lead+ppg")
    p.add_argument("--time", default="2500", help="window lengths in samples (multiples of 25)")
    p.add_argument("--warmup-s", type=float, default=0.5)
    p.add_argument("--duration-s", type=float, default=3.0)
    p.add_argument("--provider", default=None, help="ONNX Runtime provider for .onnx targets")
    p.add_argument("--data", type=Path, default=None, help="recordings (default as for export)")
    p.add_argument("--json", type=Path, default=None, help="results file, rewritten after every case")


@command("bench", "benchmark artifacts across batch sizes, lead sets and window lengths", _bench_flags)
def bench(args: argparse.Namespace) -> int:
    from csfm_edge.bench.runner import BenchConfig, run_bench
    from csfm_edge.datasets import default_data_dir

    lead_sets = [s.strip() for s in args.leads.split(",") if s.strip()]
    record = run_bench(BenchConfig(args.targets, _int_list(args.batch), lead_sets, _int_list(args.time),
                                   args.warmup_s, args.duration_s, args.data or default_data_dir(), args.provider,
                                   args.json))
    print(f"{'target':44} {'leads':8} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'win/s':>9} {'cosine':>9}")
    for r in record["results"]:
        cosine = r["accuracy_min_cosine_vs_fp32"]
        print(f"{r['label'][:44]:44} {r['lead_set']:8} {r['batch']:5d} {r['latency_ms']['median_ms']:9.2f} "
              f"{r['latency_ms']['p90_ms']:9.2f} {r['throughput']['windows_per_s']:9.1f} "
              f"{'-' if cosine is None else f'{cosine:.5f}':>9}")
    for s in record["skipped"]:
        print(f"skipped {s['target']}: {s['reason']}")
    return 0


def _report_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", type=Path, help="bench JSON files (one per machine)")
    p.add_argument("--out", type=Path, required=True, help="folder for report.md and the PNG plots")


@command("bench-report", "markdown tables and PNG plots comparing bench results across machines", _report_flags)
def bench_report(args: argparse.Namespace) -> int:
    from csfm_edge.bench.report import build_report

    for path in build_report(args.results, args.out):
        print(f"wrote {path}")
    return 0


def _triton_repo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifacts", nargs="+", type=Path, help="exported .onnx files (with manifests)")
    p.add_argument("--out", type=Path, required=True, help="model repository folder")
    p.add_argument("--leads", default="ii+ppg,12lead", help="lead sets, one model each (ii, ppg, ii+ppg, 12lead, ...)")
    p.add_argument("--platform", default="onnxruntime_onnx", choices=("onnxruntime_onnx", "tensorrt_plan"))
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-queue-delay-us", type=int, default=1000)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--kind", default="KIND_GPU", choices=("KIND_GPU", "KIND_CPU"), help="instance group kind")
    p.add_argument("--preprocess", action="store_true",
                   help="add a preprocessing ensemble per model (raw signal at any rate in; Python backend)")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")


@command("triton-repo", "write a Triton Inference Server model repository (one model per lead set)",
         _triton_repo_flags)
def triton_repo(args: argparse.Namespace) -> int:
    from csfm_edge.serving.triton_repo import TritonRepoRequest, write_repository

    lead_sets = [s.strip() for s in args.leads.split(",") if s.strip()]
    configs = write_repository(TritonRepoRequest(args.artifacts, args.out, lead_sets, args.platform, args.max_batch,
                                                 args.max_queue_delay_us, args.instances, args.kind, args.preprocess,
                                                 args.force))
    for config in configs:
        print(f"wrote {config}")
    return 0


def _serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=Path, help=".onnx or .plan")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (gRPC: port+1, metrics: port+2)")
    p.add_argument("--leads", default="ii+ppg,12lead", help="lead sets, one Triton model each")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    p.add_argument("--provider", default=None, help="ONNX Runtime provider or openvino (default: best)")


@command("serve", "serve an artifact with NVIDIA Triton (PyTriton) and dynamic batching", _serve_flags)
def serve(args: argparse.Namespace) -> int:
    from csfm_edge.serving.pytriton_server import ServeRequest, serve_forever

    lead_sets = [s.strip() for s in args.leads.split(",") if s.strip()]
    serve_forever(ServeRequest(args.artifact, lead_sets, args.port, args.max_batch, args.max_queue_delay_us,
                               args.provider))
    return 0
