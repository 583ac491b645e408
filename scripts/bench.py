"""Benchmark entry point: `python scripts/bench.py [--quick] [--json FILE] [--only SECTION ...]`.

The benchmark itself is the package scripts/bench/ (one module per section); this file
only lets it run by path, as `python -m scripts.bench` runs it by name.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.bench.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
