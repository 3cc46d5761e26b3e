"""File hashing and atomic writes: the only ways csfm-edge writes a file a user keeps.

A file is written under a temporary name in its own folder and renamed into place, so an interrupted
write never leaves half a file behind and never replaces a good file with a broken one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from csfm_edge.errors import OutputError


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename: no half-written file survives, and a failed
    write (disk full) is an :class:`OutputError`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:  # disk full, quota, read-only: one line, and nothing half-written is left
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def check_output(path: str | Path, *, protected: list[Path], force: bool = False, flag: str = "--out") -> Path:
    """Refuse, before any work, an output that would destroy something: one of the ``protected`` files
    (inputs, artifacts, manifests), an existing file without ``force``, a folder, or a path whose folder
    is missing or not writable. Return the path; ``flag`` names it in the messages."""
    path = Path(path)
    for kept in protected:
        if _same_file(path, Path(kept)) or os.path.realpath(path) == os.path.realpath(kept):  # realpath: loops too
            raise OutputError(f"{flag} {path} is {kept}, an input of this run: refusing to overwrite it")
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; name a file")
    if path.exists() and not force:
        raise OutputError(f"{flag} {path} already exists: pass --force to replace it")
    _check_writable_folder(path, flag)
    return path


def _check_writable_folder(path: Path, flag: str) -> None:
    """The folder ``path`` would be written in exists and takes new files."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{flag} {path}: folder {folder} does not exist")
    _probe_writable(folder, f"{flag} {path}")


def _probe_writable(folder: Path, what: str) -> None:
    """A file can be made in ``folder`` (permissions, read-only mounts, immutable folders), or one line."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"{what}: folder {folder} is not writable ({exc.strerror or exc})") from None


def check_dataset_output(path: str | Path, *, protected: list[Path], force: bool = False, flag: str = "--out"
                         ) -> Path:
    """As :func:`check_output`, for an output that is a folder of Parquet files (a dataset): refuse a file, a
    folder that holds anything without ``force``, and, even with ``force``, one that holds anything but
    Parquet files (it is not a dataset csfm-edge wrote) or a ``protected`` file. Return the path."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} is a file; a dataset is a folder (name a new one, or a .parquet file)")
    held = sorted(path.iterdir()) if path.is_dir() else []
    inside = [kept for kept in protected if path.resolve() in Path(kept).resolve().parents]
    if inside:
        raise OutputError(f"{flag} {path} holds {inside[0]}, an input of this run: refusing to replace it")
    if held and not force:
        raise OutputError(f"{flag} {path} already holds files: pass --force to replace them")
    foreign = [p.name for p in held if p.is_dir() or p.suffix.lower() != ".parquet"]
    if foreign:
        raise OutputError(f"{flag} {path} holds {foreign[0]!r}, which is not part of a dataset: refusing to replace "
                          "the folder; name a new one")
    _check_writable_folder(path, flag)
    return path


def check_output_folder(folder: str | Path, *, flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder that is a file or cannot be made or written in (its nearest
    existing ancestor decides). Return the folder; nothing is created."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {folder} is a file, not a folder: name a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{flag} {folder}: {existing} is a file, not a folder")
    _probe_writable(existing, f"{flag} {folder}")
    return folder


@contextlib.contextmanager
def exclusive(path: str | Path, flag: str = "--out") -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``path`` while this process writes ``path``: a second run on the same output is
    told at once that another is writing it (an advisory ``flock``, released by the kernel even on SIGKILL)."""
    import fcntl

    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise OutputError(f"{flag} {path}: another csfm-edge run" + (f" (pid {holder})" if holder else "")
                              + " is writing it right now: wait for it to finish, or choose another output") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the last holder removed the file as this one opened it: lock the current one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


# The guardian: waits for its parent to close the pipe (on exit, or when the kernel closes it after SIGKILL or
# the OOM killer), then removes the folder if it is still there.
_GUARDIAN = "import shutil, sys\nsys.stdin.buffer.read()\nshutil.rmtree(sys.argv[1], ignore_errors=True)\n"


@contextlib.contextmanager
def staging_folder(parent: str | Path, prefix: str) -> Iterator[Path]:
    """A hidden folder in ``parent`` (the same file system, so what is made there is renamed into place) that is
    removed when the block ends, and, through a small guardian process, also when this process is killed hard
    (SIGKILL, out of memory), which no ``finally`` survives."""
    import shutil
    import subprocess
    import sys

    folder = Path(tempfile.mkdtemp(dir=parent, prefix=f"{prefix}{os.getpid()}-"))
    guardian = subprocess.Popen([sys.executable, "-c", _GUARDIAN, str(folder)], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        guardian.stdin.close()
        guardian.wait()
