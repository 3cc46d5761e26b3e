"""``csfm-edge tune``: which verified artifact, on which backend setting, is fastest here, measured.

Like TensorRT's tactic timing, at the level of whole artifacts: every verified artifact of a folder is run
on every backend setting this machine has (OpenVINO with each inference precision the CPU offers and the
thread counts asked for; ONNX Runtime's CPU, CUDA and TensorRT providers where present; TensorRT engines
on their GPU), for the user's lead sets and batch sizes.

Each candidate runs in a fresh process of its own (OpenVINO's, ONNX Runtime's and PyTorch's thread pools
fight when they share one: a PyTorch bf16 call measured 5x slower beside a live OpenVINO session), and the
candidates take turns over several rounds, so a noisy neighbour slows all of them alike. Before any timing,
each candidate's features on real windows are compared with the fp32 artifact on ONNX Runtime's CPU
provider (exact fp32); one whose worst per-window cosine misses the tolerance of its precision is skipped
with its figures. After the first round, candidates whose fastest call is ``keep_within`` times slower than
the fastest candidate's in every case are dropped (fastest calls, since single medians on a busy machine
swing 2-5x). The choice (lowest geometric mean, over the cases, of the ratio to each case's fastest)
is written with the machine's fingerprint to ``FOLDER/tuned.json``, which ``Session.open(FOLDER)`` reads.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csfm_edge.bench.runner import resolve_target
from csfm_edge.bench.timing import in_own_process, measure
from csfm_edge.errors import CsfmError, ParameterError
from csfm_edge.fileio import check_output, sha256_of, write_atomically
from csfm_edge.leads import lead_set
from csfm_edge.metrics import cosine_rows
from csfm_edge.progress import console_progress
from csfm_edge.recordings.datasets import lead_set_batches, real_batch
from csfm_edge.runtime.backends import BackendOptions
from csfm_edge.runtime.manifest import manifest_path, now, read_manifest
from csfm_edge.runtime.tuned import (
    ARTIFACT_SUFFIXES,
    TUNED_NAME,
    TUNED_VERSION,
    Candidate,
    Setting,
    fingerprint,
    folder_artifacts,
    open_setting,
)
from csfm_edge.spec import SPEC, precision_record

CHECK_WINDOWS = 4  # real windows per lead set for the accuracy check
OPENVINO_PRECISIONS = ("f32", "bf16", "f16")  # INFERENCE_PRECISION_HINT values tried where the CPU offers them
ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "tensorrt": "TensorrtExecutionProvider"}


class TuneError(CsfmError):
    """A tune run that cannot start: no fp32 reference, bad settings."""


@dataclass
class TuneConfig:
    paths: list[Path]  # one folder, or artifact files of one folder
    lead_sets: list[str] = field(default_factory=lambda: ["ii+ppg", "12lead"])
    batches: list[int] = field(default_factory=lambda: [8])
    out: Path | None = None  # default FOLDER/tuned.json (where Session.open(FOLDER) looks)
    force: bool = False
    data_dir: Path | None = None
    providers: list[str] | None = None  # None: every one available (openvino, cpu, cuda, tensorrt)
    inference_precisions: list[str] | None = None  # OpenVINO; None: every one the CPU offers
    threads: list[int | None] = field(default_factory=lambda: [None])  # None: the backend's own count
    min_cosine: float | None = None  # None: the tolerance of each artifact's precision
    rounds: int = 3
    warmup_s: float = 0.5
    duration_s: float = 2.0
    keep_within: float = 3.0
    progress: Callable[[str], None] = console_progress

    def cases(self) -> list[tuple[str, int]]:
        return [(s, b) for s in self.lead_sets for b in self.batches]


def case_name(lead_set_name: str, batch: int) -> str:
    return f"{lead_set_name} b{batch}"


def required_cosine(precision: str, override: float | None) -> float:
    """Worst per-window cosine a candidate must reach: the precision's tolerance; an fp32 graph (tolerance in
    max abs) run in a lower inference precision is held to the fp16 graph's cosine."""
    if override is not None:
        return override
    tolerance = precision_record(precision).tolerance.min_cosine
    return tolerance if tolerance is not None else precision_record("fp16").tolerance.min_cosine


