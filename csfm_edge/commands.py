"""Subcommands of the ``csfm-edge`` CLI: for each, a function that declares its flags and one that runs it.

Each run function forwards its flags to one library function; :mod:`csfm_edge.cli` holds the table
that names them. Nothing in the library imports this module.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np

from csfm_edge.environment import package_versions
from csfm_edge.errors import CsfmError, InputFileError
from csfm_edge.runtime.backends import PROVIDERS
from csfm_edge.runtime.session import MAX_WINDOWS
from csfm_edge.serving import MAX_BATCH, MAX_QUEUE_DELAY_US
from csfm_edge.spec import SPEC


def split_list(text: str) -> list[str]:
    """A comma-separated flag value -> its non-empty, stripped items."""
    return [item.strip() for item in text.split(",") if item.strip()]


def no_flags(p: argparse.ArgumentParser) -> None:
    """For commands that take no flags."""


# --- flag groups: each flag declared once, with one help and one default (Polygraphy's argument groups) ---

LEAD_SETS_DEFAULT = "ii+ppg,12lead"


def add_provider_flag(p, *, several: bool = False, help: str = "") -> None:
    """--provider: the one declaration of it (several, comma-separated, where a command compares them)."""
    p.add_argument("--provider", default=None, type=str.lower, metavar="PROVIDER" + ("[,...]" if several else ""),
                   choices=None if several else PROVIDERS,
                   help=help or ("cpu, cuda or tensorrt (ONNX Runtime providers; cpu/cuda: the device of the PyTorch "
                                 "reference for a checkpoint) or openvino; default: the best this machine has"
                                 + (" (comma-separated: each is timed)" if several else "")))


def add_backend_flags(p: argparse.ArgumentParser, *, several: bool = False) -> None:
    """How an artifact runs: --provider, --threads, --streams, --device-id, --cuda-graph. Read back with
    :func:`backend_options`."""
    group = p.add_argument_group("backend")
    add_provider_flag(group, several=several)
    group.add_argument("--threads", type=int, default=None, help="CPU threads of ONNX Runtime/OpenVINO (default: all)")
    group.add_argument("--streams", type=int, default=1,
                       help="OpenVINO: inferences at once, the cores split among them (default 1: lowest latency)")
    group.add_argument("--device-id", type=int, default=0, help="GPU to run on (default 0)")
    group.add_argument("--cuda-graph", action="store_true", help="TensorRT engines: replay captured CUDA graphs")


def backend_options(args: argparse.Namespace, provider: str | None = None):
    """The :class:`~csfm_edge.runtime.backends.BackendOptions` the backend flags ask for."""
    from csfm_edge.runtime.backends import BackendOptions

    return BackendOptions(provider=provider if provider is not None else args.provider, device_id=args.device_id,
                          threads=args.threads, cuda_graph=args.cuda_graph, streams=args.streams)


def add_output_flags(p: argparse.ArgumentParser, help: str, *, required: bool = False, force_help: str = "") -> None:
    """--out and --force: nothing of the user's is overwritten unless --force says so."""
    p.add_argument("--out", type=Path, default=None, required=required, help=help)
    p.add_argument("--force", action="store_true", help=force_help or "replace what --out names if it exists")


def add_lead_sets_flag(p: argparse.ArgumentParser, help: str = "one each") -> None:
    """--lead-sets: named sets of leads a model, a benchmark or a server is made for (--leads names the
    leads of a recording)."""
    from csfm_edge.leads import LEAD_SETS

    p.add_argument("--lead-sets", default=LEAD_SETS_DEFAULT,
                   help=f"comma-separated lead sets ({', '.join(LEAD_SETS)}), {help} (default {LEAD_SETS_DEFAULT})")


def add_data_flag(p: argparse.ArgumentParser, help: str = "verification") -> None:
    """--data: the folder of real recordings (default $CSFM_EDGE_DATA, else the ECG shipped with the package)."""
    p.add_argument("--data", type=Path, default=None,
                   help=f"folder of recordings for {help} (default $CSFM_EDGE_DATA, else the ECG shipped with "
                        "the package)")


