# Sourced by scripts/demo and scripts/test: make .venv (Python >= 3.10) and install csfm-edge with the
# extras named in CSFM_EXTRAS. Re-running is cheap: nothing is reinstalled while pyproject.toml and the
# extras are unchanged.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "csfm-edge needs Python >= 3.10 (set PYTHON=/path/to/python3.x)" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.csfm-edge-$(echo "$CSFM_EXTRAS" | tr ',' '-')-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "Installing csfm-edge[$CSFM_EXTRAS] into .venv ..."
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch 2.13.0 is the version pinned for set-up: a CPU build from local disk on the project's machines.
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    .venv/bin/python -m pip install --quiet -e ".[$CSFM_EXTRAS]"
    rm -f .venv/.csfm-edge-*
    touch "$stamp"
fi
