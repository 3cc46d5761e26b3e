"""Shared fixtures: the real recordings and the authors' miniature checkpoint beside the project.

``../shared`` is not part of the repository; tests that need it skip with the reason where it is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
REFERENCE = SHARED / "reference"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is missing: the shared recordings/reference sit beside the project, not in it")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(DATA)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _need(REFERENCE)


def load_record(path: Path) -> tuple[np.ndarray, float, np.ndarray]:
    """A shared .npz recording without the leads CSFM has no id for: (signal, fs, channel ids)."""
    from csfm_edge.recordings.datasets import read_npz_record

    signal, fs, ids = read_npz_record(path)
    keep = ids >= 0
    return signal[keep], fs, ids[keep]


def quiet(message: str) -> None:
    """Progress sink for library calls in tests."""


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory, data_dir) -> dict[str, Path]:
    """CSFM Tiny (untrained, seed 0) exported once in fp32, fp16 and int8, verified on the real recordings."""
    from csfm_edge.export.onnx_export import ExportRequest, export

    out = tmp_path_factory.mktemp("tiny")
    paths = export(ExportRequest(size="tiny", out_dir=out, seed=0, data_dir=data_dir, progress=quiet))
    return {p.name.split(".")[1]: p for p in paths}


@pytest.fixture(scope="session")
def head_artifacts(tmp_path_factory, data_dir) -> tuple[dict[str, Path], Path]:
    """A seeded Tiny with a 5-class head, saved in the authors' layout (encoder. prefix, mlp_head), exported."""
    import torch

    from csfm_edge.export.onnx_export import ExportRequest, export
    from csfm_edge.model import build

    folder = tmp_path_factory.mktemp("head")
    model = build("tiny", seed=11)
    head = torch.nn.Linear(768, 5)
    state = {f"encoder.{k}": v for k, v in model.state_dict().items()}
    state.update({"encoder.mlp_head.weight": head.weight.detach(), "encoder.mlp_head.bias": head.bias.detach()})
    checkpoint = folder / "csfm_tiny_5class.pth"
    torch.save(state, checkpoint)
    paths = export(ExportRequest(size="tiny", out_dir=folder, checkpoint=checkpoint, precisions=("fp16", "int8"),
                                 data_dir=data_dir, progress=quiet))
    return {p.name.split(".")[1]: p for p in paths}, checkpoint


# Tests that export a model (through these fixtures) take minutes on 2 cores: `scripts/test --fast` leaves them out.
EXPORTING_FIXTURES = {"tiny_artifacts", "head_artifacts", "cpu_artifacts"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if EXPORTING_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