def add_batching_flags(p: argparse.ArgumentParser) -> None:
    """Triton's dynamic batching, one default for the repository writer and the server."""
    p.add_argument("--max-batch", type=int, default=MAX_BATCH, help=f"largest batch (default {MAX_BATCH})")
    p.add_argument("--max-queue-delay-us", type=int, default=MAX_QUEUE_DELAY_US,
                   help=f"longest a request waits for a batch to fill, microseconds (default {MAX_QUEUE_DELAY_US})")


def data_dir(args: argparse.Namespace) -> Path | None:
    """--data, checked before any work (a folder that is not there is an error, never a quiet fallback to the
    sample), else $CSFM_EDGE_DATA, else None (the ECG shipped with the package)."""
    from csfm_edge.recordings.datasets import default_data_dir

    if args.data is not None and not args.data.is_dir():
        raise InputFileError(f"--data {args.data} is not a folder of recordings")
    return args.data or default_data_dir()
def add_trust_flag(p: argparse.ArgumentParser) -> None:
    """``--trust``: every command that opens an artifact opens only signed ones when given (or $CSFM_EDGE_TRUST)."""
    p.add_argument("--trust", type=Path, default=None, metavar="PUBLIC.pem",
                   help="open artifacts only if their signature (csfm-edge sign) verifies with this EC public key, "
                        "or CA certificate for certificate signatures (default $CSFM_EDGE_TRUST; unset: no check)")


def sign_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifacts", nargs="+", type=Path, metavar="ARTIFACT",
                   help=".onnx or .plan files: each gets NAME.sig beside it, over the file and its manifest")
    p.add_argument("--key", type=Path, required=True, metavar="PRIVATE.pem",
                   help="EC private key in PEM (openssl ecparam -name prime256v1 -genkey -noout -out key.pem)")
    p.add_argument("--certificate", type=Path, default=None,
                   help="sign with this X.509 certificate of the key (verified later against a CA with --trust CA.pem)")
    p.add_argument("--chain", type=Path, action="append", default=[],
                   help="intermediate certificates up to the CA (repeat)")
    p.add_argument("--force", action="store_true", help="replace signatures already beside the artifacts")


def sign(args: argparse.Namespace) -> int:
    from csfm_edge.runtime.trust import SigningKey, sign_artifacts

    if args.certificate is None and args.chain:
        raise CsfmError("--chain goes with --certificate")
    for signature in sign_artifacts(args.artifacts, SigningKey(args.key, args.certificate, tuple(args.chain)),
                                    force=args.force):
        print(f"wrote {signature}")
    return 0


def env(args: argparse.Namespace) -> int:
    print(f"python      {platform.python_version()} ({platform.machine()}, {platform.platform()})")
    for name, version in package_versions().items():
        print(f"{name:26} {version or '-'}")
    return 0


def export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default=None,
                   help="tiny, base or large (default with --checkpoint: the architecture it holds, named after "
                        "its size or custom-dDIMxDEPTH)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", type=Path, help="authors'-format checkpoint (of that size, if named)")
    weights.add_argument("--seed", type=int, default=0, help="seed of the UNTRAINED random weights (default 0)")
    p.add_argument("--precision", default="fp32,fp16,int8",
                   help="comma-separated: fp32, fp16, int8 (portable, TensorRT-ready); cpu-fp32, cpu-int8 "
                        "(ONNX Runtime CPU graphs with fused attention)")
    add_data_flag(p, "verification (and INT8 calibration)")
    p.add_argument("--calibration-data", type=Path, help="recordings for INT8 calibration (default: --data)")
    p.add_argument("--calibration-method", default="minmax", choices=("minmax", "entropy", "percentile"))
    p.add_argument("--calibration-windows", type=int, default=256,
                   help="real windows for INT8 calibration, from every lead set (default 256; memory stays flat)")
    p.add_argument("--allow-small-calibration", action="store_true",
                   help="calibrate INT8 on fewer windows than --calibration-windows when no more are available")
    p.add_argument("--int8-keep-float", default="attention",
                   help="MatMuls INT8 leaves in float: 'attention' (Q.K^T and softmax.V, the default), regular "
                        "expressions on MatMul names/module paths, comma-separated; 'none' quantizes every MatMul")
    p.add_argument("--opset", type=int, default=SPEC.opset)
    p.add_argument("--exporter", default="dynamo", choices=("dynamo", "tracer"),
                   help="torch.export (dynamo=True, default) or the deprecated TorchScript tracer")
    add_output_flags(p, "output folder", required=True, force_help="overwrite existing artifacts")
    p.add_argument("--sign-key", type=Path, default=None, metavar="PRIVATE.pem",
                   help="sign every artifact written with this EC private key (as csfm-edge sign)")