def _resolve(config: TuneConfig) -> tuple[Path, list[Candidate], list[dict]]:
    """The folder and its verified artifacts (only the named files, where files were named)."""
    paths = [Path(p) for p in config.paths]
    for path in paths:
        if not path.exists():
            raise TuneError(f"{path} does not exist")
        if path.is_file() and path.suffix.lower() not in ARTIFACT_SUFFIXES:
            raise TuneError(f"{path} is not an artifact (.onnx or .plan); name an export folder or its artifacts")
    if len(paths) == 1 and paths[0].is_dir():
        return paths[0], *folder_artifacts(paths[0])
    folders = {p.resolve().parent for p in paths}
    if len(folders) != 1 or any(not p.is_file() for p in paths):
        raise TuneError("name one folder, or artifact files that are all in one folder (the tuned choice is "
                        "stored beside them)")
    folder = paths[0].parent
    found, skipped = folder_artifacts(folder)
    names = {p.name for p in paths}
    return folder, [c for c in found if c.path.name in names], [s for s in skipped if s["artifact"] in names]


def candidate_settings(candidates: list[Candidate], config: TuneConfig) -> tuple[list[Setting], list[dict]]:
    """Every setting this machine can run each artifact with, and those it cannot, with why."""
    from csfm_edge.runtime.backends.openvino import UNITS, openvino_available

    wanted = set(config.providers or ("openvino", *ORT_PROVIDERS))
    unknown = wanted - {"openvino", *ORT_PROVIDERS}
    if unknown:
        raise ParameterError(f"unknown provider {sorted(unknown)}; choose from openvino, {', '.join(ORT_PROVIDERS)}")
    capabilities: list[str] = []
    if openvino_available():
        import openvino as ov

        capabilities = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    hints = config.inference_precisions or list(OPENVINO_PRECISIONS)
    if set(hints) - set(OPENVINO_PRECISIONS):
        raise ParameterError(f"OpenVINO inference precisions are {', '.join(OPENVINO_PRECISIONS)}, got {hints}")
    import onnxruntime as ort

    available = ort.get_available_providers()
    settings, skipped = [], []
    for c in candidates:
        name = c.path.name
        if c.path.suffix.lower() != ".onnx":
            if "tensorrt" in wanted:
                settings.append(Setting(name, "tensorrt"))
            continue
        if "openvino" in wanted:
            if not capabilities:
                skipped.append({"candidate": f"{name} @openvino", "reason": "OpenVINO is not installed"})
            elif c.manifest.precision.startswith("cpu-"):
                skipped.append({"candidate": f"{name} @openvino", "reason": "a cpu-* graph holds ONNX Runtime's "
                                "own attention op, which OpenVINO does not run"})
            else:
                for hint in hints:
                    if UNITS[hint] not in capabilities:
                        skipped.append({"candidate": f"{name} @openvino {hint}",
                                        "reason": f"this CPU offers no {hint} inference ({', '.join(capabilities)})"})
                        continue
                    settings += [Setting(name, "openvino", hint, t) for t in config.threads]
        for provider, full in ORT_PROVIDERS.items():
            if provider not in wanted:
                continue
            if full not in available:
                skipped.append({"candidate": f"{name} @{provider}",
                                "reason": f"ONNX Runtime has no {full} here ({', '.join(available)})"})
            elif provider == "cpu":
                settings += [Setting(name, "cpu", None, t) for t in config.threads]
            elif not c.manifest.precision.startswith("cpu-"):
                settings.append(Setting(name, provider))
    skipped.append({"candidate": "PyTorch fallback", "reason": "not a tune candidate yet: tune times exported "
                    "artifacts (the PyTorch reference on CUDA is timed by scripts/gpu-check; on CPUs PyTorch is the "
                    "baseline of benchmarks/cpu_backends.py)"})
    return settings, skipped


