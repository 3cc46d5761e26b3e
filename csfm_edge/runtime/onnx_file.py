"""What an ONNX file says about itself, read without the ``onnx`` package (the runtime never needs it).

An ONNX file is one ``ModelProto`` message. Its top-level fields are walked with the protobuf wire
format (a tag, then a varint, a fixed-size value or a length-prefixed payload); the graph (field 7) is
skipped with a seek or hashed as it streams by, and ``metadata_props`` (field 14, key/value string
pairs) are decoded. So a 1 GB graph costs a few reads to find the artifact manifest embedded in it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from csfm_edge.errors import ArtifactError

GRAPH_FIELD = 7
METADATA_FIELD = 14
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True)
class OnnxFileInfo:
    metadata: dict[str, str]
    graph_sha256: str | None  # sha256 of the serialized graph (None when not asked for)


def _varint(data: BinaryIO) -> int | None:
    """One base-128 varint; None at a clean end of file."""
    value, shift = 0, 0
    while True:
        byte = data.read(1)
        if not byte:
            if shift:
                raise ArtifactError("the ONNX file ends inside a field: truncated")
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ArtifactError("the ONNX file has a malformed field tag: not an ONNX model")


def _string_pairs(payload: bytes) -> tuple[str, str]:
    """A ``StringStringEntryProto``: key (field 1) and value (field 2)."""
    import io

    fields: dict[int, str] = {}
    data = io.BytesIO(payload)
    while (tag := _varint(data)) is not None:
        length = _varint(data)
        if tag & 7 != LENGTH or length is None:
            raise ArtifactError("the ONNX file's metadata is malformed")
        fields[tag >> 3] = data.read(length).decode("utf-8", errors="replace")
    return fields.get(1, ""), fields.get(2, "")


def read_onnx_file(path: str | Path, *, hash_graph: bool = False) -> OnnxFileInfo:
    """The metadata properties of an ONNX file, and the sha256 of its graph where ``hash_graph``."""
    metadata: dict[str, str] = {}
    digest = hashlib.sha256() if hash_graph else None
    try:
        with open(path, "rb") as data:
            while (tag := _varint(data)) is not None:
                field, wire = tag >> 3, tag & 7
                if wire == VARINT:
                    _varint(data)
                elif wire in (FIXED64, FIXED32):
                    data.seek(8 if wire == FIXED64 else 4, 1)
                elif wire == LENGTH:
                    length = _varint(data)
                    if length is None:
                        raise ArtifactError("the ONNX file ends inside a field: truncated")
                    if field == METADATA_FIELD:
                        key, value = _string_pairs(data.read(length))
                        metadata[key] = value
                    elif field == GRAPH_FIELD and digest is not None:
                        remaining = length
                        while remaining:
                            block = data.read(min(remaining, 1 << 20))
                            if not block:
                                raise ArtifactError("the ONNX file ends inside its graph: truncated")
                            digest.update(block)
                            remaining -= len(block)
                    else:
                        data.seek(length, 1)
                else:
                    raise ArtifactError(f"{Path(path).name} is not an ONNX model (wire type {wire})")
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read ({exc.strerror or exc})") from None
    return OnnxFileInfo(metadata, digest.hexdigest() if digest is not None else None)