def export(args: argparse.Namespace) -> int:
    from csfm_edge.export.onnx_export import ExportRequest
    from csfm_edge.export.onnx_export import export as run_export

    precisions = tuple(split_list(args.precision))
    size = args.size.lower() if args.size else None
    run_export(ExportRequest(size=size, out_dir=args.out, checkpoint=args.checkpoint,
                             seed=None if args.checkpoint else args.seed, precisions=precisions,
                             data_dir=data_dir(args), calibration_data=args.calibration_data,
                             calibration_method=args.calibration_method,
                             calibration_windows=args.calibration_windows,
                             int8_keep_float=() if args.int8_keep_float == "none" else tuple(
                                 split_list(args.int8_keep_float)),
                             allow_small_calibration=args.allow_small_calibration, opset=args.opset,
                             exporter=args.exporter, force=args.force, sign_key=args.sign_key))
    return 0


def verify_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=Path, help=".onnx (or .plan) with its manifest beside it")
    p.add_argument("--checkpoint", type=Path, help="the checkpoint it was exported from (not needed if untrained)")
    add_data_flag(p)
    add_backend_flags(p)
    add_trust_flag(p)


def verify(args: argparse.Namespace) -> int:
    from csfm_edge.export.reverify import reverify

    result = reverify(args.artifact, args.checkpoint, data_dir(args), backend_options(args), args.trust)
    print(f"{'case':18} {'shape':>14} {'max abs':>10} {'min cos':>10}")
    for r, _ in result.results:
        print(f"{r.case:18} {'x'.join(map(str, r.shape)):>14} {r.max_abs:10.2e} {r.min_cosine:10.6f}")
    verdict = "PASS" if result.passed else "FAIL"
    print(f"{verdict}: {args.artifact.name} ({result.precision}, {result.tolerance.describe()}); data: {result.data}")
    return 0 if result.passed else 2


def build_flags(p: argparse.ArgumentParser) -> None:
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
    add_output_flags(p, "plan path (default: beside the ONNX file)", force_help="overwrite an existing plan")


def build(args: argparse.Namespace) -> int:
    from csfm_edge.export.tensorrt_build import BuildRequest, build_engine
    from csfm_edge.profiles import PRESETS, parse_profile

    profiles = [parse_profile(p) for p in args.profile] if args.profile else list(PRESETS.values())
    build_engine(BuildRequest(args.onnx, args.out, profiles, args.target, args.workspace, args.timing_cache,
                              args.force))
    return 0


def info_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=Path, help=".onnx or .plan with its manifest")
    add_trust_flag(p)


def info(args: argparse.Namespace) -> int:
    from csfm_edge.runtime.manifest import describe_manifest, read_manifest
    from csfm_edge.runtime.trust import verify_artifact

    anchor = verify_artifact(args.artifact, args.trust)
    print(describe_manifest(read_manifest(args.artifact)))
    if anchor is not None:
        print(f"signature   verified with {anchor}")
    return 0


