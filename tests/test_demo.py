"""The README's demo runs end to end on the vendored recording and labels its weights UNTRAINED."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_and_says_untrained():
    done = subprocess.run([sys.executable, str(ROOT / "scripts/demo.py")], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "UNTRAINED" in done.stdout
    assert "features: shape (" in done.stdout and ", 768), aggregate" in done.stdout
