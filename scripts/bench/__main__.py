"""`python -m scripts.bench`: the same as `python scripts/bench.py`."""

import sys

from scripts.bench.main import main

sys.exit(main())