def run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=Path, help=".onnx, .plan or a checkpoint (.pt/.pth: PyTorch reference)")
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT",
                   help="recordings (.npz, .npy, .csv, WFDB .hea, .edf, .bdf) or folders of them")
    p.add_argument("--recursive", action="store_true", help="also read recordings in sub-folders")
    p.add_argument("--fs", type=float, default=None, help="sampling rate in Hz (where the file lacks it)")
    p.add_argument("--leads", default="auto",
                   help="comma-separated lead names or ids: picked by name where the file names its leads, in "
                        "the order given; by position where it does not; auto: the file's own (default)")
    p.add_argument("--lead-map", type=Path, default=None,
                   help="JSON {label: lead} or CSV 'label,lead' lines for labels csfm-edge does not know")
    p.add_argument("--hop", type=float, default=10.0, help="seconds between window starts (default 10)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a record with a lead flat or missing throughout (default: drop it, score the rest)")
    p.add_argument("--max-windows", type=int, default=MAX_WINDOWS,
                   help=f"refuse a record that would make more windows than this (default {MAX_WINDOWS}; memory)")
    add_backend_flags(p)
    p.add_argument("--check", action="store_true", help="also run the PyTorch reference and print the deviation")
    p.add_argument("--checkpoint", type=Path, help="the checkpoint behind the artifact (for --check)")
    add_output_flags(p, "one recording: .npz or .json; any number: .parquet (one row per window; failures in "
                        "NAME.errors.json), or DIR/ (a name without suffix: a folder of Parquet files)",
                     force_help="replace an existing --out file (or dataset folder)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted --out .parquet (or DIR/) batch")
    p.add_argument("--engine", default="process", choices=("process", "ray"),
                   help="process: in this process (default); ray: on a Ray cluster, local for the run unless "
                        "--ray-address (needs csfm-edge[ray])")
    p.add_argument("--workers", type=int, default=None,
                   help="process: threads reading and preprocessing ahead (default 2); ray: scoring actors, one "
                        "model each (default 1)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="--engine ray: join this running cluster (HOST:PORT, ray://HOST:PORT or auto)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="F",
                   help="--engine ray: GPU share of each scoring actor (0.5: two to a GPU; default 0)")
    add_trust_flag(p)


def run(args: argparse.Namespace) -> int:
    from csfm_edge.fileio import check_dataset_output, check_output
    from csfm_edge.recordings.batch import errors_path, find_recordings
    from csfm_edge.recordings.readers import read_lead_map
    from csfm_edge.runtime.manifest import manifest_path
    from csfm_edge.runtime.trust import signature_path

    ray = args.engine == "ray"
    if not ray and (args.ray_address is not None or args.gpus_per_worker):
        raise CsfmError("--ray-address and --gpus-per-worker are for --engine ray")
    paths = find_recordings(args.inputs, args.recursive)
    single = len(args.inputs) == 1 and args.inputs[0].is_file() and not ray
    suffix = args.out.suffix.lower() if args.out is not None else None
    dataset = args.out is not None and not single and (suffix == "" or args.out.is_dir())
    protected = [*paths, args.artifact, manifest_path(args.artifact), signature_path(args.artifact)]
    protected += [p for p in (args.lead_map, args.checkpoint) if p is not None]
    if args.out is not None:  # before any work: nothing of the user's is overwritten, nothing computed in vain
        if dataset:
            check_dataset_output(args.out, protected=protected, force=args.force or args.resume)
        else:
            check_output(args.out, protected=protected, force=args.force)
        if single and suffix not in (".npz", ".json", ".parquet"):
            raise CsfmError(f"--out must end in .npz or .json or .parquet, not {args.out.suffix!r}")
        if not single and not dataset and suffix != ".parquet":
            raise CsfmError(f"--out must end in .parquet or name a folder (DIR/), not {args.out.suffix!r} ("
                            + ("--engine ray writes a table)" if ray else "several recordings make one table)"))
        if suffix == ".parquet" or dataset:
            check_output(errors_path(args.out), protected=protected, force=args.force or args.resume)
    lead_map = read_lead_map(args.lead_map) if args.lead_map is not None else None
    leads = None if args.leads.strip().lower() == "auto" else split_list(args.leads)
    if single and suffix != ".parquet":
        return _run_one(args, paths[0], leads, lead_map)
    if args.check:
        raise CsfmError("--check compares one recording with the PyTorch reference; pass a single file")
    return _run_batch(args, leads, lead_map)


def _run_one(args: argparse.Namespace, path: Path, leads: list[str] | None, lead_map) -> int:
    import time

    from csfm_edge.recordings.readers import read_recording
    from csfm_edge.runtime.results import compare_results, write_results
    from csfm_edge.runtime.session import Session

    recording = read_recording(path, args.fs, leads, lead_map)
    session = Session.open(args.artifact, backend_options(args), trust=args.trust)
    started = time.perf_counter()
    result = session.embed(recording.signal, recording.fs, recording.leads, hop_s=args.hop, strict=args.strict,
                           max_windows=args.max_windows)
    took = time.perf_counter() - started
    info = session.info()
    print(f"{path.name}: leads {', '.join(recording.leads)}"
          + (f" (dropped {', '.join(recording.dropped)}: no CSFM channel)" if recording.dropped else ""))
    if result.dropped:
        print(f"dropped {', '.join(d.lead for d in result.dropped)}: "
              + "; ".join(sorted({f"{d.reason} for the whole recording" for d in result.dropped}))
              + f"; scored on {', '.join(result.leads)}")
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
        reference = Session.open(args.artifact, reference=True, checkpoint=args.checkpoint, trust=args.trust)
        expected = reference.embed(recording.signal, recording.fs, recording.leads, hop_s=args.hop,
                                   strict=args.strict, max_windows=args.max_windows)
        print(f"check vs PyTorch reference: {compare_results(expected, result).describe()}")
    if args.out is not None:
        write_results(args.out, result, {**info, "input": str(path), "lead_mapping": recording.lead_mapping,
                                         "fs": recording.fs})
        print(f"wrote {args.out}")
    return 0


def _run_batch(args: argparse.Namespace, leads: list[str] | None, lead_map) -> int:
    import time

    from csfm_edge.recordings.batch import BatchRequest, errors_path, run_batch

    started = time.perf_counter()
    # the inputs as given: the engines expand the folders themselves, and list what in them cannot be read
    request = BatchRequest(args.artifact, list(args.inputs), recursive=args.recursive, out=args.out, fs=args.fs,
                           leads=leads, lead_map=lead_map, hop_s=args.hop, strict=args.strict,
                           max_windows=args.max_windows, options=backend_options(args), resume=args.resume,
                           workers=2 if args.workers is None else args.workers, trust=args.trust)
    if args.engine == "ray":
        from csfm_edge.recordings.ray_engine import RayOptions, run_ray_batch

        summary = run_ray_batch(request, RayOptions(args.ray_address, 1 if args.workers is None else args.workers,
                                                    args.gpus_per_worker))
    else:
        summary = run_batch(request)
    took = time.perf_counter() - started
    print(f"{summary.scored} of {summary.records} recordings scored ({summary.windows} windows) in {took:.1f} s"
          + (f" on {len(summary.nodes)} Ray nodes" if len(summary.nodes) > 1 else "")
          + (f"; {summary.skipped} already scored (resumed)" if summary.skipped else "")
          + (f"; {summary.redone} damaged parts scored again" if summary.redone else "")
          + (f"; {len(summary.failed)} failed" if summary.failed else ""))
    for failure in summary.failed:
        print(f"  failed {failure['path']}: {failure['error']}")
    if args.out is not None:
        print(f"wrote {args.out}" + (f" and {errors_path(args.out)}" if summary.failed else ""))
    return summary.exit_status


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in split_list(text)]
    except ValueError:
        raise CsfmError(f"expected comma-separated integers, got {text!r}") from None


