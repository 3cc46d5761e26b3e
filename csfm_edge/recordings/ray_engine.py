"""Scoring an archive on a Ray cluster (``csfm-edge run --engine ray``): the same table as in process.

Ray Data runs the batch as a stream. The driver lists the recordings with the same discovery as
:func:`~csfm_edge.recordings.batch.run_batch` and hands out their paths; Ray tasks read and window
them with the package's readers and a :class:`~csfm_edge.runtime.session.Preprocessor` (no model
loaded there); a pool of actors, one :class:`~csfm_edge.runtime.Session` each, scores them and writes
each record's part file beside ``--out``; the driver joins the parts as in process. Only one short
summary row per record comes back to the driver, so its memory does not grow with the archive.

A part is named by the record's place in the listing and its file's hash and is renamed into place
whole, so when a worker dies and Ray runs its task again, the same part is written again: nothing is
lost and nothing enters the table twice. CPUs are asked for in fractions, so the actors can never
hold every CPU and starve the reader tasks (on a 2-CPU machine, one whole CPU per actor stalled a run
for good). Parts are written by the actors, wherever they run: on a cluster, inputs and ``--out``
must sit on storage every node mounts at the same path.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import shutil
import signal
import socket
import tempfile
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import csfm_edge
from csfm_edge.errors import ClusterError, CsfmError, ParameterError
from csfm_edge.fileio import exclusive, sha256_of
from csfm_edge.recordings.batch import (
    RECORD_ERRORS,
    BatchRequest,
    BatchSummary,
    failure,
    find_parts,
    finish_table,
    list_records,
    open_parts,
    part_name,
    prepare_record,
    records_bar,
    score_record,
    table_metadata,
    write_part,
)
from csfm_edge.recordings.readers import read_recording
from csfm_edge.runtime.backends import is_checkpoint
from csfm_edge.runtime.manifest import read_manifest
from csfm_edge.runtime.session import Preprocessor, Session
from csfm_edge.runtime.trust import verify_artifact

# CPU claims, fractional (see the module's docstring) and unequal: Ray Data fuses a task stage into the next
# actor stage when their claims are equal, which would read and window records in the model's process.
READER_CPUS = 0.25  # a reader task
SCORER_CPUS = 0.5  # an actor (its GPU share is --gpus-per-worker)
RECORDS_PER_READ = 16  # records one reader task prepares
RECORDS_PER_SCORE = 4  # records an actor scores per call: what a killed actor's retry repeats
CONNECT_TIMEOUT_S = 10.0  # ray.init retries an unreachable address for minutes: probe it first


@dataclass(frozen=True)
class RayOptions:
    """Where a Ray run goes and how wide."""

    address: str | None = None  # a running cluster (HOST:PORT, ray://HOST:PORT, auto); None: a local Ray
    workers: int = 1  # scoring actors, one Session each
    gpus_per_worker: float = 0.0  # each actor's GPU share (0.25: four actors to a GPU)


def run_ray_batch(request: BatchRequest, options: RayOptions) -> BatchSummary:
    """:func:`~csfm_edge.recordings.batch.run_batch` on Ray: the same recordings, table, errors file and summary.

    Without ``options.address`` a local Ray is started for the run and stopped after, also on Ctrl-C;
    where this process is already connected to Ray (``ray.init`` by the caller), that connection is used.
    While it writes ``out`` the run holds the same lock beside it as in process."""
    if options.workers < 1:
        raise ParameterError(f"--workers must be at least 1 scoring actor, not {options.workers}")
    if not (options.gpus_per_worker >= 0 and math.isfinite(options.gpus_per_worker)):
        raise ParameterError(f"--gpus-per-worker must be a GPU share >= 0, not {options.gpus_per_worker}")
    if is_checkpoint(request.artifact):
        raise ParameterError("--engine ray scores exported artifacts (.onnx, .plan); a checkpoint (the PyTorch "
                             "reference) runs in process")
    if request.out is None:
        return _run_ray_batch(request, options)
    import pyarrow  # noqa: F401  (the table extra: missing, it fails here, before any file is made)

    with exclusive(request.out):
        return _run_ray_batch(request, options)


def _run_ray_batch(request: BatchRequest, options: RayOptions) -> BatchSummary:
    paths = list_records(request)
    # refused before Ray starts: an artifact whose signature does not verify, a missing or corrupt one
    anchor = verify_artifact(request.artifact, request.trust)
    manifest = read_manifest(request.artifact)
    artifact_sha256 = manifest.file.sha256 if manifest.file else sha256_of(request.artifact)
    summary = BatchSummary(len(paths))
    parts, resuming = find_parts(request)
    # what the workers get: paths that mean the same on every node, the trust anchor resolved here
    remote = replace(request, artifact=request.artifact.absolute(), trust=anchor)
    failed: list[tuple[int, dict]] = []
    model: dict = {}  # what the actors report of their Session: for the table's metadata
    with ray_connection(options) as ray, warnings.catch_warnings():
        # Ray Data's guess, at the start, that a short list could not keep every actor busy (they all get work)
        warnings.filterwarnings("ignore", "The minimum number of concurrent actors", UserWarning)
        _check_resources(ray, options)
        done: set[str] = set()
        if parts is not None:
            done, summary.redone = open_parts(parts, resuming, request, artifact_sha256)
        rows = _pipeline(ray, remote, options, manifest, paths, parts, resuming, done).iter_rows()
        bar = records_bar(len(paths), request.progress)
        try:
            for row in rows:
                if row["status"] == "fatal":  # a worker's error that stops the run: its one line, here
                    if parts is not None and not resuming:  # as in process: a new run keeps nothing
                        shutil.rmtree(parts, ignore_errors=True)
                    raise pickle.loads(row["fatal"])
                if row["status"] == "scored":
                    summary.scored += 1
                    summary.windows += row["windows"]
                    summary.nodes[row["node"]] = summary.nodes.get(row["node"], 0) + 1
                elif row["status"] == "skipped":
                    summary.skipped += 1
                else:
                    failed.append((row["index"], {"path": row["path"], "error": row["error"]}))
                model = model or json.loads(row["model"])
                bar.update()
                bar.set_postfix(windows=summary.windows, failed=len(failed))
        finally:
            bar.close()
    summary.failed = [f for _, f in sorted(failed, key=lambda pair: pair[0])]  # listing order, as in process
    if request.out is not None:
        finish_table(request.out, parts, resuming, table_metadata(request, artifact_sha256, model),
                     manifest.outputs, summary.failed)
    return summary


@contextmanager
def ray_connection(options: RayOptions) -> Iterator:
    """The ``ray`` module, connected: to this process's connection, to ``options.address``, or to a local Ray
    started here (its own temporary folder, stopped and removed on leaving, Ctrl-C and SIGTERM included)."""
    import ray
    import ray.data  # sets up Ray Data's loggers, which _quiet_ray_logs then turns down

    _quiet_ray_logs()
    if ray.is_initialized():
        yield ray
        return
    temp = None
    try:
        if options.address is None:
            temp = tempfile.mkdtemp(prefix="csfm-ray-")
            # at least the CPUs the actors and one reader task claim, so a small machine cannot starve itself
            cpus = max(os.cpu_count() or 1, math.ceil(options.workers * SCORER_CPUS + READER_CPUS))
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, _temp_dir=temp,
                     logging_level=logging.WARNING, runtime_env=runtime_env())
        else:
            _probe(options.address)
            try:
                ray.init(address=options.address, logging_level=logging.WARNING, runtime_env=runtime_env())
            except ConnectionError as exc:
                raise ClusterError(f"cannot join the Ray cluster at {options.address}: "
                                   f"{str(exc).splitlines()[0]}") from None
        with _terminate_as_interrupt():
            yield ray
    finally:
        ray.shutdown()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's or ``kill``'s stop) handled as Ctrl-C: Ray is stopped, the parts are kept for
    ``--resume``. Ray's own handler, installed by ``ray.init``, would end the process at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def runtime_env() -> dict:
    """Ray's ``runtime_env`` for a connection that runs these tasks: workers import this very copy of
    csfm_edge (uploaded to the cluster), whatever a node has installed."""
    return {"py_modules": [str(Path(csfm_edge.__file__).parent)]}


def _probe(address: str) -> None:
    """A one-line error at once for an address nothing answers on (``ray.init`` would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and the like: ray.init answers those itself, at once
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


def _quiet_ray_logs() -> None:
    """Ray Data's per-run INFO lines and its notice that its own progress bars are off (ours is on)."""
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)  # a notice on every local start


