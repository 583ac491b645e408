"""Test helpers: write raw measures directly, recompute the expected cells in one GROUP BY."""

from __future__ import annotations

import json
import time

import psycopg2
import sqlalchemy as sa

from dacc.db import db

GROUPS = ("group1", "group2", "group3")
STATS = (
    "count",
    "count_not_zero",
    "sum",
    "min",
    "max",
    "avg",
    "std",
    "median",
    "first_quartile",
    "third_quartile",
)


def insert_raw(name: str, rows) -> None:
    """rows: (value, start_date, created_by, group1, group2, group3); committed, one statement.

    A missing group is SQL NULL, as ingestion writes it (the ORM would write JSON null).
    """
    records = []
    for v, d, c, *groups in rows:
        record = {"value": str(v), "start_date": d.isoformat(), "created_by": c}
        record.update({g: value for g, value in zip(GROUPS, groups) if value is not None})
        records.append(record)
    db.session.execute(
        sa.text(
            "INSERT INTO raw_measure (measure_name, value, start_date, created_by, group1, group2, group3)"
            " SELECT :name, value, start_date, created_by, group1, group2, group3"
            " FROM jsonb_to_recordset(CAST(:records AS jsonb)) AS x(value numeric, start_date timestamp,"
            " created_by text, group1 jsonb, group2 jsonb, group3 jsonb)"
        ),
        {"name": name, "records": json.dumps(records)},
    )
    db.session.commit()


def expected_cells(definition, starred=frozenset()) -> dict:
    """Cells of one level recomputed from ALL raw rows with PostgreSQL's own aggregates."""
    keys = {"group1": definition.group1_key, "group2": definition.group2_key, "group3": definition.group3_key}
    exprs = {g: (f"CAST(:star_{g} AS jsonb)" if g in starred else g) for g in GROUPS}
    quartiles = (
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY value),"
        " percentile_cont(0.25) WITHIN GROUP (ORDER BY value),"
        " percentile_cont(0.75) WITHIN GROUP (ORDER BY value)"
        if definition.with_quartiles
        else "NULL, NULL, NULL"
    )
    rows = db.session.execute(
        sa.text(f"""
            SELECT date_trunc(:period, start_date), created_by,
                   {exprs['group1']}, {exprs['group2']}, {exprs['group3']},
                   count(*), count(*) FILTER (WHERE value <> 0), sum(value), min(value), max(value),
                   avg(value)::float8, coalesce(stddev_samp(value), 0)::float8, {quartiles}
            FROM raw_measure WHERE measure_name = :name
            GROUP BY 1, 2, 3, 4, 5
            """),
        {
            "name": definition.name,
            "period": definition.aggregation_period,
            **{f"star_{g}": json.dumps({k: "*"}) for g, k in keys.items() if k},
        },
    ).all()
    return {_key(r[:5]): dict(zip(STATS, r[5:])) for r in rows}


def aggregate_cells(name: str, starred_keys: dict | None = None) -> dict:
    """Aggregate rows of a measure; with `starred_keys` ({group: key}) only that level's."""
    rows = db.session.execute(
        sa.text(
            "SELECT start_date, created_by, group1, group2, group3, "
            + ", ".join(STATS)
            + " FROM aggregate WHERE measure_name = :name"
        ),
        {"name": name},
    ).all()
    cells = {_key(r[:5]): dict(zip(STATS, r[5:])) for r in rows}
    assert len(cells) == len(rows), "two aggregate rows for one cell"
    if starred_keys is None:
        return cells
    return {k: v for k, v in cells.items() if _level_of(k) == starred_keys}


def _level_of(key) -> dict:
    groups = dict(zip(GROUPS, key[2:]))
    return {g: next(iter(json.loads(v))) for g, v in groups.items() if v and '"*"' in v}


def _key(row) -> tuple:
    start, created_by, *groups = row
    return (start, created_by, *(json.dumps(g, sort_keys=True) if g is not None else None for g in groups))


def assert_cells_equal(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, want in expected.items():
        got = actual[key]
        for stat in ("count", "count_not_zero", "sum", "min", "max"):
            assert got[stat] == want[stat], (key, stat, got[stat], want[stat])
        for stat in ("avg", "std"):
            assert abs(got[stat] - want[stat]) <= 1e-9 * max(abs(want[stat]), 1e-300), (key, stat, got, want)
        for stat in ("median", "first_quartile", "third_quartile"):
            assert got[stat] == want[stat], (key, stat, got[stat], want[stat])


def database_url(driver: str = "postgresql") -> str:
    """URL of the test database, for another connection or process."""
    return db.engine.url.set(drivername=driver).render_as_string(hide_password=False)


def blocked_pid(holder, timeout: float = 30.0) -> int:
    """Poll until a backend waits on a lock that connection `holder` holds; its pid."""
    with holder.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        holder_pid = cur.fetchone()[0]
    deadline = time.monotonic() + timeout
    probe = psycopg2.connect(holder.dsn)
    probe.autocommit = True
    try:
        with probe.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute(
                    "SELECT pid FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
                    (holder_pid,),
                )
                row = cur.fetchone()
                if row:
                    return row[0]
                time.sleep(0.02)
    finally:
        probe.close()
    raise AssertionError("no backend got blocked")


def wait_backend_gone(pid: int, timeout: float = 30.0) -> None:
    probe = psycopg2.connect(database_url())
    probe.autocommit = True
    deadline = time.monotonic() + timeout
    try:
        with probe.cursor() as cur:
            while time.monotonic() < deadline:
                cur.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
                if cur.fetchone() is None:
                    return
                time.sleep(0.02)
    finally:
        probe.close()
    raise AssertionError(f"backend {pid} still there")
