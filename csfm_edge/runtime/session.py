"""``Session``: one artifact, opened through its manifest, run on raw or preprocessed signals.

The manifest decides what an artifact is and how its inputs are preprocessed (sample rate, filters,
PPG order); the suffix picks the backend: ``.plan`` TensorRT, ``.onnx`` ONNX Runtime (best provider
unless one is named), a checkpoint (``.pt``/``.pth``) or ``reference=True`` the PyTorch reference,
the only path that imports torch. Backends only execute; windowing, flags and aggregation live here.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from csfm_edge.config import SAMPLE_RATE_HZ, WINDOW_SAMPLES
from csfm_edge.errors import ArtifactError, CsfmError, FlatChannelError, SignalWarning
from csfm_edge.leads import PPG_ID, lead_names, resolve_leads
from csfm_edge.profiles import probe_shape
from csfm_edge.runtime.backends.base import Backend
from csfm_edge.runtime.manifest import Manifest, PreprocessingInfo, preprocessing_record, read_manifest
from csfm_edge.runtime.preprocess import align_rates, sliding_windows
from csfm_edge.spec import SPEC, check_window_length

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
SHORT_RECORD_S = 5.0  # below this a window is mostly zero padding: warn
PROBE_LEADS = tuple(range(12)) + (PPG_ID,)  # the probe uses the first channels of the table


def open_backend(artifact: Path, manifest: Manifest, provider: str | None = None) -> Backend:
    """``.onnx`` -> ONNX Runtime or OpenVINO, ``.plan`` -> TensorRT.

    For ``.onnx`` with no ``provider``: ONNX Runtime's GPU providers where present, else OpenVINO where
    installed and the graph is a portable one (the fastest CPU path measured), else ONNX Runtime's CPU
    provider. ``provider="openvino"`` or an ONNX Runtime provider name (cpu, cuda, tensorrt) picks one.
    Output names always come from the manifest, never from a backend's renaming.
    """
    suffix = artifact.suffix.lower()
    if suffix == ".onnx":
        from csfm_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend, choose_providers
        from csfm_edge.runtime.backends.openvino import OpenVINOBackend, openvino_available

        portable = not manifest.precision.startswith("cpu-")
        if provider is None and choose_providers()[0] == "CPUExecutionProvider" and portable and openvino_available():
            provider = "openvino"
        if provider is not None and provider.lower() == "openvino":
            return OpenVINOBackend(artifact, manifest.precision, manifest.output_names)
        return OnnxRuntimeBackend(artifact, provider)
    if suffix in (".plan", ".engine"):
        from csfm_edge.runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(artifact, manifest)
    raise ArtifactError(f"{artifact.name}: unknown artifact type {suffix!r} (expected .onnx or .plan)")


def check_preprocessing(recorded: PreprocessingInfo) -> int:
    """The artifact's PPG filter order, once its other preprocessing is shown to be this package's.

    Sample rate, window, filters and z-scoring are fixed by the model; an artifact that records
    others was made for a different preprocessing and is refused rather than fed the wrong input.
    """
    order = recorded.ppg_order
    ours = preprocessing_record(order)
    differing = [f.name for f in fields(PreprocessingInfo) if getattr(recorded, f.name) != getattr(ours, f.name)]
    if differing:
        raise ArtifactError(f"the artifact's preprocessing differs from this csfm-edge's in {', '.join(differing)}: "
                            "re-export it with this version")
    return order


@dataclass
class EmbedResult:
    """Per-window outputs of a recording, their start times and flags, and an aggregate of clean windows."""

    features: np.ndarray  # [W, dim]
    logits: np.ndarray | None  # [W, classes]
    start_s: np.ndarray  # [W]
    flags: list[list[str]]  # per window; empty = clean
    leads: list[str]
    aggregate: dict = field(default_factory=dict)

    @property
    def clean(self) -> np.ndarray:
        return np.array([not f for f in self.flags], dtype=bool)


@dataclass
class StreamResult:
    end_s: float  # stream time of the window's last sample
    features: np.ndarray  # [dim]
    logits: np.ndarray | None
    flags: list[str]
    latency_s: float  # from the arrival of the window's last sample to this result
    behind: bool  # latency exceeded the hop: the stream is not keeping up


class StreamLagWarning(SignalWarning):
    """Results arrive later than one hop after their data: the machine is not keeping up."""


class Session:
    """An artifact ready to run: ``run`` on model inputs, ``embed`` on raw recordings, ``stream`` live."""

    def __init__(self, backend: Backend, manifest: Manifest):
        self.backend = backend
        self.manifest = manifest
        self.model = manifest.model
        self.precision = manifest.precision
        self.ppg_order = check_preprocessing(manifest.preprocessing)
        self.has_head = manifest.has_head
        self._check_outputs()

    @classmethod
    def open(cls, artifact: str | Path, *, provider: str | None = None, reference: bool = False,
             checkpoint: str | Path | None = None) -> Session:
        """Open ``artifact`` (``.onnx``, ``.plan`` or a checkpoint); ``reference`` runs its PyTorch weights."""
        artifact = Path(artifact)
        if artifact.suffix.lower() in CHECKPOINT_SUFFIXES:
            from csfm_edge.runtime.backends.torch_ref import open_checkpoint

            return cls(*open_checkpoint(artifact))
        manifest = read_manifest(artifact)
        if reference:
            from csfm_edge.runtime.backends.torch_ref import TorchBackend

            return cls(TorchBackend.for_manifest(manifest, checkpoint), manifest)
        return cls(open_backend(artifact, manifest, provider), manifest)

    def _check_outputs(self) -> None:
        """One probe inference: the artifact's output widths must be what its manifest claims."""
        batch, channels, time_len = probe_shape(self.manifest.profiles)
        probe = self.backend.run(SPEC.example_feed(batch, PROBE_LEADS[:channels], time_len))
        for name, tensor in self.manifest.outputs.items():
            if name not in probe or probe[name].shape[1:] != (tensor.width,):
                got = probe[name].shape[1:] if name in probe else "missing"
                raise ArtifactError(f"artifact output {name!r} is {got}, but its manifest claims CSFM "
                                    f"{self.model.size} with width {tensor.width}: artifact and manifest disagree")

    def info(self) -> dict:
        return {**self.backend.describe(), "precision": self.precision, "size": self.model.size,
                "head_classes": self.model.head_classes, "weights": self.manifest.weights.source}

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- model inputs -------------------------------------------------------------------------

    def run(self, signal: np.ndarray, channel_ids) -> dict[str, np.ndarray]:
        """Preprocessed ``signal`` float32 [B, C, T] and ``channel_ids`` [C] -> ``features`` (and ``logits``)."""
        signal = np.asarray(signal)
        if signal.ndim != 3:
            raise CsfmError(f"run() takes preprocessed windows [batch, channels, time], got shape {signal.shape}")
        ids = resolve_leads(list(np.asarray(channel_ids).tolist()) if not isinstance(channel_ids, str)
                            else channel_ids)
        if len(ids) != signal.shape[1]:
            raise CsfmError(f"{signal.shape[1]} channels but {len(ids)} channel ids")
        check_window_length(signal.shape[2])
        if not np.isfinite(signal).all():
            raise CsfmError("preprocessed windows contain NaN or inf")
        return self.backend.run(SPEC.feed(signal, ids))

    # --- raw recordings -----------------------------------------------------------------------

    def embed(self, signal: np.ndarray | Sequence[np.ndarray], fs: float | Sequence[float], leads, *,
              hop_s: float = 10.0, batch_size: int = 16, max_gap_s: float = 0.1) -> EmbedResult:
        """A raw recording of any length and rate -> per-window outputs with flags, plus an aggregate.

        ``signal`` is [C, N] at ``fs`` Hz, or one 1-D array per lead with ``fs`` one rate per lead
        (aligned at their start). Recordings longer than 10 s become windows every ``hop_s``;
        shorter ones are zero-padded as the authors do (with a warning under 5 s). Windows touching a
        flat channel or a gap are flagged and left out of the aggregate, never silently averaged in.
        """
        ids = resolve_leads(leads)
        names = lead_names(ids)
        if isinstance(fs, (list, tuple, np.ndarray)):
            aligned, fills = align_rates(list(signal), list(fs), names, max_gap_s, long_gaps="flag")
            windows = sliding_windows(aligned, SAMPLE_RATE_HZ, ids, hop_s=hop_s, ppg_order=self.ppg_order)
            windows = replace(windows, fills=tuple(fills))
        else:
            windows = sliding_windows(signal, fs, ids, hop_s=hop_s, ppg_order=self.ppg_order, max_gap_s=max_gap_s,
                                      long_gaps="flag")
        never = np.flatnonzero(windows.flat.all(axis=0))
        if never.size:  # flat in every window: nothing of that lead was recorded (as preprocess refuses)
            raise FlatChannelError("flat for the whole recording: lead off or disconnected?", names[never[0]])
        if windows.signal_s < SHORT_RECORD_S:
            warnings.warn(f"record is only {windows.signal_s:.1f} s: its window is mostly zero padding",
                          SignalWarning, stacklevel=2)
        outputs: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(windows.data), batch_size):
            for name, value in self.run(windows.data[start: start + batch_size], ids).items():
                outputs.setdefault(name, []).append(value)
        features = np.concatenate(outputs[SPEC.features])
        logits = np.concatenate(outputs[SPEC.logits]) if SPEC.logits in outputs else None
        result = EmbedResult(features, logits, windows.start_s, windows.flags(names), names)
        clean = result.clean
        result.aggregate = {
            "windows": len(clean), "clean_windows": int(clean.sum()),
            "features": features[clean].mean(axis=0) if clean.any() else None,
            "logits": logits[clean].mean(axis=0) if logits is not None and clean.any() else None,
        }
        return result

    def stream(self, fs: float, leads, *, window_s: float = 10.0, hop_s: float = 1.0) -> Stream:
        return Stream(self, fs, leads, window_s=window_s, hop_s=hop_s)


