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


# --- what the graph itself proves about the model (checked against the manifest's claims) ----------

NODE_FIELD, INITIALIZER_FIELD, OUTPUT_FIELD = 1, 5, 12  # GraphProto
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                           "QLinearMatMul", "DynamicQuantizeMatMul", "QAttention", "MatMulIntegerToFloat"})
ATTENTION_OPS = frozenset({"Softmax", "Attention", "MultiHeadAttention"})  # one per encoder block
FLOAT16, INT8_TYPES = 10, frozenset({2, 3})  # TensorProto.DataType: FLOAT16; UINT8, INT8


@dataclass(frozen=True)
class GraphFacts:
    """Facts of the graph no manifest edit can change: op counts, initializer types, output widths."""

    op_counts: dict[str, int]
    initializer_types: frozenset[int]
    output_widths: dict[str, int | None]  # the fixed last dimension of each graph output

    @property
    def quantized(self) -> bool:
        return bool(QUANTIZED_OPS & set(self.op_counts)) or bool(INT8_TYPES & self.initializer_types)

    @property
    def float16(self) -> bool:
        return FLOAT16 in self.initializer_types

    @property
    def attention_blocks(self) -> int:
        return sum(self.op_counts.get(op, 0) for op in ATTENTION_OPS)


def _fields(payload: bytes):
    """(field number, wire type, value) of one message: bytes for length-delimited fields, ints otherwise."""
    import io

    data = io.BytesIO(payload)
    while (tag := _varint(data)) is not None:
        field, wire = tag >> 3, tag & 7
        if wire == VARINT:
            yield field, wire, _varint(data)
        elif wire in (FIXED64, FIXED32):
            data.seek(8 if wire == FIXED64 else 4, 1)
        elif wire == LENGTH:
            yield field, wire, data.read(_varint(data) or 0)
        else:
            raise ArtifactError("the ONNX graph is malformed")


def _output_width(value_info: bytes) -> tuple[str, int | None]:
    """A graph output's name and the fixed value of its last dimension (None where symbolic)."""
    name, width = "", None
    for field, _, value in _fields(value_info):
        if field == 1:
            name = value.decode("utf-8", errors="replace")
        elif field == 2:  # TypeProto -> tensor_type (1) -> shape (2) -> dim (1) -> dim_value (1)
            for f_type, _, tensor in _fields(value):
                if f_type != 1:
                    continue
                for f_tensor, _, shape in _fields(tensor):
                    if f_tensor != 2:
                        continue
                    dims = [d for f_dim, _, d in _fields(shape) if f_dim == 1]
                    if dims:
                        values = [v for f, _, v in _fields(dims[-1]) if f == 1]
                        width = int(values[0]) if values else None
    return name, width


def read_graph_facts(path: str | Path) -> GraphFacts:
    """Op counts, initializer data types and output widths of an ONNX file's graph, read in one pass: nodes
    and outputs are small and decoded; the weights are skipped with seeks after their first fields."""
    ops: dict[str, int] = {}
    types: set[int] = set()
    outputs: dict[str, int | None] = {}
    try:
        with open(path, "rb") as data:
            while (tag := _varint(data)) is not None:
                field, wire = tag >> 3, tag & 7
                if wire != LENGTH:
                    _skip(data, wire)
                    continue
                length = _varint(data) or 0
                if field != GRAPH_FIELD:
                    data.seek(length, 1)
                    continue
                end = data.tell() + length
                while data.tell() < end:
                    inner = _varint(data)
                    g_field, g_wire = inner >> 3, inner & 7
                    if g_wire != LENGTH:
                        _skip(data, g_wire)
                        continue
                    size = _varint(data) or 0
                    if g_field in (NODE_FIELD, OUTPUT_FIELD):
                        payload = data.read(size)
                        if g_field == OUTPUT_FIELD:
                            name, width = _output_width(payload)
                            outputs[name] = width
                        else:
                            op = next((v.decode("utf-8", "replace") for f, _, v in _fields(payload) if f == 4), "")
                            ops[op] = ops.get(op, 0) + 1
                    elif g_field == INITIALIZER_FIELD:
                        start = data.tell()
                        types.add(_tensor_type(data, start + size))
                        data.seek(start + size)
                    else:
                        data.seek(size, 1)
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read ({exc.strerror or exc})") from None
    except (TypeError, ValueError):
        raise ArtifactError(f"{Path(path).name}: the ONNX graph is malformed or truncated") from None
    return GraphFacts(ops, frozenset(types), outputs)


def _skip(data: BinaryIO, wire: int) -> None:
    if wire == VARINT:
        _varint(data)
    elif wire in (FIXED64, FIXED32):
        data.seek(8 if wire == FIXED64 else 4, 1)
    else:
        raise ArtifactError("the ONNX graph is malformed")


def _tensor_type(data: BinaryIO, end: int) -> int:
    """A TensorProto's data_type (field 2), read from its first fields (dims come first, then the type)."""
    while data.tell() < end:
        tag = _varint(data)
        field, wire = tag >> 3, tag & 7
        if field == 2 and wire == VARINT:
            return _varint(data)
        if wire == LENGTH:
            data.seek(_varint(data) or 0, 1)
        else:
            _skip(data, wire)
    return 0
