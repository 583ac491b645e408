"""Bench section `purge`: a batched purge of a measure's raw rows against one bare
DELETE, with POST /measure at 8 connections meanwhile."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

from dacc.purge import purge_raw_measures
from scripts import loadgen
from scripts.bench.compute import fresh_compute
from scripts.bench.data import ensure_single_definition, generate_raw, measure_body
from scripts.bench.env import Environment
from scripts.bench.figures import Figure
from scripts.bench.load import load


def section_purge(env: Environment) -> list[Figure]:
    rows = env.sizes["purge_rows"]
    definition = env.add_definition("bench.purge")
    generate_raw(env, definition.name, rows, start=dt.date(2023, 1, 1), days=30)
    generate_raw(env, "bench.purge_ceiling", rows, start=dt.date(2023, 1, 1), days=30)
    env.vacuum()
    fresh_compute(env, definition, rows)
    # Rows a purge deletes were written long before it, with checkpoints since: the first
    # change to each page after one is logged whole (full-page writes). Both deletes
    # start after a checkpoint, as in production.
    env.checkpoint()
    ceiling = _bare_delete_rate(env, "bench.purge_ceiling", rows)
    # The ceiling's dead rows would otherwise bring autovacuum onto the table during
    # the purge, at a moment of the run's choosing.
    env.vacuum()
    env.checkpoint()

    def purge() -> float:
        t0 = time.perf_counter()
        result = purge_raw_measures(definition.name, days=1)
        if result.deleted != rows:
            raise RuntimeError(f"purge deleted {result.deleted} of {rows} raw measures ({result.status})")
        return time.perf_counter() - t0

    ensure_single_definition(env)
    bodies = [json.dumps(measure_body("bench.single", i)).encode() for i in range(1000)]
    headers = {"Authorization": env.tokens["write"]}
    requests = [loadgen.build_request("POST", "/measure", body=b, headers=headers) for b in bodies]
    quiet = load(env, requests, total=env.sizes["single"] // 2, connections=8)
    seconds, during = _while_loaded(env, requests, purge)
    return [
        _purge_figure(rows, seconds, ceiling, "POST /measure at 8 conn meanwhile"),
        Figure("purge", "POST /measure p99 during the purge, 8 conn", during.percentile(99), "ms", quiet.percentile(99),
               "value<=50", f"{during.requests} requests; ceiling column: p99 just before the purge"),
        Figure("purge", "POST /measure rate during the purge, 8 conn", during.rate, "measures/s", quiet.rate,
               note="ceiling column: the rate just before the purge"),
    ]  # fmt: skip


def _purge_figure(rows: int, seconds: float, ceiling: float, note: str) -> Figure:
    return Figure("purge", f"purge measure, {rows:,} rows", rows / seconds, "rows/s", ceiling, "value>=200000",
                  f"{seconds:.2f} s, {note}; ceiling: one bare DELETE of as many rows")  # fmt: skip


def _bare_delete_rate(env: Environment, name: str, rows: int) -> float:
    """Rows/s of one plain DELETE of a measure's raw rows: what the table allows."""
    start = time.perf_counter()
    deleted = env.execute("DELETE FROM raw_measure WHERE measure_name = :name", {"name": name}).rowcount
    seconds = time.perf_counter() - start
    if deleted != rows:
        raise RuntimeError(f"the bare DELETE removed {deleted} rows, expected {rows}")
    return rows / seconds


def _while_loaded(env: Environment, requests, work) -> tuple[float, loadgen.LoadResult]:
    """Run `work()` in this thread while the requests are sent at 8 connections, from
    just before it starts until it returns; (its result, the load's result)."""
    stop, started = loadgen.new_event(), loadgen.new_event()
    during: list = []
    thread = threading.Thread(
        target=lambda: during.append(
            loadgen.run_load(env.port, requests, connections=8, stop=stop, started=started, timeout=600)
        )
    )
    thread.start()
    try:
        if not started.wait(60):
            raise RuntimeError("the load generator did not start")
        outcome = work()
    finally:
        stop.set()
        thread.join()
    if not during:
        raise RuntimeError("the load generator failed during the purge")
    if during[0].failures:
        raise RuntimeError(f"failed requests during the purge: {dict(during[0].statuses)}")
    return outcome, during[0]
