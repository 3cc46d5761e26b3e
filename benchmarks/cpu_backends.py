"""CPU backends for CSFM Tiny, all measured in one run: plain PyTorch vs csfm-edge's CPU paths.

Usage: .venv/bin/python benchmarks/cpu_backends.py [--artifacts artifacts/bench] [--duration-s 5] [--json F]

Cases: lead II + PPG and 12 leads, batch 1 and 8, 10-s windows of real recordings. Targets: the
authors'-style PyTorch eager fp32; PyTorch with fused attention + bf16 autocast (the fastest plain
PyTorch path); the exported graphs on ONNX Runtime's CPU provider (portable fp32/int8, CPU-optimised
cpu-fp32/cpu-int8 with fused attention) and on OpenVINO (portable fp32, int8). Prints median/p90
latency, throughput, min feature cosine vs fp32 on real recordings, and each target's speed-up over
PyTorch fused+bf16 at the same shape. Target: the fastest accurate path >= 1.5x at batch 8.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import ROOT, add_data_flag

from csfm_edge.bench.runner import BenchConfig, run_bench
from csfm_edge.export.onnx_export import ensure_artifacts
from csfm_edge.runtime.backends import BackendOptions
from csfm_edge.runtime.backends.openvino import openvino_available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "bench")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--json", type=Path, default=None)
    add_data_flag(parser)
    args = parser.parse_args()
    paths = ensure_artifacts(args.size, ("fp32", "int8", "cpu-fp32", "cpu-int8"), args.artifacts, data_dir=args.data)
    targets = [f"torch:{args.size}", f"torch-fast:{args.size}", *map(str, paths.values())]
    options = [BackendOptions(provider="cpu")] + ([BackendOptions(provider="openvino")] if openvino_available() else [])
    batches = [int(b) for b in args.batch.split(",")]
    record = run_bench(BenchConfig(targets, batches, ["ii+ppg", "12lead"], [2500], warmup_s=1.0,
                                   duration_s=args.duration_s, data_dir=args.data, options=options,
                                   json_out=args.json))
    baseline = {(r["lead_set"], r["batch"]): r["latency_ms"]["median_ms"] for r in record["results"]
                if r["target"].startswith("torch-fast:")}
    print(f"\nCSFM {args.size} on {record['machine']['cpu']} ({record['machine']['cores']} cores); "
          f"speed-up = PyTorch fused+bf16 median / target median, same shape, same run")
    print(f"{'target':42} {'backend':28} {'leads':7} {'b':>2} {'p50 ms':>8} {'p90 ms':>8} {'win/s':>7} "
          f"{'cosine':>8} {'speed-up':>8}")
    for r in record["results"]:
        key = (r["lead_set"], r["batch"])
        provider = f"{r['backend']['backend']} {r['backend']['provider']}"
        cosine, median = r["accuracy_min_cosine_vs_fp32"], r["latency_ms"]["median_ms"]
        print(f"{r['label'][:42]:42} {provider[:28]:28} {r['lead_set']:7} {r['batch']:2d} {median:8.1f} "
              f"{r['latency_ms']['p90_ms']:8.1f} {r['throughput']['windows_per_s']:7.1f} {cosine:8.5f} "
              f"{baseline[key] / median:7.2f}x")
    for s in record["skipped"]:
        print(f"skipped {s['target']}: {s['reason']}")


if __name__ == "__main__":
    main()
