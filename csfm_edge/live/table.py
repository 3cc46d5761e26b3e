"""The ward's results as the batch table (``run``'s columns, ``record`` = the bed), written as it goes.

Parquet writes its footer last, so one growing file would be unreadable after a crash. Instead every
``flush()`` writes the rows gathered so far as a part file beside the output (``NAME.parts/``, readable
on its own, e.g. ``pyarrow.parquet.read_table`` on the folder), and ``close()`` joins the parts into the
table, as batch runs do. A crash loses at most the rows since the last flush.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from csfm_edge import __version__
from csfm_edge.recordings.table import join_parts, table_schema
from csfm_edge.runtime.gateway import GatewayResult
from csfm_edge.runtime.manifest import TensorInfo

# Beyond run's columns: the window start on the LSL clock, and the result's latency.
EXTRA = (("timestamp", pa.float64()), ("latency_ms", pa.float64()))


class WardTable:
    """Rows gathered from any thread, flushed to part files, joined into ``out`` at ``close()``."""

    def __init__(self, out: Path, outputs: Mapping[str, TensorInfo], artifact_sha256: str, metadata: dict):
        self.out = out
        self.outputs = dict(outputs)
        self.artifact_sha256 = artifact_sha256
        self.metadata = metadata
        self.schema = table_schema(self.outputs, EXTRA)
        self.parts = out.with_name(out.name + ".parts")
        shutil.rmtree(self.parts, ignore_errors=True)
        self.parts.mkdir()
        self.rows: list[tuple[GatewayResult, dict]] = []
        self.count = 0
        self.written = 0
        self._lock = threading.Lock()

    def add(self, result: GatewayResult, bed: Mapping) -> None:
        """One result, with its bed's ``fs`` (list of Hz) and ``mapping`` (label -> lead) at the time."""
        with self._lock:
            self.rows.append((result, dict(bed)))

    def flush(self) -> None:
        with self._lock:
            rows, self.rows = self.rows, []
        if not rows:
            return
        columns: dict[str, list] = {f.name: [] for f in self.schema}
        for result, bed in rows:
            for name, value in (("record", result.bed), ("record_sha256", ""), ("start_s", result.start_s),
                                ("leads", ",".join(result.leads)), ("dropped", ""), ("flags", "; ".join(result.flags)),
                                ("fs_hz", ",".join(f"{float(r):g}" for r in bed.get("fs", []))),
                                ("lead_mapping", json.dumps(bed.get("mapping", {}))),
                                ("artifact_sha256", self.artifact_sha256), ("csfm_edge", __version__),
                                ("timestamp", result.timestamp), ("latency_ms", result.latency_s * 1e3)):
                columns[name].append(value)
        arrays = {name: pa.array(values, self.schema.field(name).type) for name, values in columns.items()
                  if name not in self.outputs}
        for name, tensor in self.outputs.items():
            values = [getattr(result, name) for result, _ in rows]
            flat = np.concatenate([np.full(tensor.width, np.nan, np.float32) if v is None
                                   else np.asarray(v, np.float32) for v in values])
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat), tensor.width)
        table = pa.table([arrays[f.name] for f in self.schema], schema=self.schema)
        part = self.parts / f"part-{self.count:06d}.parquet"
        tmp = part.with_name("." + part.name)
        pq.write_table(table, tmp)
        tmp.replace(part)
        self.count += 1
        self.written += len(rows)

    def close(self) -> None:
        """Flush, join the parts into ``out`` and remove them."""
        self.flush()
        join_parts(sorted(self.parts.glob("part-*.parquet")), self.out, self.metadata, self.outputs, EXTRA)
        shutil.rmtree(self.parts, ignore_errors=True)