class Stream:
    """Live scoring: ``push`` chunks of any size; one result per hop once a window is full.

    The last ``window_s`` seconds sit in a ring buffer (nothing older is kept or re-copied); each
    result filters its own window as the preprocessing defines. Latency runs from the arrival of the
    window's last sample to the result; a result later than one hop is marked ``behind`` and warned
    about, so falling behind is never silent.
    """

    def __init__(self, session: Session, fs: float, leads, *, window_s: float = 10.0, hop_s: float = 1.0):
        if not 0 < window_s <= WINDOW_SAMPLES / SAMPLE_RATE_HZ:
            raise CsfmError(f"window_s must be in (0, {WINDOW_SAMPLES / SAMPLE_RATE_HZ:g}] s, got {window_s}")
        if not 0 < hop_s:
            raise CsfmError(f"hop_s must be > 0, got {hop_s}")
        self.session = session
        self.fs = float(fs)
        self.ids = resolve_leads(leads)
        self.window = int(round(window_s * self.fs))
        self.hop = max(int(round(hop_s * self.fs)), 1)
        self.hop_s = hop_s
        self.ring = np.zeros((len(self.ids), self.window), np.float64)
        self.total = 0  # samples pushed so far
        self.next_emit = self.window
        self.latencies: list[float] = []
        self.behind_count = 0

    def push(self, chunk: np.ndarray) -> list[StreamResult]:
        """Add samples [C, n] (or [n] for one lead); return the results of every hop they complete."""
        arrived = time.perf_counter()
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim == 1 and len(self.ids) == 1:
            chunk = chunk[None, :]
        if chunk.ndim != 2 or chunk.shape[0] != len(self.ids):
            raise CsfmError(f"chunk must be [{len(self.ids)}, samples], got shape {chunk.shape}")
        results = []
        position = 0
        while position < chunk.shape[1]:
            take = min(chunk.shape[1] - position, self.next_emit - self.total)
            self._write(chunk[:, position: position + take])
            position += take
            if self.total == self.next_emit:
                results.append(self._emit(arrived))
                self.next_emit += self.hop
        return results

    def _write(self, block: np.ndarray) -> None:
        n = block.shape[1]
        if n >= self.window:
            self.ring[:] = block[:, -self.window:]
        else:
            start = self.total % self.window
            first = min(n, self.window - start)
            self.ring[:, start: start + first] = block[:, :first]
            self.ring[:, : n - first] = block[:, first:]
        self.total += n

    def _emit(self, arrived: float) -> StreamResult:
        split = self.total % self.window
        window = np.concatenate([self.ring[:, split:], self.ring[:, :split]], axis=1)
        result = self.session.embed(window, self.fs, self.ids, hop_s=self.window / self.fs)
        latency = time.perf_counter() - arrived
        behind = latency > self.hop_s
        self.latencies.append(latency)
        if behind:
            self.behind_count += 1
            warnings.warn(f"stream result {latency:.3f} s after its data, longer than the {self.hop_s:g} s hop: "
                          "this machine is not keeping up", StreamLagWarning, stacklevel=3)
        logits = result.logits[-1] if result.logits is not None else None
        return StreamResult(self.total / self.fs, result.features[-1], logits, result.flags[-1], latency, behind)

    def latency_summary(self) -> dict:
        lat = np.asarray(self.latencies) if self.latencies else np.zeros(1)
        return {"results": len(self.latencies), "p50_s": float(np.percentile(lat, 50)),
                "p99_s": float(np.percentile(lat, 99)), "behind": self.behind_count}



