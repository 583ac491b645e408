#!/usr/bin/env bash
# Make the project's virtual environment in .venv: `scripts/mkenv.sh [EXTRAS]`
# (default extras: dev, i.e. the tests, Black and Ruff; `scripts/mkenv.sh test`).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
extras="${1:-dev}"
python="${PYTHON:-python3.11}"

if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python is required (set PYTHON to another interpreter)" >&2
    exit 1
fi
cd "$root"
"$python" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[$extras]"
echo "ready: .venv ($(.venv/bin/dacc --version 2>/dev/null || echo 'dacc installed'))"
