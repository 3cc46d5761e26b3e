"""Exported artifacts that benchmarks and the demo need, made on first use and reused afterwards."""

from __future__ import annotations

from pathlib import Path

from csfm_edge.datasets import default_data_dir
from csfm_edge.export.spec import artifact_stem


def ensure_artifacts(size: str, precisions: tuple[str, ...], out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """``{precision: path}`` of UNTRAINED seeded artifacts in ``out_dir``, exporting the missing ones."""
    from csfm_edge.export.onnx_export import ExportRequest, export

    paths = {p: out_dir / f"{artifact_stem(size, p)}.onnx" for p in precisions}
    missing = tuple(p for p, path in paths.items() if not path.exists())
    if missing:
        export(ExportRequest(size=size, out_dir=out_dir, seed=seed, precisions=missing, data_dir=default_data_dir()))
    return paths
