"""scripts/soak.py keeps working: a run of a few seconds ends OK, with its table and
its exactly-once line. (Its bounds, RSS growth in particular, mean something only over
minutes: docs/PERFORMANCE.md has the latest full run.)"""

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

SOAK = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"


def test_a_short_soak_run_passes_and_reports(database_url):
    # On the test session's server (the soak makes a database of its own there and
    # drops it): no second PostgreSQL to initialise.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DACC_")}
    env["DATABASE_URL"] = sa.engine.make_url(database_url).set(database="postgres").render_as_string(False)
    done = subprocess.run(
        [
            sys.executable,
            str(SOAK),
            "--minutes", "0.05",
            "--sample-seconds", "1.5",
            "--jobs-every", "60",
            "--rate", "30",
            "--bulk-items", "50",
            "--idle", "5",
            "--slow", "2",
            # A few seconds hold no warm-up: RSS still grows as the first requests run.
            "--rss-growth", "1.0",
        ],  # fmt: skip
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.split()[:2] == ["t", "s"] for line in lines if line.strip())
    assert any(line.strip().startswith("end ") for line in lines)
    exact = next(line for line in lines if line.startswith("exactly once:"))
    assert exact.endswith(": True") and " 0 measures" not in exact
    assert lines[-1] == "OK"
