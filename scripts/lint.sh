#!/usr/bin/env bash
# Formatting and static checks, as CI runs them before the tests: Black (no changes
# needed) and Ruff (no findings). Configured in pyproject.toml; needs the dev extras
# (`scripts/mkenv.sh`, or `.venv/bin/pip install -e '.[dev]'`).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/black --check --quiet .
.venv/bin/ruff check --quiet .