def measure_contender(spec: str, setting: dict | None, cases: list[tuple[str, int]], data_dir: str | None,
                      warmup_s: float, duration_s: float, reference: dict | None = None,
                      min_cosine: float | None = None, timed: bool = True) -> dict:
    """Run in a fresh process (:func:`~csfm_edge.bench.timing.in_own_process`): open the artifact ``spec`` with
    ``setting`` (a :class:`Setting` as a dict), or a bench target (``torch-fast:tiny``) where ``setting`` is
    None; compare its features on real windows with ``reference`` (when given; timing only if it reaches
    ``min_cosine``), then time every case (unless not ``timed``). Returns picklable figures; failures come
    back as ``error``."""
    try:
        batches = lead_set_batches(Path(data_dir) if data_dir else None)
        if setting is None:
            backend = resolve_target(spec, BackendOptions()).open()
        else:
            backend = open_setting(Path(spec), read_manifest(spec), Setting(**setting))
    except Exception as exc:  # noqa: BLE001 - any failure to open is a reason to skip, reported to the parent
        return {"error": _reason(exc)}
    try:
        out: dict = {"backend": backend.describe(), "features": {}, "min_cosine": {}, "latency_ms": {},
                     "fastest_ms": {}}
        for name in dict.fromkeys(s for s, _ in cases):
            ids = np.asarray(lead_set(name), dtype=np.int64)
            features = backend.run(SPEC.feed(real_batch(batches, ids, CHECK_WINDOWS), ids))[SPEC.features]
            out["features"][name] = features
            if reference is not None:
                out["min_cosine"][name] = float(cosine_rows(features, reference[name]).min())
        if not timed or (reference is not None and min(out["min_cosine"].values()) < min_cosine):
            return out
        for name, batch in cases:
            ids = np.asarray(lead_set(name), dtype=np.int64)
            feed = SPEC.feed(real_batch(batches, ids, batch), ids)
            latency = measure(lambda feed=feed: backend.run(feed), warmup_s=warmup_s, duration_s=duration_s,
                              min_iterations=3)
            out["latency_ms"][case_name(name, batch)] = latency.median_ms
            out["fastest_ms"][case_name(name, batch)] = latency.min_ms
        return out
    except Exception as exc:  # noqa: BLE001
        return {"error": _reason(exc)}
    finally:
        backend.close()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if isinstance(exc, CsfmError) and text else f"{type(exc).__name__}: {text[0] if text else ''}"


