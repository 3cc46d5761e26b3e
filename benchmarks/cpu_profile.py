"""Where a CPU graph spends its time: OpenVINO's per-node counters of the executed graph, ONNX Runtime's profile.

Usage: .venv/bin/python benchmarks/cpu_profile.py ARTIFACT.onnx [--lead-set 12lead] [--batch 8] [--runs 3]
       [--inference-precision bf16] [--onnxruntime]

OpenVINO (PERF_COUNT on): the executed graph after its own fusions, each node with the kernel it ran
(``exec_type``, e.g. ``brgemm_avx512_amx_I8`` for AMX int8 tiles, ``jit_avx512_amx_bf16``, ``ref_f32``) and
its time; summed per (layer type, kernel) over ``--runs`` runs on real windows and printed as shares of
the total, then the slowest single nodes. ``--onnxruntime``: the same for ONNX Runtime's CPU provider from
its JSON profile (per op type). Each runs in its own process.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import add_data_flag

from csfm_edge.bench.timing import in_own_process
from csfm_edge.leads import lead_set
from csfm_edge.recordings.datasets import lead_set_batches, real_batch
from csfm_edge.spec import SPEC


def _feed(data: str | None, lead_set_name: str, batch: int) -> dict[str, np.ndarray]:
    ids = np.asarray(lead_set(lead_set_name), dtype=np.int64)
    return SPEC.feed(real_batch(lead_set_batches(Path(data) if data else None), ids, batch), ids)


def openvino_profile(path: str, hint: str, data: str | None, lead_set_name: str, batch: int, runs: int) -> dict:
    """Per node: (name, layer type, kernel, runtime precision, microseconds summed over the runs)."""
    import openvino as ov

    core = ov.Core()
    model = core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY",
                                             "PERF_COUNT": "YES"})
    request = model.create_infer_request()
    feed = _feed(data, lead_set_name, batch)
    request.infer(feed)  # warm-up: first-run kernel creation is not profiled
    totals: dict[str, list] = {}
    for _ in range(runs):
        request.infer(feed)
        for info in request.get_profiling_info():
            if info.status != info.Status.EXECUTED:
                continue
            entry = totals.setdefault(info.node_name, [info.node_type, info.exec_type, 0.0])
            entry[2] += info.real_time.total_seconds() * 1e6 / runs
    precision = {op.get_friendly_name(): op.get_rt_info()["runtimePrecision"].astype(str)
                 for op in model.get_runtime_model().get_ops() if "runtimePrecision" in op.get_rt_info()}
    return {"nodes": [(name, t, e, precision.get(name, "?"), us) for name, (t, e, us) in totals.items()]}


def onnxruntime_profile(path: str, data: str | None, lead_set_name: str, batch: int, runs: int) -> dict:
    """Per node: (name, op type, provider, '-', microseconds averaged over the runs) from ORT's JSON profile."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = "/tmp/csfm-ort-profile"
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = _feed(data, lead_set_name, batch)
    session.run(None, feed)
    for _ in range(runs):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    totals: dict[str, list] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][: -len("_kernel_time")]
            entry = totals.setdefault(name, [e["args"]["op_name"], e["args"].get("provider", "?"), 0.0])
            entry[2] += e["dur"] / (runs + 1)
    return {"nodes": [(name, t, p, "-", us) for name, (t, p, us) in totals.items()]}


def summarize(nodes: list, top: int) -> None:
    total = sum(n[4] for n in nodes)
    groups: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0])
    for _, kind, kernel, precision, us in nodes:
        groups[(kind, kernel, precision)][0] += us
        groups[(kind, kernel, precision)][1] += 1
    print(f"total {total / 1000:.1f} ms per inference over {len(nodes)} executed nodes")
    print(f"{'layer type':22} {'kernel':34} {'precision':10} {'nodes':>5} {'ms':>8} {'share':>6}")
    for (kind, kernel, precision), (us, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{kind[:22]:22} {kernel[:34]:34} {precision[:10]:10} {count:5d} {us / 1000:8.2f} {us / total:6.1%}")
    print("\nslowest nodes")
    for name, kind, kernel, precision, us in sorted(nodes, key=lambda n: -n[4])[:top]:
        print(f"{us / 1000:8.2f} ms {us / total:6.1%}  {kind:14} {kernel:30} {precision:8} {name[:70]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--lead-set", default="12lead")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--inference-precision", default="bf16")
    parser.add_argument("--onnxruntime", action="store_true", help="profile ONNX Runtime's CPU provider instead")
    parser.add_argument("--top", type=int, default=15)
    add_data_flag(parser)
    args = parser.parse_args()
    data = str(args.data) if args.data else None
    if args.onnxruntime:
        result = in_own_process(onnxruntime_profile, str(args.artifact), data, args.lead_set, args.batch, args.runs)
    else:
        result = in_own_process(openvino_profile, str(args.artifact), args.inference_precision, data, args.lead_set,
                                args.batch, args.runs)
    if "error" in result:
        raise SystemExit(result["error"])
    backend = "ONNX Runtime CPU" if args.onnxruntime else f"OpenVINO CPU ({args.inference_precision})"
    print(f"{args.artifact.name} on {backend}, {args.lead_set} batch {args.batch}, mean of {args.runs} runs")
    summarize(result["nodes"], args.top)


if __name__ == "__main__":
    main()
