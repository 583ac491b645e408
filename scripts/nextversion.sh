#!/usr/bin/env bash
# Start work on version X.Y.Z: writes X.Y.Z-dev to dacc/VERSION, the one version source.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

if [[ $# -ne 1 ]]; then
    echo "usage: $0 X.Y.Z" >&2
    exit 2
fi
# Semantic versioning's core: three numbers without leading zeros.
if ! [[ $1 =~ ^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$ ]]; then
    echo "error: '$1' is not a version X.Y.Z (three numbers, no leading zeros)" >&2
    exit 2
fi
echo "$1-dev" > "$root/dacc/VERSION"
echo "dacc/VERSION: $1-dev"
