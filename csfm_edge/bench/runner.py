"""``csfm-edge bench``: latency, throughput, accuracy and resources for artifacts x shapes.

Measured the way trtexec measures (warm-up for a while, then timed iterations; median, p90, p99).
Every case records the machine, the accuracy of the artifact on real recordings (feature cosine vs
the fp32 PyTorch reference) beside its speed, and is written to the JSON as soon as it finishes, so a
later failure loses nothing. An artifact this machine cannot run is recorded as skipped, with why.
"""

from __future__ import annotations

import datetime as dt
import json
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csfm_edge.bench.flops import cpu_peak_precision, published_peak, window_flops
from csfm_edge.bench.machine import machine_record
from csfm_edge.bench.power import PowerSampler
from csfm_edge.bench.timing import measure
from csfm_edge.config import SAMPLE_RATE_HZ, CSFMConfig, size_config
from csfm_edge.errors import CsfmError, LeadError, ParameterError
from csfm_edge.fileio import check_output, write_atomically
from csfm_edge.leads import lead_set, rows_of
from csfm_edge.metrics import compare
from csfm_edge.progress import console_progress
from csfm_edge.recordings.datasets import LeadSetBatch, lead_set_batches, real_batch
from csfm_edge.runtime.backends import BackendOptions, open_backend, reference_backend
from csfm_edge.runtime.backends.base import Backend
from csfm_edge.runtime.manifest import ModelInfo, WeightsInfo, manifest_path, read_manifest
from csfm_edge.runtime.preprocess import check_positive, preprocess
from csfm_edge.runtime.trust import signature_path, verify_artifact
from csfm_edge.spec import SPEC, check_window_length, precision_record

TORCH_TARGETS = {"torch": "PyTorch eager fp32 (the authors' way)",
                 "torch-fast": "PyTorch fused attention + bf16 autocast"}


@dataclass
class Target:
    """One thing to benchmark: an artifact file, or a plain-PyTorch baseline (``torch:SIZE``)."""

    spec: str
    label: str
    model: ModelInfo
    precision: str
    weights: WeightsInfo
    open: Callable[[], Backend]


def resolve_target(spec: str, options: BackendOptions) -> Target:
    """``PATH.onnx`` / ``PATH.plan`` opened with ``options``, or ``torch:SIZE`` / ``torch-fast:SIZE`` (plain
    PyTorch, seeded weights: the authors' way, and fused attention with bf16 autocast; on the GPU when
    ``options.provider`` is cuda, else on the CPU)."""
    kind, _, rest = spec.partition(":")
    if kind in TORCH_TARGETS and rest:
        config = size_config(rest)
        device = options.provider if options.provider == "cuda" else None

        def open_torch() -> Backend:
            from csfm_edge.model import build, fused_attention, math_attention

            fast = kind == "torch-fast"
            model = build(config, seed=0, attention=fused_attention if fast else math_attention)
            return reference_backend(model, BackendOptions(provider=device, device_id=options.device_id,
                                                           reference=True, autocast="bf16" if fast else None))

        precision = "bf16" if kind == "torch-fast" else "fp32"
        return Target(spec, TORCH_TARGETS[kind] + (f" @{device}" if device else ""), ModelInfo.of(config), precision,
                      WeightsInfo("untrained", seed=0), open_torch)
    path = Path(spec)
    manifest = read_manifest(path)
    chosen = [f"@{options.provider}"] if options.provider else []
    chosen += ["cuda graph"] if options.cuda_graph else []
    chosen += [f"{options.threads} threads"] if options.threads else []
    label = " ".join([path.name, *chosen])
    return Target(spec, label, manifest.model, manifest.precision, manifest.weights,
                  lambda: open_backend(path, manifest, options))


@dataclass
class BenchConfig:
    targets: list[str]
    batches: list[int] = field(default_factory=lambda: [1, 8])
    lead_sets: list[str] = field(default_factory=lambda: ["ii+ppg", "12lead"])
    times: list[int] = field(default_factory=lambda: [2500])
    warmup_s: float = 0.5
    duration_s: float = 3.0
    data_dir: Path | None = None
    # Every artifact is timed once per entry: compare providers (or thread counts) in one run.
    options: list[BackendOptions] = field(default_factory=lambda: [BackendOptions()])
    json_out: Path | None = None
    progress: Callable[[str], None] = console_progress
    trust: Path | None = None  # artifacts open only if signed (see csfm_edge.runtime.trust)
    force: bool = False  # replace an existing json_out

    def __post_init__(self) -> None:
        """Every setting checked before the machine is measured or anything is timed."""
        if not self.targets:
            raise ParameterError("name at least one target to benchmark")
        for batch in self.batches:
            check_positive("batch", batch, integer=True)
        for time_len in self.times:
            check_window_length(time_len)
        for name in self.lead_sets:
            lead_set(name)
        check_positive("duration", self.duration_s)
        if self.warmup_s < 0 or not np.isfinite(self.warmup_s):
            raise ParameterError(f"warm-up must be 0 s or more, got {self.warmup_s!r}")


