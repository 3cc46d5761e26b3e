"""Scoring many recordings with one open model: files and folders in, one Parquet table out.

The model is opened once. Reading and preprocessing run in worker threads (NumPy/SciPy release the
GIL) a few records ahead of the engine, which scores on the calling thread, so the engine rarely
waits. Every scored record is written at once as its own part file, so an interrupted batch loses
nothing scored and ``resume`` continues it; the parts are joined into the table (streamed, not
held in memory) and removed when the batch ends. A record that fails is listed with its one-line
reason and the others are scored.

The pieces here (listing, parts, preparing, scoring, joining) are also those of the Ray engine
(:mod:`csfm_edge.recordings.ray_engine`), so both engines write the same table.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from csfm_edge import __version__
from csfm_edge.errors import CsfmError, InputFileError, OutputError
from csfm_edge.fileio import exclusive, sha256_of, write_atomically
from csfm_edge.recordings.readers import READABLE_SUFFIXES, Recording, check_recording_file, read_recording
from csfm_edge.runtime.backends import BackendOptions
from csfm_edge.runtime.session import MAX_WINDOWS, EmbedResult, Prepared, Preprocessor, Session, long_record_plan

PARTS_SUFFIX = ".parts"


def find_recordings(inputs: Sequence[str | Path], recursive: bool = False) -> list[Path]:
    """Each input file, and every readable recording in each input folder (descending where ``recursive``)."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            pattern = item.rglob("*") if recursive else item.iterdir()
            # every entry named as a recording, even one that is no regular file (a broken symlink, a symlink
            # loop, a FIFO): it fails with its reason in the errors file instead of being skipped unsaid
            found += sorted(p for p in pattern if p.suffix.lower() in READABLE_SUFFIXES and not p.is_dir())
        elif item.exists():
            found.append(item)
        else:
            raise InputFileError(f"{item} is a broken symlink or a symlink loop" if item.is_symlink()
                                 else f"{item} does not exist")
    if not found:
        raise InputFileError(f"no recordings ({', '.join(READABLE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return list(dict.fromkeys(found))


def list_records(request: BatchRequest) -> list[Path]:
    """The batch's recordings (:func:`find_recordings`) by absolute path: the table says where each file is
    wherever the table is read, and a Ray worker on another machine has no working folder of the user's."""
    return [p.absolute() for p in find_recordings(request.inputs, request.recursive)]


@dataclass
class BatchRequest:
    artifact: Path
    inputs: list[Path]
    out: Path | None = None  # .parquet, or a folder for a dataset (see is_dataset); None: the summary only
    recursive: bool = False
    fs: float | None = None
    leads: list[str] | None = None
    lead_map: Mapping[str, str] | None = None
    hop_s: float = 10.0
    strict: bool = False
    max_windows: int = MAX_WINDOWS
    options: BackendOptions = field(default_factory=BackendOptions)
    resume: bool = False
    workers: int = 2
    progress: bool = True
    trust: Path | None = None  # open the artifact only if signed (see csfm_edge.runtime.trust)


@dataclass
class BatchSummary:
    records: int
    scored: int = 0
    windows: int = 0
    skipped: int = 0  # already scored by an interrupted run (resume)
    redone: int = 0  # parts of an interrupted run found damaged, removed and scored again
    failed: list[dict] = field(default_factory=list)  # {"path", "error"}
    nodes: dict[str, int] = field(default_factory=dict)  # Ray engine: records scored per node id

    @property
    def exit_status(self) -> int:
        """0: every record scored; 2: some failed; 1: none was scored."""
        if not self.failed:
            return 0
        return 1 if self.scored + self.skipped == 0 else 2


def errors_path(out: Path) -> Path:
    return out.with_name(out.stem + ".errors.json")


def is_dataset(out: Path) -> bool:
    """``--out DIR/``: a folder of Parquet files (a dataset for pyarrow, DuckDB, Spark), not one ``.parquet``."""
    return out.suffix.lower() != ".parquet"


def parts_folder(out: Path) -> Path:
    return out.with_name(out.name + PARTS_SUFFIX)


def part_name(index: int, digest: str) -> str:
    """A record's part: named by its place in the listing and its file's hash, so writing it again (resume,
    or a task retried after a worker died) replaces it rather than adding a second copy."""
    return f"{index:07d}-{digest[:16]}.parquet"


def find_parts(request: BatchRequest) -> tuple[Path | None, bool]:
    """The parts folder of ``request.out`` (None without ``out``) and whether an interrupted run left it,
    which only ``resume`` may continue."""
    if request.out is None:
        return None, False
    parts = parts_folder(request.out)
    if parts.exists() and not request.resume:
        raise CsfmError(f"{parts} holds an interrupted run: pass --resume to continue it, or remove it")
    return parts, parts.exists()


def open_parts(parts: Path, resuming: bool, request: BatchRequest, artifact_sha256: str) -> tuple[set[str], int]:
    """Ready the parts folder once work starts: a resumed one must have been made with the same artifact and
    settings, and its damaged parts are removed; a new one is made with the settings. Returns the intact
    parts' names and how many damaged ones were removed."""
    if resuming:
        _check_resumable(parts, _settings(request, artifact_sha256))
        return _intact_parts(parts)
    parts.mkdir()
    try:
        write_atomically(parts / SETTINGS, json.dumps(_settings(request, artifact_sha256)).encode())
    except OutputError as exc:
        _give_up(parts, False, str(exc))
    return set(), 0


def prepare_record(preparer: Session | Preprocessor, index: int, path: Path, request: BatchRequest, done: set[str]
                   ) -> tuple[Recording, Prepared | None, str] | None:
    """Read and preprocess one record (in a worker thread or a Ray task); None where an earlier run scored it.
    A long record is only read (``Prepared`` None): :func:`score_record` scores it segment by segment."""
    digest = sha256_of(check_recording_file(path))
    if part_name(index, digest) in done:
        return None
    recording = read_recording(path, request.fs, request.leads, request.lead_map)
    if long_record_plan(recording.signal, recording.fs, recording.leads, request.hop_s) is not None:
        return recording, None, digest
    prepared = preparer.prepare(recording.signal, recording.fs, recording.leads, hop_s=request.hop_s,
                                strict=request.strict, max_windows=request.max_windows)
    return recording, prepared, digest


def score_record(session: Session, recording: Recording, prepared: Prepared | None, request: BatchRequest
                 ) -> EmbedResult:
    """A prepared record through the model; a long one (``prepared`` None) segment by segment."""
    if prepared is not None:
        return session.score(prepared)
    return session.embed(recording.signal, recording.fs, recording.leads, hop_s=request.hop_s, strict=request.strict,
                         max_windows=request.max_windows)


# What reading or scoring one record may raise, failing that record alone (a file no reader understands).
RECORD_ERRORS = (CsfmError, OSError, ValueError)


def failure(path: Path | str, exc: BaseException) -> dict:
    """A record that could not be scored, as the errors file lists it."""
    return {"path": str(path), "error": str(exc).splitlines()[0]}


def records_bar(total: int, enabled: bool = True):
    """The batch's progress bar (tqdm on stderr); in a log, a line every 10 s rather than a redraw."""
    from tqdm import tqdm

    return tqdm(total=total, unit="rec", disable=not enabled, dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 10.0)


def table_metadata(request: BatchRequest, artifact_sha256: str, model: dict) -> dict:
    """What the table says of its making (Parquet schema metadata)."""
    return {"artifact": str(request.artifact), "artifact_sha256": artifact_sha256, "csfm_edge": __version__,
            "hop_s": request.hop_s, "model": model}


def finish_table(out: Path, parts: Path, resuming: bool, metadata: dict, outputs, failed: list[dict]) -> None:
    """The parts joined into ``out`` (one file, or a dataset folder), the errors file beside it, the parts removed."""
    from csfm_edge.recordings.table import join_parts, write_dataset

    try:
        (write_dataset if is_dataset(out) else join_parts)(sorted(parts.glob("*.parquet")), out, metadata, outputs)
    except OSError as exc:
        _give_up(parts, resuming, f"cannot write {out}: {exc.strerror or exc}")
    try:
        write_atomically(errors_path(out), (json.dumps(failed, indent=1) + "\n").encode())
    except OutputError as exc:
        shutil.rmtree(out) if out.is_dir() else out.unlink()  # the table without its errors file hides failures
        _give_up(parts, resuming, str(exc))
    shutil.rmtree(parts)


def _ahead(pool: ThreadPoolExecutor, work: Callable[[int, Path], object], paths: list[tuple[int, Path]],
           depth: int) -> Iterator[tuple[int, Path, Future]]:
    """Submit work a few records ahead of the consumer, so memory holds at most ``depth`` prepared records."""
    queue: deque = deque()
    for index, path in paths:
        queue.append((index, path, pool.submit(work, index, path)))
        if len(queue) >= depth:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def run_batch(request: BatchRequest, session: Session | None = None) -> BatchSummary:
    """Score every recording of ``request.inputs``; write the table (and its errors file) when ``out`` is set.

    While it writes ``out`` the run holds a lock beside it: a second run on the same ``out`` is refused at once."""
    if request.out is None:
        return _run_batch(request, session)
    import pyarrow  # noqa: F401  (the table extra: missing, it fails here, before any file is made)

    with exclusive(request.out):
        return _run_batch(request, session)


def _run_batch(request: BatchRequest, session: Session | None) -> BatchSummary:
    paths = list_records(request)
    summary = BatchSummary(len(paths))
    parts, resuming = find_parts(request)
    own_session = session is None
    session = session or Session.open(request.artifact, request.options, trust=request.trust)
    # the manifest's sha256 was just checked against the file when the session opened it: no second hash
    artifact_sha256 = session.manifest.file.sha256 if session.manifest.file else sha256_of(request.artifact)
    done: set[str] = set()
    try:
        if parts is not None:
            done, summary.redone = open_parts(parts, resuming, request, artifact_sha256)
        bar = records_bar(len(paths), request.progress)
        with ThreadPoolExecutor(max(request.workers, 1)) as pool:
            for index, path, future in _ahead(pool, lambda i, p: prepare_record(session, i, p, request, done),
                                              list(enumerate(paths)), 2 * max(request.workers, 1)):
                try:
                    prepared_record = future.result()
                    if prepared_record is None:
                        summary.skipped += 1
                        bar.update()
                        continue
                    recording, prepared, digest = prepared_record
                    result = score_record(session, recording, prepared, request)
                except RECORD_ERRORS as exc:
                    summary.failed.append(failure(path, exc))
                    bar.update()
                    continue
                summary.scored += 1
                summary.windows += len(result.start_s)
                if parts is not None:
                    write_part(parts / part_name(index, digest), path, digest, recording, result, artifact_sha256,
                               session, resuming)
                bar.update()
                bar.set_postfix(windows=summary.windows, failed=len(summary.failed))
        bar.close()
        if request.out is not None:
            finish_table(request.out, parts, resuming, table_metadata(request, artifact_sha256, session.info()),
                         session.manifest.outputs, summary.failed)
    finally:
        if own_session:
            session.close()
    return summary


def write_part(target: Path, path: Path, digest: str, recording: Recording, result: EmbedResult,
                artifact_sha256: str, session: Session, resuming: bool) -> None:
    """One record's rows, written under a temporary name and renamed: a part is whole or absent."""
    import pyarrow.parquet as pq

    from csfm_edge.recordings.table import record_table

    table = record_table(str(path), digest, recording, result, artifact_sha256, session.manifest.outputs)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, target)
    except OSError as exc:  # disk full, quota: one line, never a traceback
        tmp.unlink(missing_ok=True)
        _give_up(target.parent, resuming, f"cannot write {target.name}: {exc.strerror or exc}")