def bench_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+",
                   help="artifacts (.onnx, .plan), or torch:SIZE / torch-fast:SIZE (plain PyTorch; on the GPU with "
                        "--provider cuda)")
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    add_lead_sets_flag(p, "each timed")
    p.add_argument("--time", default="2500", help="window lengths in samples (multiples of 25)")
    p.add_argument("--warmup-s", type=float, default=0.5)
    p.add_argument("--duration-s", type=float, default=3.0)
    add_backend_flags(p, several=True)
    add_data_flag(p, "timing and accuracy")
    p.add_argument("--json", type=Path, default=None, help="results file, rewritten after every case")
    p.add_argument("--force", action="store_true", help="replace an existing --json file")
    add_trust_flag(p)


def bench(args: argparse.Namespace) -> int:
    from csfm_edge.bench.runner import BenchConfig, run_bench

    providers = split_list(args.provider) if args.provider else [None]
    record = run_bench(BenchConfig(args.targets, _int_list(args.batch), split_list(args.lead_sets),
                                   _int_list(args.time), args.warmup_s, args.duration_s, data_dir(args),
                                   [backend_options(args, p) for p in providers], args.json, trust=args.trust,
                                   force=args.force))
    if not record["results"]:  # every target skipped: a table of nothing with exit status 0 would read as success
        reasons = dict.fromkeys(f"{s['target']}: {s['reason']}" for s in record["skipped"])
        raise CsfmError(f"nothing was benchmarked ({'; '.join(reasons) or 'no cases'})")
    print(f"{'target':44} {'leads':8} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'win/s':>9} {'cosine':>9}")
    for r in record["results"]:
        cosine = r["accuracy_min_cosine_vs_fp32"]
        print(f"{r['label'][:44]:44} {r['lead_set']:8} {r['batch']:5d} {r['latency_ms']['median_ms']:9.2f} "
              f"{r['latency_ms']['p90_ms']:9.2f} {r['throughput']['windows_per_s']:9.1f} "
              f"{'-' if cosine is None else f'{cosine:.5f}':>9}")
    for s in record["skipped"]:
        print(f"skipped {s['target']}: {s['reason']}")
    return 0


