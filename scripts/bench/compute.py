"""Timed aggregation runs in this process, shared by the sections that aggregate first."""

from __future__ import annotations

import time
from unittest import mock

from dacc.aggregation import compute
from dacc.publication import PublicationResult, publish_pending
from scripts.bench.env import Environment


def timed_compute(env: Environment, definition, *, expect: int | None = None) -> float:
    """Seconds of one in-process run (as `compute-aggregation NAME --force` does it),
    with its publication switched off: these lines compare the merge with a bare
    GROUP BY; the `publication` section measures what publishing adds. `expect`: the
    raw measures the run must read."""
    with mock.patch.object(compute, "publish_measure", no_publication):
        start = time.perf_counter()
        result = compute.compute_aggregation(definition, force=True)
        seconds = time.perf_counter() - start
    if expect is not None and result.raw_read != expect:
        raise RuntimeError(
            f"aggregation of {definition.name} read {result.raw_read} raw measures, expected {expect}"
        )
    return seconds


def no_publication(conn, name):
    """Stands in for `publish_measure` in a run whose publication is not measured."""
    return PublicationResult(name)


def fresh_compute(env: Environment, definition, rows: int) -> float:
    """A full run: forget the measure's aggregates and state first (--force only skips
    the schedule; it does not re-read what was aggregated)."""
    reset_aggregates(env, definition.name)
    return timed_compute(env, definition, expect=rows)


def reset_aggregates(env: Environment, name: str) -> None:
    env.execute("DELETE FROM aggregate WHERE measure_name = :name", {"name": name})
    env.execute("DELETE FROM aggregation_state WHERE measure_name = :name", {"name": name})


def aggregated_count(env: Environment, name: str) -> int:
    return env.execute(
        "SELECT coalesce(sum(count), 0) FROM aggregate WHERE measure_name = :name", {"name": name}
    ).scalar()


def publish_everything() -> None:
    """Publish what every measure has pending (what `flask jobs run` does after a merge)."""
    publish_pending()