def _artifact_paths(config: BenchConfig) -> list[Path]:
    return [Path(spec.partition("@")[0]) for spec in config.targets if spec.partition(":")[0] not in TORCH_TARGETS]


def check_config(config: BenchConfig) -> None:
    """Refuse, before any case, what would otherwise fail every case or end as "skipped" with exit status 0: a
    refused signature, and a results path onto an artifact or onto earlier results (settings: __post_init__)."""
    for path in _artifact_paths(config):
        verify_artifact(path, config.trust)
    if config.json_out is not None:
        protected = [p for path in _artifact_paths(config) for p in (path, manifest_path(path), signature_path(path))]
        check_output(config.json_out, protected=protected, force=config.force, flag="--json")


def _raw_windows(data_dir: Path | None, ids: np.ndarray) -> tuple[np.ndarray, float]:
    """A raw 10-s record with these leads (for timing preprocessing): shared data, else the sample ECG."""
    from csfm_edge.recordings.datasets import read_npz_record
    from csfm_edge.recordings.sample import sample_ecg

    if data_dir is not None:
        for name in ("E07500", "a103l"):
            signal, fs, file_ids = read_npz_record(Path(data_dir) / f"{name}.npz")
            try:
                return signal[rows_of(file_ids, ids), : int(10 * fs)], fs
            except LeadError:
                continue
    recording = sample_ecg()
    return np.repeat(recording.signal[:, : int(10 * recording.fs)], len(ids), axis=0), recording.fs