def tune_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifacts", nargs="+", type=Path, help="an export folder, or artifact files of one folder")
    add_lead_sets_flag(p, "each timed")
    p.add_argument("--batch", default="8", help="comma-separated batch sizes (default 8)")
    add_provider_flag(p, several=True, help="only these, comma-separated: openvino, cpu, cuda, tensorrt (default: "
                                            "every one present)")
    p.add_argument("--inference-precision", default=None,
                   help="OpenVINO inference precisions to try: f32, bf16, f16 (default: every one the CPU offers)")
    p.add_argument("--threads", default=None,
                   help="CPU thread counts to try, comma-separated (default: each backend's own, all cores)")
    p.add_argument("--min-cosine", type=float, default=None,
                   help="worst per-window cosine vs fp32 a candidate needs (default: its precision's tolerance)")
    p.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (default 3)")
    p.add_argument("--duration-s", type=float, default=2.0, help="timed seconds per case and round (default 2)")
    add_data_flag(p, "the accuracy check and timing")
    add_output_flags(p, "the tuned record (default FOLDER/tuned.json, which Session.open(FOLDER) reads)")


def tune(args: argparse.Namespace) -> int:
    from csfm_edge.bench.tune import TuneConfig
    from csfm_edge.bench.tune import tune as run_tune

    threads = _int_list(args.threads) if args.threads else [None]
    record = run_tune(TuneConfig(
        args.artifacts, split_list(args.lead_sets), _int_list(args.batch), args.out, args.force, data_dir(args),
        split_list(args.provider) if args.provider else None,
        split_list(args.inference_precision) if args.inference_precision else None, threads, args.min_cosine,
        args.rounds, duration_s=args.duration_s))
    cases = list(record["candidates"][0]["latency_ms"])
    print(f"{'candidate':52} " + " ".join(f"{c + ' ms (spread)':>24}" for c in cases) + f" {'score':>6} {'cosine':>8}")
    for row in record["candidates"]:
        cells = [f"{v['median']:9.1f} ({v['min']:.0f}-{v['max']:.0f})" for v in row["latency_ms"].values()]
        print(f"{row['label'][:52]:52} " + " ".join(f"{c:>24}" for c in cells)
              + f" {row['score']:6.2f} {min(row['min_cosine_vs_fp32'].values()):8.5f}")
    for s in record["skipped"]:
        print(f"skipped {s['candidate']}: {s['reason']}")
    print(f"chose {record['choice']['setting']['artifact']}: {record['choice']['why']}")
    return 0


