"""Subcommands of the ``csfm-edge`` CLI; each parses flags and calls library code."""

from __future__ import annotations

import argparse
import platform
from importlib import metadata
from pathlib import Path

from csfm_edge.cli import command

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
    p.add_argument("--precision", default="fp32,fp16,int8", help="comma-separated: fp32, fp16, int8")
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
