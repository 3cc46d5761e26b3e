"""CPU paths for CSFM Tiny against the best plain PyTorch, each contender in its own process, alternated.

Usage: .venv/bin/python benchmarks/cpu_backends.py [--artifacts artifacts/bench] [--batch 8] [--rounds 3]
       [--duration-s 3] [--contenders torch-fast,int8@openvino:bf16,...] [--json F]

Contenders: ``torch-fast`` (PyTorch, fused attention + bf16 autocast, the same seed-0 weights: the baseline),
``torch`` (eager fp32, the authors' way), and ``PRECISION@PROVIDER[:INFERENCE_PRECISION]`` for the exported
graphs (e.g. ``int8@openvino:bf16``, ``fp16@openvino:bf16``, ``cpu-int8@cpu``). Each contender times itself in a
freshly spawned process (OpenVINO's and PyTorch's thread pools fight when they share one), contenders take
turns in every round (the order rotates), and the table gives each case's median over the rounds with the
spread (fastest-slowest round median), the speed-up over the baseline's median, the worst per-window cosine
against the fp32 graph on real windows, and the fraction of this machine's own measured matrix-product limit
(fp32, bf16 or int8, see csfm_edge.bench.machine) the contender reaches. Target: the fastest accurate path >= 2x
the baseline at batch 8.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import ROOT, add_data_flag

from csfm_edge.bench.flops import cpu_peak_precision, window_flops
from csfm_edge.bench.machine import cpu_peaks
from csfm_edge.bench.timing import in_own_process
from csfm_edge.bench.tune import case_name, measure_contender
from csfm_edge.config import size_config
from csfm_edge.export.onnx_export import ensure_artifacts
from csfm_edge.leads import lead_set
from csfm_edge.metrics import cosine_rows
from csfm_edge.runtime.tuned import Setting, cpu_flags, cpu_model
from csfm_edge.spec import precision_record

DEFAULT_CONTENDERS = "torch-fast,int8@openvino:bf16,int8@openvino:f32,fp16@openvino:bf16,fp32@openvino:f32"


def parse(contender: str, paths: dict[str, Path], size: str) -> tuple[str, dict | None, str]:
    """``torch-fast`` / ``PRECISION@PROVIDER[:HINT]`` -> (spec, setting as a dict or None, compute precision)."""
    if contender in ("torch", "torch-fast"):
        return f"{contender}:{size}", None, "bf16" if contender == "torch-fast" else "fp32"
    precision, _, rest = contender.partition("@")
    provider, _, hint = rest.partition(":")
    setting = Setting(paths[precision].name, provider or "cpu", hint or None)
    compute = precision_record(precision).compute
    return str(paths[precision]), setting.to_dict(), compute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=ROOT / "artifacts" / "bench")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--contenders", default=DEFAULT_CONTENDERS)
    parser.add_argument("--lead-sets", default="ii+ppg,12lead")
    parser.add_argument("--batch", default="8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=3.0)
    parser.add_argument("--json", type=Path, default=None)
    add_data_flag(parser)
    args = parser.parse_args()
    contenders = args.contenders.split(",")
    precisions = {c.partition("@")[0] for c in contenders if "@" in c} | {"fp32"}
    paths = ensure_artifacts(args.size, tuple(sorted(precisions)), args.artifacts, data_dir=args.data)
    cases = [(s, int(b)) for s in args.lead_sets.split(",") for b in args.batch.split(",")]
    names = [case_name(s, b) for s, b in cases]
    data = str(args.data) if args.data else None

    peaks = cpu_peaks(seconds=3.0)
    print(f"machine: {cpu_model()}; ISA {' '.join(f for f in cpu_flags() if f.startswith(('amx', 'avx512_', 'avx_')))}"
          f"; measured limits fp32 {peaks['fp32']} TFLOP/s, bf16 {peaks['bf16']} TFLOP/s, int8 {peaks['int8']} TOP/s")
    reference_setting = Setting(paths["fp32"].name, "cpu").to_dict()
    reference = in_own_process(measure_contender, str(paths["fp32"]), reference_setting, cases, data, 0.0, 0.0,
                               None, None, False)
    reference = reference["features"] if "error" not in reference else None
    parsed = {c: parse(c, paths, args.size) for c in contenders}
    rounds: dict[str, dict[str, list[float]]] = {c: {n: [] for n in names} for c in contenders}
    cosine, described, failed = {}, {}, {}
    for r in range(args.rounds):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for contender in order:
            if contender in failed:
                continue
            spec, setting, _ = parsed[contender]
            result = in_own_process(measure_contender, spec, setting, cases, data, 1.0, args.duration_s)
            if "error" in result:
                failed[contender] = result["error"]
                continue
            for name, ms in result["latency_ms"].items():
                rounds[contender][name].append(ms)
            described[contender] = result["backend"]
            if reference is not None:
                worst = [float(cosine_rows(f, reference[s]).min()) for s, f in result["features"].items()]
                cosine[contender] = min(worst)
            print(f"round {r + 1}/{args.rounds} {contender:24} " + "  ".join(
                f"{n} {ms:8.1f} ms" for n, ms in result["latency_ms"].items()), flush=True)

    config = size_config(args.size)
    baseline = {n: float(np.median(rounds["torch-fast"][n])) for n in names} if "torch-fast" in rounds else None
    print(f"\nCSFM {args.size}, {args.rounds} alternating rounds, each contender in its own process; median over "
          "rounds (spread: fastest-slowest round); speed-up = torch-fast median / contender median")
    print(f"{'contender':24} {'runs as':30} {'case':12} {'median ms':>10} {'spread ms':>15} {'speed-up':>8} "
          f"{'cosine':>8} {'% of limit':>10}")
    rows = []
    for contender in contenders:
        if contender in failed:
            print(f"{contender:24} failed: {failed[contender]}")
            continue
        spec, setting, compute = parsed[contender]
        key = cpu_peak_precision(compute, described[contender])
        for (lead_set_name, batch), name in zip(cases, names):
            times = rounds[contender][name]
            median = float(np.median(times))
            flops = window_flops(config, len(lead_set(lead_set_name)))
            achieved = flops * batch / (median / 1000) / 1e12
            fraction = achieved / peaks[key] if peaks.get(key) else None
            speedup = baseline[name] / median if baseline else None
            rows.append({"contender": contender, "backend": described[contender], "case": name, "median_ms": median,
                         "rounds_ms": times, "speedup": speedup, "min_cosine": cosine.get(contender),
                         "achieved_tflops": achieved, "limit": key, "fraction_of_limit": fraction})
            print(f"{contender:24} {described[contender]['provider'][:30]:30} {name:12} {median:10.1f} "
                  f"{min(times):7.1f}-{max(times):7.1f} {speedup or 0:7.2f}x "
                  f"{cosine.get(contender, float('nan')):8.5f} "
                  f"{'-' if fraction is None else f'{fraction * 100:.0f}% {key}':>10}")
    if args.json:
        args.json.write_text(json.dumps({"machine": {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "peaks": peaks},
                                         "rows": rows, "failed": failed}, indent=1))


if __name__ == "__main__":
    main()
