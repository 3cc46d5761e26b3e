"""What every benchmark script shares: the repository root and where the shared recordings are.

Scripts run as ``python benchmarks/NAME.py``, so this folder is on their import path.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from csfm_edge.recordings.datasets import default_data_dir

ROOT = Path(__file__).resolve().parents[1]


def add_data_flag(parser: argparse.ArgumentParser) -> None:
    """``--data``: the shared recordings, by default $CSFM_EDGE_DATA, else ../shared/data beside the repository."""
    parser.add_argument("--data", type=Path, default=default_data_dir() or ROOT.parent / "shared" / "data",
                        help="shared recordings (default $CSFM_EDGE_DATA, else ../shared/data beside the repository)")
