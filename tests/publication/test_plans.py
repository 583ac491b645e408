"""The plans of the publication's statements: set-based, whatever the statistics say.

A publication joins sets of a few days' cells (the rows in scope, their leaves, their
served versions). The planner estimates those sets from statistics that are stale as soon
as the latest days were written after the last ANALYZE, and on an estimate of one row it
nest-loops two sets of thousands of cells. The statements must plan without nested loops.
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa

from dacc.aggregation.compute import compute_aggregation
from dacc.db import db
from dacc.publication import sql as publication_sql
from tests.aggregation.helpers import insert_raw
from tests.publication.test_attacks import define

DAY = datetime(2024, 3, 1)


def _nodes(node):
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)


def _cells(count_by_cell):
    rows = []
    for (a, b), count in count_by_cell.items():
        rows += [(Decimal(1), DAY, "app", {"a": a}, {"b": b}, None)] * count
    return rows


def test_a_publication_plans_its_joins_of_cells_without_nested_loops(app):
    define(groups=2, k=5, wildcards=[["group1"], ["group2"]])
    insert_raw("m", _cells({(f"a{i}", f"b{j}"): 1 + (i + j) % 7 for i in range(12) for j in range(12)}))
    compute_aggregation("m", force=True)  # the first publication: the ledger fills up
    insert_raw("m", _cells({(f"a{i}", f"b{j}"): 1 for i in range(12) for j in range(0, 12, 2)}))

    executed: list[tuple[str, dict]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        executed.append((statement, parameters))

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        compute_aggregation("m", force=True)
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)

    # Replay the publication's statements from its first setting on, planned (not run)
    # as it planned them: the settings it made, then EXPLAIN of each.
    start = next(i for i, (s, _) in enumerate(executed) if s.strip() == publication_sql.HASH_JOINS)
    end = next(i for i, (s, _) in enumerate(executed) if s.strip() == publication_sql.PLAN_AS_USUAL)
    planned = 0
    with db.engine.connect() as conn:
        cursor = conn.connection.cursor()
        for statement, parameters in executed[start : end + 1]:
            if statement.lstrip().upper().startswith("SET"):
                cursor.execute(statement)
                continue
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
            plan = cursor.fetchone()[0]
            plan = json.loads(plan) if isinstance(plan, str) else plan
            kinds = {node["Node Type"] for node in _nodes(plan[0]["Plan"])}
            assert "Nested Loop" not in kinds, statement[:200]
            planned += 1
        conn.rollback()
    assert planned >= 4  # the leaves' update, the reads of leaves, pieces, versions, rows