def _check_resources(ray, options: RayOptions) -> None:
    """Refuse a pool the cluster cannot hold now: Ray Data would wait for it without end."""
    have = ray.cluster_resources()
    cpus = options.workers * SCORER_CPUS + READER_CPUS
    if have.get("CPU", 0) < cpus:
        raise ClusterError(f"{options.workers} scoring actors and a reader need {cpus:g} CPUs; the Ray cluster has "
                           f"{have.get('CPU', 0):g}: pass fewer --workers")
    gpus = options.workers * options.gpus_per_worker
    if gpus > have.get("GPU", 0):
        raise ClusterError(f"{options.workers} workers x --gpus-per-worker {options.gpus_per_worker:g} need {gpus:g} "
                           f"GPUs; the Ray cluster has {have.get('GPU', 0):g}")


def _pipeline(ray, request: BatchRequest, options: RayOptions, manifest, paths: list[Path], parts: Path | None,
              resuming: bool, done: set[str]):
    """The Ray Data stream: listed paths -> reader tasks -> scoring actors -> one summary row per record."""
    earlier: dict[int, list[str]] = {}
    for name in done:  # parts of an interrupted run, by record index
        earlier.setdefault(int(name.split("-")[0]), []).append(name)
    items = [{"index": i, "path": str(p), "done": earlier.get(i, [])} for i, p in enumerate(paths)]
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours counts records, not blocks
    context.print_on_execution_start = False
    # blocks of RECORDS_PER_READ, and enough of them that a short list still reaches every actor
    blocks = max(math.ceil(len(items) / RECORDS_PER_READ), min(len(items), 4 * options.workers))
    data = ray.data.from_items(items, override_num_blocks=blocks)
    data = data.map_batches(_read, fn_kwargs={"request": request, "preprocessor": Preprocessor.for_manifest(manifest)},
                            batch_size=RECORDS_PER_READ, batch_format="pyarrow", num_cpus=READER_CPUS)
    return data.map_batches(_Scorer, fn_constructor_kwargs={"request": request, "parts": parts, "resuming": resuming},
                            batch_size=RECORDS_PER_SCORE, batch_format="pyarrow", num_cpus=SCORER_CPUS,
                            num_gpus=options.gpus_per_worker or None,
                            compute=ray.data.ActorPoolStrategy(size=options.workers))