class Tuning:
    """A tune run: settings, the fp32 reference, rounds of alternating timings, the choice."""

    def __init__(self, config: TuneConfig):
        self.config = config
        self.say = config.progress
        for batch in config.batches:
            if batch < 1:
                raise ParameterError(f"batch sizes are positive, got {batch}")
        for name in config.lead_sets:
            lead_set(name)
        if config.rounds < 1:
            raise ParameterError(f"rounds must be 1 or more, got {config.rounds}")
        self.folder, self.candidates, skipped = _resolve(config)
        self.out = Path(config.out) if config.out is not None else self.folder / TUNED_NAME
        protected = [p for c in self.candidates for p in (c.path, manifest_path(c.path))]
        check_output(self.out, protected=protected, force=config.force)
        self.skipped = [{"candidate": s["artifact"], "reason": s["reason"]} for s in skipped]
        fp32 = [c for c in self.candidates if c.manifest.precision == "fp32" and c.path.suffix.lower() == ".onnx"]
        if not fp32:
            raise TuneError(f"tune compares every candidate with the verified fp32 .onnx artifact, and {self.folder} "
                            "has none: export fp32 too (csfm-edge export --precision fp32,...)")
        self.reference_setting = Setting(fp32[0].path.name, "cpu")
        self.settings, skipped = candidate_settings(self.candidates, config)
        self.skipped += skipped
        self.precision = {c.path.name: c.manifest.precision for c in self.candidates}

    def _run(self, setting: Setting, reference: dict | None, min_cosine: float | None, timed: bool = True) -> dict:
        config = self.config
        return in_own_process(measure_contender, str(self.folder / setting.artifact), setting.to_dict(), config.cases(),
                              str(config.data_dir) if config.data_dir else None, config.warmup_s, config.duration_s,
                              reference, min_cosine, timed)

    def run(self) -> dict:
        config = self.config
        cases = [case_name(s, b) for s, b in config.cases()]
        self.say(f"[tune] {len(self.settings)} candidates x {len(cases)} cases x {config.rounds} rounds, each "
                 f"candidate in its own process; reference {self.reference_setting.label()}")
        first = self._run(self.reference_setting, None, None, timed=False)
        if "error" in first:
            raise TuneError(f"the fp32 reference {self.reference_setting.label()} failed: {first['error']}")
        reference = first["features"]
        timings: dict[Setting, dict[str, list[float]]] = {}
        fastest: dict[Setting, dict[str, float]] = {}
        accuracy: dict[Setting, dict[str, float]] = {}
        backends: dict[Setting, dict] = {}
        alive = list(self.settings)
        for round_index in range(config.rounds):
            shift = round_index % max(len(alive), 1)
            for k, setting in enumerate(alive[shift:] + alive[:shift], 1):
                self.say(f"[tune] round {round_index + 1}/{config.rounds} [{k}/{len(alive)}] {setting.label()}")
                needed = required_cosine(self.precision[setting.artifact], config.min_cosine)
                result = self._run(setting, reference if round_index == 0 else None, needed)
                if "error" in result:
                    self._drop(setting, result["error"], timings)
                    continue
                if round_index == 0:
                    accuracy[setting], backends[setting] = result["min_cosine"], result["backend"]
                    worst = min(result["min_cosine"].values())
                    if worst < needed:
                        self._drop(setting, f"worst cosine vs fp32 {worst:.5f} < {needed:g} on real windows ("
                                   + ", ".join(f"{k} {v:.5f}" for k, v in result["min_cosine"].items()) + ")", timings)
                        continue
                for case, ms in result["latency_ms"].items():
                    timings.setdefault(setting, {}).setdefault(case, []).append(ms)
                if round_index == 0:
                    fastest[setting] = result["fastest_ms"]
            alive = [s for s in alive if s in timings]
            if round_index == 0 and config.rounds > 1:
                alive = self._prune(alive, timings, fastest, cases)
        if not timings:
            raise TuneError("no candidate ran accurately here: " + "; ".join(
                f"{s['candidate']}: {s['reason']}" for s in self.skipped))
        return self._record(timings, accuracy, backends, cases)

    def _drop(self, setting: Setting, reason: str, timings: dict) -> None:
        timings.pop(setting, None)
        self.skipped.append({"candidate": setting.label(), "reason": reason})
        self.say(f"[tune] skipping {setting.label()}: {reason}")

    def _prune(self, alive: list[Setting], timings: dict, fastest: dict, cases: list[str]) -> list[Setting]:
        """Drop, after the first round, candidates whose fastest call is over ``keep_within`` x the fastest
        candidate's in every case."""
        best = {c: min(fastest[s][c] for s in alive) for c in cases}
        kept = []
        for s in alive:
            ratio = min(fastest[s][c] / best[c] for c in cases)
            if ratio > self.config.keep_within:
                self._drop(s, f"fastest call {ratio:.1f}x the fastest candidate's in every case after round 1 (kept: "
                           f"within {self.config.keep_within:g}x)", timings)
            else:
                kept.append(s)
        return kept

    def _record(self, timings: dict, accuracy: dict, backends: dict, cases: list[str]) -> dict:
        medians = {s: {c: float(np.median(v)) for c, v in per.items()} for s, per in timings.items()}
        best = {c: min(m[c] for m in medians.values()) for c in cases}
        score = {s: math.exp(np.mean([math.log(m[c] / best[c]) for c in cases])) for s, m in medians.items()}
        ranked = sorted(medians, key=score.get)
        choice = ranked[0]
        rows = [{"setting": s.to_dict(), "label": s.label(), "precision": self.precision[s.artifact],
                 "backend": backends.get(s), "min_cosine_vs_fp32": accuracy.get(s), "score": score[s],
                 "latency_ms": {c: {"median": medians[s][c], "min": min(timings[s][c]), "max": max(timings[s][c]),
                                    "rounds": timings[s][c]} for c in cases}} for s in ranked]
        why = (f"fastest accurate candidate: {score[choice]:.2f}x the per-case best (geometric mean over "
               f"{', '.join(cases)}), worst cosine vs fp32 {min(accuracy[choice].values()):.5f}")
        record = {
            "tuned_version": TUNED_VERSION, "created": now(), "fingerprint": fingerprint(), "command": sys.argv,
            "choice": {"setting": choice.to_dict(), "sha256": sha256_of(self.folder / choice.artifact), "why": why},
            "reference": self.reference_setting.label(),
            "settings": {"lead_sets": self.config.lead_sets, "batches": self.config.batches,
                         "rounds": self.config.rounds, "warmup_s": self.config.warmup_s,
                         "duration_s": self.config.duration_s, "keep_within": self.config.keep_within,
                         "min_cosine": self.config.min_cosine, "data": str(self.config.data_dir or "packaged ECG")},
            "candidates": rows, "skipped": self.skipped,
        }
        write_atomically(self.out, (json.dumps(record, indent=1) + "\n").encode())
        self.say(f"[tune] chose {choice.label()}: {why}; wrote {self.out}")
        return record


def tune(config: TuneConfig) -> dict:
    """Measure, choose and write the tuned record (see the module docstring); returns the record."""
    return Tuning(config).run()
