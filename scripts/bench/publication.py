"""Bench section `publication`: the ledger's cost against its history and the old view.

Cells are written straight into `aggregate` (years of one 2-group measure with all its
wildcard levels, counts 1..12 so that some cells are withheld), then:
- the old materialized view (migration 0002's query) refreshed over the same cells,
  beside the first full publication and a republication (recreate) of the measure;
- 10,000 new raw measures over the last days: the merge alone (publication switched
  off), then the publication of what it changed, which must follow the changed cells;
- `flask privacy check` over one day of a 3-group measure, 10 x 10 x 10, all 7 levels.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import time
from unittest import mock

from dacc import publication
from dacc.aggregation import compute
from dacc.publication.publisher import PublicationResult
from scripts.bench.cpu import postmaster_pid, tree_seconds
from scripts.bench.env import ROOT, Environment
from scripts.bench.figures import Figure

MIGRATION_0002 = ROOT / "migrations/versions/0002_filtered_view_suppression.py"

# Plain cells of `days` days × g1 × g2 with counts 1..12, then every wildcard level as
# exact sums of them: one statement each, no raw rows.
_PLAIN = """
INSERT INTO aggregate (measure_name, start_date, created_by, group1, group2, group3, count,
    count_not_zero, sum, sum_squares, min, max, avg, std, contributors, largest_value)
SELECT :name, CAST(:start AS timestamp) + d * interval '1 day', 'bench',
       jsonb_build_object('g1', 'a' || a), jsonb_build_object('g2', 'b' || b), NULL,
       n, n, 2 * n, 4 * n, 2, 2, 2, 0, n, 2
FROM generate_series(0, :days - 1) d, generate_series(1, :a) a, generate_series(1, :b) b,
     LATERAL (SELECT 1 + (abs(hashint4(d * 7919 + a * 104729 + b)) % 12) AS n) c
"""
_LEVEL = """
INSERT INTO aggregate (measure_name, start_date, created_by, group1, group2, group3, count,
    count_not_zero, sum, sum_squares, min, max, avg, std, contributors, largest_value)
SELECT measure_name, start_date, created_by,
       CASE WHEN :star1 THEN '{"g1": "*"}'::jsonb ELSE group1 END,
       CASE WHEN :star2 THEN '{"g2": "*"}'::jsonb ELSE group2 END, NULL,
       sum(count), sum(count), sum(sum), sum(sum_squares), 2, 2, 2, 0, sum(count), 2
FROM aggregate WHERE measure_name = :name AND group1 <> '{"g1": "*"}' AND group2 <> '{"g2": "*"}'
GROUP BY 1, 2, 3, 4, 5
"""
_CUBE_PLAIN = """
INSERT INTO aggregate (measure_name, start_date, created_by, group1, group2, group3, count,
    count_not_zero, sum, sum_squares, min, max, avg, std, contributors, largest_value)
SELECT :name, CAST(:start AS timestamp), 'bench', jsonb_build_object('g1', a),
       jsonb_build_object('g2', b), jsonb_build_object('g3', c), n, n, 2 * n, 4 * n, 2, 2, 2, 0, n, 2
FROM generate_series(1, 10) a, generate_series(1, 10) b, generate_series(1, 10) c,
     LATERAL (SELECT 1 + (abs(hashint4(a * 7919 + b * 104729 + c)) % 12) AS n) x
"""
_CUBE_LEVEL = """
INSERT INTO aggregate (measure_name, start_date, created_by, group1, group2, group3, count,
    count_not_zero, sum, sum_squares, min, max, avg, std, contributors, largest_value)
SELECT measure_name, start_date, created_by,
       CASE WHEN :s1 THEN '{"g1": "*"}'::jsonb ELSE group1 END,
       CASE WHEN :s2 THEN '{"g2": "*"}'::jsonb ELSE group2 END,
       CASE WHEN :s3 THEN '{"g3": "*"}'::jsonb ELSE group3 END,
       sum(count), sum(count), sum(sum), sum(sum_squares), 2, 2, 2, 0, sum(count), 2
FROM aggregate WHERE measure_name = :name
  AND group1 <> '{"g1": "*"}' AND group2 <> '{"g2": "*"}' AND group3 <> '{"g3": "*"}'
GROUP BY 1, 2, 3, 4, 5, 6
"""


_RAW = """
INSERT INTO raw_measure (measure_name, value, start_date, created_by, group1, group2)
SELECT :name, 2, CAST(:first AS timestamp) + (i % 3) * interval '1 day', 'bench',
       jsonb_build_object('g1', 'a' || (1 + i % :a)), jsonb_build_object('g2', 'b' || (1 + (i / :a) % :b))
