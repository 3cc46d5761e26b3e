"""File hashing and atomic writes: the only ways csfm-edge writes a file a user keeps.

A file is written under a temporary name in its own folder and renamed into place, so an interrupted
write never leaves half a file behind and never replaces a good file with a broken one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


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