def _give_up(parts: Path, resuming: bool, why: str) -> None:
    """A write failed (disk full): remove what this run started, keep what an earlier run scored, say which."""
    if not resuming:
        shutil.rmtree(parts, ignore_errors=True)
        raise OutputError(f"{why}: nothing kept; free space and run again")
    for tmp in parts.glob(".*.tmp*"):
        tmp.unlink(missing_ok=True)
    raise OutputError(f"{why}: the records scored so far stay in {parts}; free space and --resume again")


SETTINGS = "settings.json"  # in the parts folder: what the run scored with, so --resume cannot mix two


def _settings(request: BatchRequest, artifact_sha256: str) -> dict:
    """Everything that changes a row: the artifact's hash and every setting of the reading and the windowing."""
    return {"artifact_sha256": artifact_sha256, "csfm_edge": __version__, "hop_s": request.hop_s,
            "fs": request.fs, "leads": request.leads,
            "lead_map": dict(request.lead_map) if request.lead_map is not None else None,
            "strict": request.strict, "max_windows": request.max_windows}


def _check_resumable(parts: Path, now: dict) -> None:
    """Refuse to resume a run made with another artifact or other settings: one table must not mix two."""
    try:
        before = json.loads((parts / SETTINGS).read_text())
    except (OSError, ValueError):
        raise CsfmError(f"{parts} has no readable {SETTINGS}: what the interrupted run scored with is unknown; "
                        "remove the folder and run again") from None
    names = {"artifact_sha256": "artifact", "csfm_edge": "csfm-edge version", "hop_s": "--hop", "fs": "--fs",
             "leads": "--leads", "lead_map": "--lead-map", "strict": "--strict", "max_windows": "--max-windows"}
    differing = [f"{names.get(k, k)} ({before.get(k)!r}, now {now.get(k)!r})" for k in names
                 if before.get(k) != json.loads(json.dumps(now.get(k)))]
    if differing:
        raise CsfmError(f"--resume: the interrupted run in {parts} used another {', '.join(differing)}: resume with "
                        "the same artifact and settings, or remove the folder to start again")


def _intact_parts(parts: Path) -> tuple[set[str], int]:
    """The names of the parts that read back whole; damaged ones (truncated, overwritten) are removed and their
    records scored again. Returns (intact names, how many were removed)."""
    import pyarrow.parquet as pq

    for tmp in parts.glob(".*.tmp*"):  # a write a hard kill interrupted
        tmp.unlink(missing_ok=True)
    intact, redone = set(), 0
    for part in sorted(parts.glob("*.parquet")):
        try:
            pq.read_metadata(part)
            intact.add(part.name)
        except Exception:  # pyarrow raises ArrowInvalid, OSError ... for a file that is not whole
            part.unlink()
            redone += 1
    return intact, redone