def report_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", type=Path, help="bench JSON files (one per machine)")
    add_output_flags(p, "folder for report.md and the PNG plots", required=True,
                     force_help="replace report.md and plots already in --out")


def bench_report(args: argparse.Namespace) -> int:
    from csfm_edge.bench.report import build_report

    for path in build_report(args.results, args.out, args.force):
        print(f"wrote {path}")
    return 0


def triton_repo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifacts", nargs="+", type=Path, help="exported .onnx files (with manifests)")
    add_output_flags(p, "model repository folder", required=True, force_help="write into a non-empty folder")
    add_lead_sets_flag(p, "one model each")
    p.add_argument("--platform", default="onnxruntime_onnx", choices=("onnxruntime_onnx", "tensorrt_plan", "python"),
                   help="python: a Python-backend model running a csfm-edge Session (no ONNX Runtime/TensorRT "
                        "backend needed, e.g. the bundled server of `serve --repository`)")
    add_batching_flags(p)
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--kind", default=None, choices=("KIND_GPU", "KIND_CPU"),
                   help="instance group kind (default KIND_GPU; KIND_CPU for --platform python)")
    add_provider_flag(p, help="--platform python: the backend its Session opens (default: the best installed)")
    p.add_argument("--preprocess", action="store_true",
                   help="add a preprocessing ensemble per model (raw signal at any rate in; Python backend)")
    add_trust_flag(p)


def triton_repo(args: argparse.Namespace) -> int:
    from csfm_edge.serving.triton_repo import TritonRepoRequest, write_repository

    configs = write_repository(TritonRepoRequest(args.artifacts, args.out, split_list(args.lead_sets), args.platform,
                                                 args.max_batch, args.max_queue_delay_us, args.instances, args.kind,
                                                 args.preprocess, args.force, args.provider, args.trust))
    for config in configs:
        print(f"wrote {config}")
    return 0


def serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=Path, nargs="?", help=".onnx or .plan, served through PyTriton")
    p.add_argument("--repository", type=Path, default=None,
                   help="serve this model repository (triton-repo --platform python) with the Triton server "
                        "PyTriton bundles, instead of an artifact")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (gRPC: port+1, metrics: port+2)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    add_lead_sets_flag(p, "one Triton model each")
    add_batching_flags(p)
    add_backend_flags(p)
    add_trust_flag(p)


def serve(args: argparse.Namespace) -> int:
    if (args.artifact is None) == (args.repository is None):
        raise CsfmError("serve takes an ARTIFACT or --repository DIR (one of the two)")
    if args.repository is not None:
        from csfm_edge.serving.bundled_server import RepositoryServeRequest, serve_repository_forever

        serve_repository_forever(RepositoryServeRequest(args.repository, args.port, args.host, trust=args.trust))
        return 0
    from csfm_edge.serving.pytriton_server import ServeRequest, serve_forever

    serve_forever(ServeRequest(args.artifact, split_list(args.lead_sets), args.port, args.max_batch,
                               args.max_queue_delay_us, backend_options(args), args.host, trust=args.trust))
    return 0


def doctor_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifacts", nargs="*", type=Path, help="exported .onnx files to check on this machine")
    add_data_flag(p, "the checks")
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON")


