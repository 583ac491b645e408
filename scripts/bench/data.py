"""What the sections write: measure bodies for the HTTP endpoints, the definitions they
post to, and raw measures generated in the database."""

from __future__ import annotations

import datetime as dt

from scripts.bench.env import Environment

BULK_ITEMS = 10_000
CAPPED = "bench.contributors"
"""A measure with maxContributionsPerCell: each measure carries a contributor and counts
against its quota (the cap is never reached)."""


def measure_body(name: str, i: int, *, start: dt.date = dt.date(2023, 1, 1)) -> dict:
    return {
        "measureName": name,
        "value": (i * 37) % 101 + (i % 4) / 4,
        "startDate": (start + dt.timedelta(days=i % 30)).isoformat() + "T00:00:00",
        "createdBy": "bench",
        "group1": {"g1": "abcd"[i % 4]},
    }


def ensure_single_definition(env: Environment) -> None:
    """The measures that POST /measure(s) write to, shared by the sections."""
    if not env.execute("SELECT 1 FROM measure_definition WHERE name = 'bench.single'").first():
        env.add_definition("bench.single")
        env.add_definition(CAPPED, max_contributions_per_cell=10**9)


def contributor_body(i: int) -> dict:
    return {**measure_body(CAPPED, i), "contributor": f"household-{i % 5000}"}


def generate_raw(
    env: Environment, name: str, rows: int, *, start: dt.date, days: int, groups: int = 4, group2: int = 0
):
    """Insert `rows` raw measures in one set-based statement: every (day, group) cell gets
    the same number of rows, values cycle over 0..100; ingested (last_updated) during
    their start date, one millisecond apart as real traffic would be, so that a purge
    sees them as old. Rows are written in ingestion order, as a live table holds them:
    the table's physical order follows last_updated, which a purge walks."""
    cells = groups * max(group2, 1)
    group2_sql = "jsonb_build_object('g2', 'w' || ((i / :groups) % :group2))" if group2 else "NULL"
    env.execute(
        "INSERT INTO raw_measure (measure_name, value, start_date, created_by, group1, group2, last_updated)"
        " SELECT :name, (i * 37) % 101, day, 'bench', jsonb_build_object('g1', 'v' || (i % :groups)),"
        f" {group2_sql}, day + (i % 86400000) * interval '1 millisecond' AS ingested"
        " FROM generate_series(0, :rows - 1) AS i,"
        " LATERAL (SELECT CAST(:start AS timestamp) + ((i / :cells) % :days) * interval '1 day' AS day) AS d"
        " ORDER BY ingested",
        {
            "name": name,
            "start": start,
            "cells": cells,
            "days": days,
            "groups": groups,
            "group2": group2 or 1,
            "rows": rows,
        },
    )