class BenchRun:
    """A sweep in progress: cases run one by one and the JSON is rewritten after each."""

    def __init__(self, config: BenchConfig):
        self.config = config
        self.say = config.progress
        self.say("[bench] recording the machine (and the CPU's matrix-product peak)")
        self.record = {"machine": machine_record(), "started": dt.datetime.now(dt.timezone.utc).isoformat(),
                       "command": sys.argv, "settings": {"warmup_s": config.warmup_s,
                                                         "duration_s": config.duration_s},
                       "results": [], "skipped": []}
        self.batches: list[LeadSetBatch] = lead_set_batches(config.data_dir, batch=4)
        self.record["data"] = "; ".join(b.source for b in self.batches)
        self._reference_cache: dict[tuple, np.ndarray] = {}

    def save(self) -> None:
        if self.config.json_out is not None:
            write_atomically(self.config.json_out, (json.dumps(self.record, indent=1, default=float) + "\n").encode())

    def _reference(self, target: Target, lead_set_name: str) -> np.ndarray:
        """fp32 PyTorch features of the real windows for this lead set, for the target's weights."""
        key = (target.model, target.weights, lead_set_name)
        if key not in self._reference_cache:
            from csfm_edge.model import rebuild_weights

            model = rebuild_weights(target.model.config(), target.weights.source, seed=target.weights.seed)
            ids = np.asarray(lead_set(lead_set_name), dtype=np.int64)
            feed = SPEC.feed(real_batch(self.batches, ids, 4), ids)
            self._reference_cache[key] = reference_backend(model).run(feed)[SPEC.features]
        return self._reference_cache[key]

    def _accuracy(self, target: Target, backend: Backend, lead_set_name: str) -> float | None:
        if not target.weights.untrained:
            return None  # the checkpoint file is not named in a bench run; accuracy lives in the manifest
        ids = np.asarray(lead_set(lead_set_name), dtype=np.int64)
        got = backend.run(SPEC.feed(real_batch(self.batches, ids, 4), ids))[SPEC.features]
        return compare(self._reference(target, lead_set_name), got).min_cosine

    def run(self) -> dict:
        config = self.config
        shapes = [(b, s, t) for s in config.lead_sets for b in config.batches for t in config.times]
        done = 0
        runs = [(spec, options) for spec in config.targets
                for options in (config.options if spec.partition(":")[0] not in TORCH_TARGETS else config.options[:1])]
        total = len(runs) * len(shapes)
        for spec, options in runs:
            try:
                target = resolve_target(spec, options)
                backend = target.open()
            except CsfmError as exc:
                self.record["skipped"].append({"target": spec, "reason": str(exc)})
                self.say(f"[bench] skipping {spec}: {exc}")
                done += len(shapes)
                self.save()
                continue
            try:
                for batch, set_name, time_len in shapes:
                    done += 1
                    self.say(f"[bench] [{done}/{total}] {target.label}: {set_name} batch {batch} time {time_len}")
                    self.record["results"].append(self._case(target, backend, batch, set_name, time_len))
                    self.save()
            except CsfmError as exc:
                self.record["skipped"].append({"target": spec, "reason": str(exc)})
                self.say(f"[bench] {spec} stopped: {exc}")
            finally:
                backend.close()
            self.save()
        return self.record

    def _case(self, target: Target, backend: Backend, batch: int, lead_set_name: str, time_len: int) -> dict:
        config = self.config
        ids = np.asarray(lead_set(lead_set_name), dtype=np.int64)
        feed = SPEC.feed(real_batch(self.batches, ids, batch, time_len), ids)
        with PowerSampler() as power:
            latency = measure(lambda: backend.run(feed), warmup_s=config.warmup_s, duration_s=config.duration_s)
        device_only = gpu_compute = None
        if backend.device_timing:  # TensorRT: without the host<->device copies
            # enqueue + wait by the host clock, and GPU compute between CUDA events (trtexec reports both)
            device_only = measure(backend.execute_only, warmup_s=config.warmup_s, duration_s=config.duration_s)
            gpu_compute = measure(backend.execute_only, warmup_s=0.0, duration_s=config.duration_s,
                                  timed_ms=backend.gpu_compute_ms)
        raw, fs = _raw_windows(config.data_dir, ids)
        pre = measure(lambda: preprocess(raw, fs, ids), warmup_s=0.1, duration_s=min(config.duration_s, 1.0))
        per_batch_pre_ms = pre.median_ms * batch
        windows_per_s = batch / (latency.median_ms / 1000)
        model: CSFMConfig = target.model.config()
        flops = window_flops(model, len(ids), time_len)
        machine = self.record["machine"]
        described = backend.describe()
        # the GPU the backend runs on names the peak; the machine record's (nvidia-smi's) where it does not say
        gpu_name = described.get("gpu") or (machine.get("gpu") or {}).get("name")
        compute = "fp16" if target.precision == "bf16" else precision_record(target.precision).compute
        if backend.on_gpu:
            peak, peak_source = published_peak(gpu_name, compute), "published (datasheet, dense)"
        else:  # this CPU's own measured matrix-product limit at the precision the target computes in
            key = cpu_peak_precision(compute, backend.describe())
            peak = (machine.get("cpu_peak_tflops") or {}).get(key)
            peak_source = f"measured CPU {key} matmul" if peak else f"no measured CPU {key} peak"
        achieved = flops * windows_per_s / 1e12
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        energy = None if power.average_w is None else power.average_w * latency.median_ms / batch  # mJ
        return {
            "target": target.spec, "label": target.label, "backend": described, "size": target.model.size,
            "precision": target.precision, "lead_set": lead_set_name, "channels": len(ids), "batch": batch,
            "time": time_len, "latency_ms": latency.to_dict(),
            "enqueue_and_wait_ms": None if device_only is None else device_only.to_dict(),
            "gpu_compute_ms": None if gpu_compute is None else gpu_compute.to_dict(),
            "throughput": {"windows_per_s": windows_per_s,
                           "signal_seconds_per_s": windows_per_s * time_len / SAMPLE_RATE_HZ,
                           "samples_per_s": windows_per_s * time_len * len(ids)},
            "preprocess_ms_per_window": pre.median_ms,
            "end_to_end_ms": per_batch_pre_ms + latency.median_ms,
            "preprocess_share": per_batch_pre_ms / (per_batch_pre_ms + latency.median_ms),
            "accuracy_min_cosine_vs_fp32": self._accuracy(target, backend, lead_set_name),
            "flops_per_window": flops, "achieved_tflops": achieved,
            "peak_tflops": peak, "peak_source": peak_source,
            "fraction_of_peak": achieved / peak if peak else None,
            "peak_host_memory_mib": rss_mib, "peak_gpu_memory_mib": power.peak_gpu_memory_mib,
            "avg_power_w": power.average_w, "energy_mj_per_window": energy,
        }


def run_bench(config: BenchConfig) -> dict:
    check_config(config)
    run = BenchRun(config)
    run.save()
    return run.run()
