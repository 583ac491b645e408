"""Peak RSS of `flask compute-aggregation` at two sizes: memory stays flat as raw data grows."""

from __future__ import annotations

import subprocess
import sys
import time

from scripts.bench.compute import aggregated_count, reset_aggregates
from scripts.bench.env import Environment
from scripts.bench.figures import Figure


def memory_figures(env: Environment, small: str, big: str) -> list[Figure]:
    """The `memory` lines: a full run of `small` (agg_small_rows) and of `big` (agg_rows
    and agg_incremental), each in a process of its own."""
    sizes = env.sizes
    rss_small, _ = _aggregation_rss(env, small, sizes["agg_small_rows"])
    rss_big, seconds = _aggregation_rss(env, big, sizes["agg_rows"] + sizes["agg_incremental"])
    return [
        Figure("memory", f"compute-aggregation peak RSS, {sizes['agg_rows']:,} rows", rss_big, "MiB", rss_small,
               "ratio<=1.2", f"ceiling column: peak RSS at {sizes['agg_small_rows']:,} rows"),
        Figure("memory", "compute-aggregation command wall time (process start included)", seconds, "s"),
    ]  # fmt: skip


def _aggregation_rss(env: Environment, name: str, rows: int) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of a full `flask compute-aggregation NAME --force`."""
    reset_aggregates(env, name)
    rss, seconds = _command_rss(env, "compute-aggregation", name, "--force")
    if aggregated_count(env, name) != rows:
        raise RuntimeError(f"compute-aggregation {name} did not aggregate its {rows} raw measures")
    return rss, seconds


# Runs a `flask` command and, at exit, prints the process's own peak RSS (VmHWM). Not
# ru_maxrss: Linux carries the forking parent's high-water mark over exec into it, so a
# child of this (large) process would report this process's peak.
_PEAK_RSS_WRAPPER = """
import atexit, sys
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            sys.stderr.write("BENCH_PEAK_RSS_KB " + line.split()[1] + "\\n")
atexit.register(_peak)
from flask.cli import main
sys.argv = ["flask", *sys.argv[1:]]
main()
"""


def _command_rss(env: Environment, *command: str) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of one `flask` command run as a child process."""
    start = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_WRAPPER, "--app", "dacc", *command],
        env=env.env,
        cwd=env.tmp,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"flask {' '.join(command)} exited {process.returncode}: {process.stderr[-2000:]}")
    peaks = [line.split()[1] for line in process.stderr.splitlines() if line.startswith("BENCH_PEAK_RSS_KB ")]
    if not peaks:
        raise RuntimeError(f"flask {' '.join(command)} did not report its peak RSS")
    return int(peaks[-1]) / 1024, seconds