FROM generate_series(0, :n - 1) i
"""
"""New raw measures spread over the last 3 days of cells."""


def _cpu_seconds(env) -> float | None:
    """CPU seconds used so far by this process and by the embedded PostgreSQL (its
    postmaster and the backends doing the statements); None on an external database,
    whose processes are not ours to read."""
    if os.environ.get("DATABASE_URL"):
        return None
    database = tree_seconds(postmaster_pid(env.tmp / "pgdata"))
    return None if database is None else time.process_time() + database


def section_publication(env: Environment) -> list[Figure]:
    cells, figures = env.sizes["pub_cells"], []
    a, b = 20, 25
    days = max(1, cells // (a * b + a + b + 1))
    start = dt.date.today() - dt.timedelta(days=days + 1)
    levels = [["group1"], ["group2"], ["group1", "group2"]]
    definition = env.add_definition(
        "bench.pub", group2_key="g2", aggregation_threshold=5, wildcard_groups=levels, extremes="show"
    )
    params = {"name": definition.name, "start": start, "days": days, "a": a, "b": b}
    env.execute(_PLAIN, params)
    for star1, star2 in ((True, False), (False, True), (True, True)):
        env.execute(_LEVEL, {**params, "star1": star1, "star2": star2})
    env.vacuum("aggregate")
    total = env.execute("SELECT count(*) FROM aggregate WHERE measure_name = :name", params).scalar()

    spec = importlib.util.spec_from_file_location("bench_migration_0002", MIGRATION_0002)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    env.execute("DROP MATERIALIZED VIEW IF EXISTS bench_old_view")
    env.execute("CREATE MATERIALIZED VIEW bench_old_view AS " + module.FILTERED_VIEW_QUERY + " WITH NO DATA")
    started = time.perf_counter()
    env.execute("REFRESH MATERIALIZED VIEW bench_old_view")
    old_view = time.perf_counter() - started
    env.execute("DROP MATERIALIZED VIEW bench_old_view")

    started = time.perf_counter()
    (first,) = publication.publish_pending(names=[definition.name], full=True)
    full = time.perf_counter() - started
    started = time.perf_counter()
    publication.publish_pending(names=[definition.name], full=True)
    again = time.perf_counter() - started
    figures += [
        Figure("publication", f"old view refresh, {total:,} cells ({days} days, 2 groups, all levels)", old_view, "s",
               note="the materialized view of migration 0002, same cells"),
        Figure("publication", f"first full publication, {total:,} cells ({first.published:,} served,"
               f" {first.withheld:,} withheld)", full, "s", old_view,
               note="ceiling column: the old view refresh"),
        Figure("publication", f"republication (recreate), {total:,} cells", again, "s", old_view,
               note="ceiling column: the old view refresh"),
    ]  # fmt: skip

    new = env.sizes["pub_incremental"]
    env.execute(_RAW, {**params, "n": new, "first": start + dt.timedelta(days=days - 3)})
    env.vacuum()
    skipped = PublicationResult(definition.name)
    with mock.patch.object(compute, "publish_measure", lambda conn, name: skipped):
        started, cpu = time.perf_counter(), _cpu_seconds(env)
        result = compute.compute_aggregation(definition.name, force=True)
        merge = time.perf_counter() - started
        merge_cpu = _cpu_seconds(env) - cpu if cpu is not None else None
    started, cpu = time.perf_counter(), _cpu_seconds(env)
    (pending,) = publication.publish_pending(names=[definition.name])
    incremental = time.perf_counter() - started
    incremental_cpu = _cpu_seconds(env) - cpu if cpu is not None else None
    figures += [
        Figure("publication", f"merge of {result.raw_read:,} new raw measures (publication off)", merge, "s"),
        Figure("publication", f"publication after it ({pending.hierarchies} days decided, {pending.published} served)",
               incremental, "s", full, "ratio<=0.05", "ceiling column: the first full publication"),
        Figure("publication", "the same publication against the merge's own time", incremental, "s", merge,
               "ratio<=2", "ceiling column: the merge"),
    ]  # fmt: skip
    if merge_cpu:
        figures.append(
            Figure("publication", "the same in CPU time, this process and the database's", incremental_cpu, "s",
                   merge_cpu, "ratio<=2", "ceiling column: the merge's CPU time; steadier than wall time on a busy "
                   "machine (10 ms ticks)"),
        )  # fmt: skip

    cube = env.add_definition(
        "bench.cube",
        group2_key="g2",
        group3_key="g3",
        aggregation_threshold=5,
        extremes="show",
        wildcard_groups=[["group1"]],
    )
    day = dt.date.today() - dt.timedelta(days=10)
    cube_params = {"name": cube.name, "start": day}
    env.execute(_CUBE_PLAIN, cube_params)
    for mask in range(1, 8):
        env.execute(
            _CUBE_LEVEL, {**cube_params, "s1": bool(mask & 1), "s2": bool(mask & 2), "s3": bool(mask & 4)}
        )
    started = time.perf_counter()
    (cube_result,) = publication.publish_pending(names=[cube.name], full=True)
    cube_publish = time.perf_counter() - started
    started = time.perf_counter()
    found = publication.check_privacy(cube.name, day=dt.datetime.combine(day, dt.time()))
    check = time.perf_counter() - started
    figures += [
        Figure("publication", f"publication of one 10×10×10 day, 7 levels ({cube_result.published} served,"
               f" {cube_result.withheld} withheld)", cube_publish, "s"),
        Figure("publication", f"privacy check of that day ({len(found)} found)", check, "s", target="value<=1"),
    ]  # fmt: skip
    return figures