def _read(batch, request: BatchRequest, preprocessor: Preprocessor):
    """Reader task: each record hashed, read and windowed (a long one only checked: its actor reads it in
    segments), as a row carrying the pickled record for the actors."""
    import pyarrow as pa

    rows = []
    for item in batch.to_pylist():
        index, path = item["index"], Path(item["path"])
        row = {"index": index, "path": item["path"], "status": "ready", "error": None, "digest": None, "payload": None}
        try:
            prepared_record = prepare_record(preprocessor, index, path, request, set(item["done"]))
        except RECORD_ERRORS as exc:
            rows.append({**row, "status": "failed", "error": failure(path, exc)["error"]})
            continue
        if prepared_record is None:
            rows.append({**row, "status": "skipped"})
            continue
        recording, prepared, digest = prepared_record
        light = replace(recording, signal=np.empty((0, 0), np.float32))  # the table needs its rates and leads only
        rows.append({**row, "digest": digest, "payload": pickle.dumps((light, prepared), pickle.HIGHEST_PROTOCOL)})
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("index", pa.int64()), ("path", pa.string()), ("status", pa.string()), ("error", pa.string()),
        ("digest", pa.string()), ("payload", pa.binary())]))


class _Scorer:
    """Scoring actor: one Session; scores each prepared record and writes its part.

    A csfm-edge error that stops the run (no such provider or GPU on this node, a signature that does not
    verify, a disk full) is not raised here, where Ray would retry and wrap it in pages of its own
    tracebacks: it goes back in a ``fatal`` row, and the driver raises it."""

    def __init__(self, request: BatchRequest, parts: Path | None, resuming: bool):
        import ray

        self.request, self.parts, self.resuming = request, parts, resuming
        self.node = ray.get_runtime_context().get_node_id()
        self.fatal: CsfmError | None = None
        try:
            self.session = Session.open(request.artifact, request.options, trust=request.trust)
        except CsfmError as exc:
            self.fatal = exc
            return
        manifest = self.session.manifest
        self.artifact_sha256 = manifest.file.sha256 if manifest.file else sha256_of(request.artifact)
        self.model = json.dumps(self.session.info(), default=str)

    def __call__(self, batch):
        import pyarrow as pa

        rows = []
        for item in batch.to_pylist():
            row = {"index": item["index"], "path": item["path"], "status": item["status"], "error": item["error"],
                   "windows": 0, "fatal": None}
            if self.fatal is None and item["status"] == "ready":
                try:
                    row.update(self._score(item))
                except CsfmError as exc:  # a part that cannot be written (see write_part)
                    self.fatal = exc
            if self.fatal is not None:
                row.update(status="fatal", fatal=pickle.dumps(self.fatal))
            rows.append({**row, "node": self.node, "model": None if self.fatal else self.model})
        return pa.Table.from_pylist(rows, schema=pa.schema([
            ("index", pa.int64()), ("path", pa.string()), ("status", pa.string()), ("error", pa.string()),
            ("windows", pa.int64()), ("fatal", pa.binary()), ("node", pa.string()), ("model", pa.string())]))

    def _score(self, item: dict) -> dict:
        path, digest = Path(item["path"]), item["digest"]
        recording, prepared = pickle.loads(item["payload"])
        try:
            if prepared is None:  # a long record: read here again, lazily, and scored segment by segment
                recording = read_recording(path, self.request.fs, self.request.leads, self.request.lead_map)
            result = score_record(self.session, recording, prepared, self.request)
        except RECORD_ERRORS as exc:
            return {"status": "failed", "error": failure(path, exc)["error"]}
        if self.parts is not None:
            write_part(self.parts / part_name(item["index"], digest), path, digest, recording, result,
                       self.artifact_sha256, self.session, self.resuming)
        return {"status": "scored", "windows": len(result.start_s)}
