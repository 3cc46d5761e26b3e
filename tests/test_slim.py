"""The runtime stays slim: no torch (or TensorRT) is imported by the runtime, the CLI's help or env."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from csfm_edge.recordings.sample import sample_ecg


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_runtime_preprocessing_does_not_import_torch():
    out = run_python(
        "import sys, csfm_edge.runtime as rt\n"
        "from csfm_edge.recordings.sample import sample_ecg\n"
        "r = sample_ecg(); x = rt.preprocess(r.signal, r.fs, r.leads)\n"
        "print(x.shape, sorted(m for m in ('torch', 'tensorrt', 'neurokit2', 'pandas') if m in sys.modules))")
    assert out.strip() == "(1, 2500) []"


def test_cli_help_and_env_are_slim():
    out = run_python(
        "import sys, contextlib, io\nfrom csfm_edge.cli import main\n"
        "buf = io.StringIO()\nwith contextlib.redirect_stdout(buf): main(['env'])\n"
        "print('torch' in sys.modules, 'numpy' in buf.getvalue())")
    assert out.strip() == "False True"
    done = subprocess.run([sys.executable, "-m", "csfm_edge.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "usage: csfm-edge" in done.stdout


def test_vendored_sample_is_a_real_ecg():
    recording = sample_ecg()
    assert recording.fs == 1000 and recording.signal.shape == (1, 22_350)
    # A real ECG: millivolt range, and R peaks recur at a heart rate a person can have.
    mv = recording.signal[0]
    assert 0.5 < np.ptp(mv) < 5
    peaks = np.flatnonzero((mv[1:-1] > mv[:-2]) & (mv[1:-1] >= mv[2:]) & (mv[1:-1] > mv.mean() + 3 * mv.std()))
    beats = np.flatnonzero(np.diff(peaks) > 250).size + 1
    assert 40 <= beats / (mv.size / 1000) * 60 <= 150


def test_without_the_export_extra(tmp_path, tiny_artifacts, data_dir):
    """As in an install of the base package only: torch and onnx absent."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    for module in ("torch", "onnx"):
        missing = f'raise ModuleNotFoundError("No module named {module}", name="{module}")\n'
        (shadow / f"{module}.py").write_text(missing)
    env = {"PYTHONPATH": str(shadow), "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "csfm_edge", *args], capture_output=True, text=True, env=env,
                              timeout=300)

    assert cli("--help").returncode == 0
    done = cli("export", "--size", "tiny", "--out", str(tmp_path / "out"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "pip install 'csfm-edge[export]'" in done.stderr
    done = cli("run", str(tiny_artifacts["int8"]), str(data_dir / "a103l.npz"), "--provider", "cpu", "--hop", "60")
    assert done.returncode == 0, done.stderr
    assert "7 windows" in done.stdout  # 0, 60, ..., 300 s and the last one ending at 330 s
