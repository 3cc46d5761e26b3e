"""The Holoscan operator, live in its own environment (.venv-holoscan, made by scripts/test): the example app
replays real recordings as beds through GatewayOp, and every window equals Session.embed's."""

from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_gateway import MIN_COSINE, cosine

from csfm_edge.recordings.readers import read_recording
from csfm_edge.runtime import Session

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv-holoscan" / "bin" / "python"


def holoscan_env() -> dict:
    """PYTHONPATH on this checkout, and the CUDA runtime library (nvidia-cuda-runtime-cu12) on LD_LIBRARY_PATH:
    Holoscan loads libcudart even when nothing runs on a GPU."""
    libs = glob.glob(str(ROOT / ".venv-holoscan" / "lib" / "python3*" / "site-packages" / "nvidia" / "cuda_runtime"
                         / "lib"))
    paths = [*libs, os.environ.get("LD_LIBRARY_PATH", "")]
    return {**os.environ, "PYTHONPATH": str(ROOT), "LD_LIBRARY_PATH": ":".join(p for p in paths if p)}


@pytest.mark.slow
def test_holoscan_app_replays_beds_through_the_gateway_operator(tiny_artifacts, data_dir, tmp_path):
    if not PYTHON.exists():
        pytest.skip(".venv-holoscan is missing: scripts/test makes it (holoscan-cu12 needs Python 3.11 on Linux)")
    artifact = tiny_artifacts["fp32"]
    records = [data_dir / "a103l.npz", data_dir / "mitdb100_5min.npz"]
    clipped = []
    for path in records:  # 16 s of each: 7 windows at a 1-s hop
        with np.load(path) as record:
            fields = {k: record[k] for k in record.files}
        fields["signal"] = fields["signal"][:, : int(16 * float(fields["fs"]))]
        clipped.append(tmp_path / path.name)
        np.savez(clipped[-1], **fields)
    out = tmp_path / "results.npz"
    run = subprocess.run([str(PYTHON), str(ROOT / "scripts" / "holoscan_replay.py"), str(artifact), *map(str, clipped),
                          "--speed", "1", "--provider", "cpu", "--out", str(out)], capture_output=True, text=True,
                         env=holoscan_env(), timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = np.load(out)
    session = Session.open(artifact, provider="cpu")
    for path in clipped:
        recording = read_recording(path)
        want = session.embed(recording.signal, recording.fs, recording.leads, hop_s=1.0)
        mine = got["bed"] == path.stem
        assert sorted(got["start_s"][mine]) == [float(s) for s in want.start_s]
        late = [json.loads(str(f)) == ["late"] for f in got["flags"][mine]]
        assert sum(late) <= 2, "a machine this loaded skips windows (flagged late, as it must)"
        for start, flags, features in zip(got["start_s"][mine], got["flags"][mine], got["features"][mine]):
            if json.loads(str(flags)) == ["late"]:
                continue
            w = int(np.flatnonzero(want.start_s == start)[0])
            assert json.loads(str(flags)) == [d.flag for d in want.dropped] + want.flags[w]
            assert cosine(features, want.features[w]) >= MIN_COSINE