def doctor(args: argparse.Namespace) -> int:
    import json

    from csfm_edge.doctor import run_doctor
    from csfm_edge.fileio import check_output, write_atomically

    if args.json is not None:
        check_output(args.json, protected=list(args.artifacts), force=True)
    report = run_doctor(args.artifacts, data_dir(args))
    m = report.machine
    gpu = m["gpu"]
    print(f"platform    {m['platform']} (Python {m['python']})")
    print(f"driver      {m['nvidia_smi'] or '-'}" + (f"; {m['jetson_module']}" if m["jetson_module"] else ""))
    if m["nvpmodel"]:
        print(f"power mode  {m['nvpmodel'].splitlines()[0]}")
    print(f"cuda        binding cuda-python {m['cuda_binding_major'] or '-'}; "
          + (f"{gpu['cuda_api']}: {gpu['name']} (compute {gpu['compute_capability']}, {gpu['sm_count']} SMs)"
             if "missing" not in gpu else gpu["missing"]))
    trt = m["tensorrt"]
    print("tensorrt    " + (f"{trt['library']} {trt['version']}" if "missing" not in trt else trt["missing"]))
    for check in report.checks:
        print(f"{check.status:8} {check.name}: {check.detail}")
    if args.json is not None:
        write_atomically(args.json, (json.dumps(report.to_dict(), indent=1, default=str) + "\n").encode())
        print(f"wrote {args.json}")
    return 1 if report.failed else 0


def gateway_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", type=Path, help=".onnx or .plan with its manifest")
    p.add_argument("--lsl", action="store_true", help="take the beds from Lab Streaming Layer streams (one bed per "
                                                      "source_id)")
    p.add_argument("--types", default="ECG,PPG", help="LSL stream types to serve, comma-separated (default ECG,PPG)")
    p.add_argument("--lead-map", type=Path, default=None,
                   help="JSON {label: lead} or CSV 'label,lead' lines for channel labels csfm-edge does not know")
    p.add_argument("--hop", type=float, default=1.0, help="seconds between a bed's windows (default 1)")
    p.add_argument("--max-delay-ms", type=float, default=50.0,
                   help="longest a due window waits for others to fill its engine call (default 50)")
    p.add_argument("--max-batch", type=int, default=32, help="windows per engine call at most (default 32)")
    p.add_argument("--workers", type=int, default=2, help="preprocessing threads (default 2)")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: run until SIGINT/SIGTERM)")
    add_output_flags(p, ".parquet table of every window (run's columns, record = the bed, plus timestamp and "
                        "latency_ms), flushed every 2 s")
    p.add_argument("--no-outlets", action="store_true", help="no LSL outlet per bed for the results")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (0.0.0.0: every one)")
    add_backend_flags(p)


def gateway(args: argparse.Namespace) -> int:
    from csfm_edge.fileio import check_output
    from csfm_edge.recordings.readers import read_lead_map
    from csfm_edge.runtime.manifest import manifest_path

    if not args.lsl:
        raise CsfmError("name the source of the beds: --lsl (Lab Streaming Layer)")
    if args.out is not None:
        protected = [args.artifact, manifest_path(args.artifact)] + ([args.lead_map] if args.lead_map else [])
        check_output(args.out, protected=protected, force=args.force)
        if args.out.suffix.lower() != ".parquet":
            raise CsfmError(f"--out must end in .parquet, not {args.out.suffix!r}")
    lead_map = read_lead_map(args.lead_map) if args.lead_map is not None else None
    from csfm_edge.live.ward import WardRequest, run_ward

    request = WardRequest(args.artifact, args.out, split_list(args.types), lead_map, args.hop,
                          args.max_delay_ms / 1e3, args.max_batch, args.duration, args.metrics_port,
                          args.metrics_host, backend_options(args), not args.no_outlets, args.workers)
    summary = run_ward(request)
    print(f"{len(summary.beds)} beds: {summary.scored} windows scored, {summary.flagged} flagged, {summary.late} late, "
          f"{summary.disconnects} disconnections; p99 latency {summary.p99_text()}")
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0
