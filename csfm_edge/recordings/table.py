"""The batch results table (Parquet, through pyarrow): one row per window, every row saying where it
came from (record path and sha256, artifact sha256, package version, leads, lead mapping, rate)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from csfm_edge import __version__
from csfm_edge.recordings.readers import Recording
from csfm_edge.runtime.manifest import TensorInfo
from csfm_edge.runtime.session import EmbedResult


def table_schema(outputs: Mapping[str, TensorInfo], extra: tuple[tuple[str, pa.DataType], ...] = ()) -> pa.Schema:
    """The table's columns; ``extra`` ones (e.g. the live gateway's latency) go before the outputs."""
    fields = [("record", pa.string()), ("record_sha256", pa.string()), ("start_s", pa.float64()),
              ("leads", pa.string()), ("dropped", pa.string()), ("flags", pa.string()), ("fs_hz", pa.string()),
              ("lead_mapping", pa.string()), ("artifact_sha256", pa.string()), ("csfm_edge", pa.string()), *extra]
    fields += [(name, pa.list_(pa.float32(), tensor.width)) for name, tensor in outputs.items()]
    return pa.schema(fields)


def record_table(path: str, digest: str, recording: Recording, result: EmbedResult, artifact_sha256: str,
                 outputs: Mapping[str, TensorInfo]) -> pa.Table:
    """One record's windows as rows."""
    rows = len(result.start_s)
    fs = recording.fs if isinstance(recording.fs, list) else [recording.fs]
    constant = {"record": path, "record_sha256": digest, "leads": ",".join(result.leads),
                "dropped": "; ".join(f"{d.lead}: {d.reason}" for d in result.dropped) + "; ".join(
                    f"{label}: no CSFM lead" for label in recording.dropped),
                "fs_hz": ",".join(f"{float(r):g}" for r in fs), "lead_mapping": json.dumps(recording.lead_mapping),
                "artifact_sha256": artifact_sha256, "csfm_edge": __version__}
    columns = {name: pa.array([value] * rows, pa.string()) for name, value in constant.items()}
    columns["start_s"] = pa.array(result.start_s.astype(np.float64))
    columns["flags"] = pa.array(["; ".join(f) for f in result.flags], pa.string())
    arrays = {"features": result.features, "logits": result.logits}
    for name, tensor in outputs.items():
        values = np.ascontiguousarray(arrays[name], dtype=np.float32).reshape(-1)
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(values), tensor.width)
    schema = table_schema(outputs)
    return pa.table([columns[f.name] for f in schema], schema=schema)


def join_parts(parts: list[Path], out: Path, metadata: dict, outputs: Mapping[str, TensorInfo],
               extra: tuple[tuple[str, pa.DataType], ...] = ()) -> None:
    """Stream the part files into one table at ``out`` (temporary name, then rename), with ``metadata``."""
    schema = table_schema(outputs, extra).with_metadata({"csfm_edge": json.dumps(metadata, default=str)})
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for part in parts:
                writer.write_table(pq.read_table(part).cast(schema))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


ROWS_PER_FILE = 100_000  # a dataset file (768 float32 features a row: about 300 MB)
ROWS_PER_GROUP = 10_000


def write_dataset(parts: list[Path], out: Path, metadata: dict, outputs: Mapping[str, TensorInfo]) -> None:
    """Stream the part files into a folder of Parquet files at ``out``, rows in part order, for archives too
    large for one file. Written beside ``out`` and renamed into place: a folder ``--force`` replaces is
    swapped whole, never left half written."""
    import shutil

    import pyarrow.dataset as ds

    schema = table_schema(outputs).with_metadata({"csfm_edge": json.dumps(metadata, default=str)})
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    try:
        if parts:
            ds.write_dataset(ds.dataset([str(p) for p in parts], schema=schema, format="parquet"), tmp,
                             format="parquet", schema=schema, basename_template="part-{i}.parquet",
                             max_rows_per_file=ROWS_PER_FILE, min_rows_per_group=ROWS_PER_GROUP,
                             max_rows_per_group=ROWS_PER_GROUP, preserve_order=True)
            for file in tmp.glob("part-*.parquet"):  # part-00002 before part-00010: readers list files by name
                file.rename(tmp / f"part-{int(file.stem.split('-')[1]):05d}.parquet")
        else:  # nothing scored: one empty file, so readers still find the schema
            tmp.mkdir()
            pq.write_table(schema.empty_table(), tmp / "part-00000.parquet")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
