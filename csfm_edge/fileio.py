"""File hashing and atomic writes: the only ways csfm-edge writes a file a user keeps.

A file is written under a temporary name in its own folder and renamed into place, so an interrupted
write never leaves half a file behind and never replaces a good file with a broken one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from csfm_edge.errors import OutputError


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename: no half-written file survives."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def check_output(path: str | Path, *, protected: list[Path], force: bool = False) -> Path:
    """Refuse, before any work, an output that would destroy something: one of the ``protected`` files
    (inputs, artifacts, manifests), an existing file without ``force``, a folder, or a path whose folder
    is missing or not writable. Return the path."""
    path = Path(path)
    for kept in protected:
        if _same_file(path, Path(kept)) or path.resolve() == Path(kept).resolve():
            raise OutputError(f"--out {path} is {kept}, an input of this run: refusing to overwrite it")
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder; name a file")
    if path.exists() and not force:
        raise OutputError(f"--out {path} already exists: pass --force to replace it")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"--out {path}: folder {folder} does not exist")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"--out {path}: folder {folder} is not writable ({exc.strerror or exc})") from None
    return path
