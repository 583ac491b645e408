"""Test helpers for restitution and privacy: aggregate rows written directly, read back."""

from __future__ import annotations

import json
from datetime import datetime

import sqlalchemy as sa

from dacc.db import db
from dacc.publication import publish_pending

KEYS = ("a", "b", "c")
DAY = datetime(2024, 3, 1)


def define(make_definition, name="m", *, groups=2, k=5, **columns):
    """A definition with group keys a, b, c (the first `groups` of them) and threshold k."""
    keys = {f"group{i + 1}_key": KEYS[i] if i < groups else None for i in range(3)}
    return make_definition(name, aggregation_threshold=k, **{**keys, **columns})


def put_aggregates(name: str, cells: dict, *, day: datetime = DAY, created_by: str = "app") -> None:
    """Write aggregate rows and publish them; committed.

    cells: {(value of a, value of b, ...): count}; "*" makes a wildcard group. Every
    value of a row is 2, so that sum = 2 * count.
    """
    rows = []
    for values, count in cells.items():
        groups = {f"group{i + 1}": {KEYS[i]: v} for i, v in enumerate(values)}
        rows.append({"start_date": day.isoformat(), "created_by": created_by, "count": count, **groups})
    db.session.execute(
        sa.text(
            "INSERT INTO aggregate (measure_name, start_date, created_by, group1, group2, group3,"
            " count, count_not_zero, sum, sum_squares, min, max, avg, std,"
            " contributors, largest_value, second_largest_value)"
            " SELECT :name, start_date, created_by, group1, group2, group3,"
            " count, count, 2 * count, 4 * count, 2, 2, 2, 0, count, 2, 2"
            " FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x(start_date timestamp,"
            " created_by text, count bigint, group1 jsonb, group2 jsonb, group3 jsonb)"
        ),
        {"name": name, "rows": json.dumps(rows)},
    )
    db.session.commit()
    publish_pending()


def served(name: str = "m", *, created_by: str | None = None, day: datetime | None = None) -> dict:
    """What the view holds for a measure: {(values of its groups): count}."""
    rows = db.session.execute(
        sa.text(
            "SELECT group1, group2, group3, count FROM filtered_aggregation"
            " WHERE measure_name = :name AND (CAST(:by AS text) IS NULL OR created_by = :by)"
            " AND (CAST(:day AS timestamp) IS NULL OR start_date = :day)"
        ),
        {"name": name, "by": created_by, "day": day},
    ).all()
    db.session.commit()
    return {values(row[:3]): row[3] for row in rows}


def values(groups) -> tuple:
    """(value, ...) of the groups present, in order: ({"a": "x"}, {"b": "*"}, None) → ("x", "*")."""
    return tuple(next(iter(g.values())) for g in groups if g is not None)
