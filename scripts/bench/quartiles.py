"""Aggregation lines of quartile measures whose every cell gets new rows."""

from __future__ import annotations

import datetime as dt

from scripts.bench.compute import reset_aggregates, timed_compute
from scripts.bench.cpu import run_seconds
from scripts.bench.data import generate_raw
from scripts.bench.env import Environment
from scripts.bench.figures import Figure


def quartiles_every_cell(env: Environment, start: dt.date) -> list[Figure]:
    """New rows in every cell of a quartile measure: 600 cells (30 days × 4 × 5 groups),
    `agg_incremental` new rows on `agg_quartile_rows`, against the full run of the same
    measure. Alternated, best of 3: each round forgets the cells, runs the full run on
    the old rows, adds the new rows, runs the increment, then deletes the new rows."""
    sizes = env.sizes
    rows, new = sizes["agg_quartile_rows"], sizes["agg_incremental"]
    definition = env.add_definition("bench.agg_q600", with_quartiles=True, group2_key="g2")
    generate_raw(env, definition.name, rows, start=start, days=30, groups=4, group2=5)
    top = env.execute("SELECT max(id) FROM raw_measure").scalar()
    full_runs, incremental_runs, full_cpu, incremental_cpu = [], [], [], []
    for _ in range(3):
        env.vacuum()
        reset_aggregates(env, definition.name)
        cpu = run_seconds(env.pgdata)
        full_runs.append(timed_compute(env, definition, expect=rows))
        full_cpu.append(run_seconds(env.pgdata) - cpu if cpu is not None else None)
        generate_raw(env, definition.name, new, start=start, days=30, groups=4, group2=5)
        cpu = run_seconds(env.pgdata)
        incremental_runs.append(timed_compute(env, definition, expect=new))
        incremental_cpu.append(run_seconds(env.pgdata) - cpu if cpu is not None else None)
        # The cells the increment merged into carry its transaction's now().
        touched = env.execute(
            "SELECT count(*) FROM aggregate WHERE measure_name = :name AND last_updated ="
            " (SELECT max(last_updated) FROM aggregate WHERE measure_name = :name)",
            {"name": definition.name},
        ).scalar()
        if touched != 600:
            raise RuntimeError(f"the increment touched {touched} of 600 cells")
        env.execute(
            "DELETE FROM raw_measure WHERE measure_name = :name AND id > :top",
            {"name": definition.name, "top": top},
        )
    full, incremental = min(full_runs), min(incremental_runs)
    figures = [
        Figure("aggregation", f"compute-aggregation --force, {rows:,} rows in 600 cells, quartiles on", full, "s",
               note="best of 3, alternated with the increment below"),
        Figure("aggregation", f"incremental {new:,} on {rows:,}, quartiles on, all 600 cells touched", incremental, "s",
               full, "ratio<=0.3,value<=1", "ceiling column: the full run of the same measure; best of 3"),
    ]  # fmt: skip
    if None not in full_cpu:
        figures.append(
            Figure("aggregation", "the same in CPU time, this process and the database's", min(incremental_cpu), "s",
                   min(full_cpu), note="ceiling column: the full run's CPU time; steadier than wall time on a busy "
                   "machine (10 ms ticks); least of 3 each"),
        )  # fmt: skip
    return figures
