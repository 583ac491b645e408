"""Bench section `aggregation`: full and incremental runs against a bare GROUP BY; with
the quartile lines (`quartiles`) and the aggregation's memory (`memory`) figures."""

from __future__ import annotations

import datetime as dt
import time

from scripts.bench.compute import fresh_compute, publish_everything, timed_compute
from scripts.bench.data import generate_raw
from scripts.bench.env import Environment
from scripts.bench.figures import Figure
from scripts.bench.memory import memory_figures
from scripts.bench.quartiles import quartiles_every_cell

CEILING_SQL = """
INSERT INTO bench_ceiling
SELECT measure_name, date_trunc('day', start_date), created_by, group1, group2, group3,
       count(*), count(*) FILTER (WHERE value <> 0), sum(value), sum(value * value),
       min(value), max(value), avg(value), coalesce(stddev_samp(value), 0) {quartiles}
FROM raw_measure WHERE measure_name = :name
GROUP BY 1, 2, 3, 4, 5, 6
"""
QUARTILES_SQL = ", percentile_cont(ARRAY[0.25, 0.5, 0.75]) WITHIN GROUP (ORDER BY value)"


def _ceiling_seconds(env: Environment, name: str, *, quartiles: bool) -> float:
    """Time the bare GROUP BY with the same statistics, into a throw-away table."""
    env.execute("DROP TABLE IF EXISTS bench_ceiling")
    env.execute(
        "CREATE UNLOGGED TABLE bench_ceiling (measure_name text, start_date timestamp, created_by text,"
        " group1 jsonb, group2 jsonb, group3 jsonb, count bigint, count_not_zero bigint, sum numeric,"
        " sum_squares numeric, min numeric, max numeric, avg numeric, std numeric, quartiles float8[])"
    )
    start = time.perf_counter()
    env.execute(CEILING_SQL.format(quartiles=QUARTILES_SQL if quartiles else ", NULL"), {"name": name})
    return time.perf_counter() - start


def section_aggregation(env: Environment) -> list[Figure]:
    sizes = env.sizes
    start = dt.date(2023, 1, 1)
    big = env.add_definition("bench.agg")
    quart = env.add_definition("bench.agg_q", with_quartiles=True)
    small = env.add_definition("bench.agg_small")
    generate_raw(env, big.name, sizes["agg_rows"], start=start, days=30)
    generate_raw(env, quart.name, sizes["agg_quartile_rows"], start=start, days=30)
    generate_raw(env, small.name, sizes["agg_small_rows"], start=start, days=30)
    env.vacuum()

    figures = []
    fulls = {}
    for definition, rows, quartiles in (
        (big, sizes["agg_rows"], False),
        (quart, sizes["agg_quartile_rows"], True),
    ):
        # Alternated, best of 3 each: a 0.2 s run swings by half on this kind of machine.
        ceiling_runs, full_runs = [], []
        for _ in range(3):
            ceiling_runs.append(_ceiling_seconds(env, definition.name, quartiles=quartiles))
            full_runs.append(fresh_compute(env, definition, rows))
        ceiling, full = min(ceiling_runs), min(full_runs)
        label = "quartiles on" if quartiles else "quartiles off"
        figures.append(
            Figure("aggregation", f"compute-aggregation --force, {rows:,} rows, {label}", full, "s", ceiling,
                   "ratio<=1.5", "ceiling: bare INSERT … SELECT … GROUP BY; best of 3")
        )  # fmt: skip
        fulls[quartiles] = full
    last_day = start + dt.timedelta(days=29)
    generate_raw(env, big.name, sizes["agg_incremental"], start=last_day, days=1)
    incremental = timed_compute(env, big, expect=sizes["agg_incremental"])
    # Into existing cells: their quartiles are re-read from all their raw rows.
    few = sizes["agg_incremental"] // 10
    generate_raw(env, quart.name, few, start=last_day, days=1)
    incremental_quartiles = timed_compute(env, quart, expect=few)
    figures += [
        Figure("aggregation", f"incremental {sizes['agg_incremental']:,} on {sizes['agg_rows']:,}", incremental, "s",
               fulls[False], "ratio<=0.05", "ceiling column: the full run above"),
        Figure("aggregation", f"incremental {few:,} on {sizes['agg_quartile_rows']:,}, quartiles on, existing cells",
               incremental_quartiles, "s", fulls[True], note="ceiling column: the full run with quartiles"),
        *quartiles_every_cell(env, start),
    ]  # fmt: skip
    started = time.perf_counter()
    publish_everything()
    refresh = time.perf_counter() - started
    cells = env.execute("SELECT count(*) FROM aggregate").scalar()
    figures.append(
        Figure(
            "aggregation",
            f"publication of what is pending ({cells:,} aggregates, every measure)",
            refresh,
            "s",
        )
    )
    figures += memory_figures(env, small.name, big.name)
    return figures
