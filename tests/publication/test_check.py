"""`flask privacy check` over what was served, and the migration that started the ledger."""

from __future__ import annotations

import json
from datetime import datetime

import sqlalchemy as sa

from dacc.db import db

DAY = datetime(2024, 3, 1)


def _served_before_the_ledger(make_definition):
    """A ledger as migration 0003 would leave it from an old view that leaked: (x) and
    (*) served, so (*) - (x) gives (y), a cell of 2 contributions."""
    make_definition("m", aggregation_threshold=5, group1_key="g")
    key = "measure_name, start_date, created_by, group1"
    for g, count in (("x", 10), ("y", 2)):
        group = json.dumps({"g": g})
        db.session.execute(
            sa.text(f"INSERT INTO publication_leaf ({key}, count) VALUES ('m', :d, 'app', :g, :n)"),
            {"d": DAY, "g": group, "n": count},
        )
        db.session.execute(
            sa.text(
                f"INSERT INTO publication_piece ({key}, epoch, count) VALUES ('m', :d, 'app', :g, 1, :n)"
            ),
            {"d": DAY, "g": group, "n": count},
        )
    for g, count in (("x", 10), ("*", 12)):
        db.session.execute(
            sa.text(
                f"INSERT INTO published_version ({key}, version, contributions, epoch, body, published_at)"
                " VALUES ('m', :d, 'app', :g, 1, :n, 1, '{}', now())"
            ),
            {"d": DAY, "g": json.dumps({"g": g}), "n": count},
        )
    db.session.commit()


def test_check_lists_a_recoverable_cell_and_exits_1(runner, make_definition):
    _served_before_the_ledger(make_definition)
    result = runner.invoke(args=["privacy", "check"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "m 2024-03-01 app: 2 contribution(s) recoverable"
    assert lines[1] == '  pieces: ({"g": "y"}) epoch 1 (2)'
    assert lines[2] == '  from:   -1 x ({"g": "x"}) v1; +1 x ({"g": "*"}) v1'
    assert lines[-1] == "Error: 1 recoverable aggregate(s) of 1..k-1 contributions"


def test_check_of_another_day_or_measure_finds_nothing(runner, make_definition):
    _served_before_the_ledger(make_definition)
    make_definition("other")
    assert runner.invoke(args=["privacy", "check", "other"]).exit_code == 0
    result = runner.invoke(args=["privacy", "check", "m", "--date", "2024-03-02"])
    assert (result.exit_code, result.output) == (0, "no recoverable aggregate of 1..k-1 contributions\n")


def test_the_upgrade_publishes_exactly_what_the_view_served(unmigrated_app):
    """On a database of its own: at 0002, fill the old view, upgrade, compare, downgrade."""
    from flask_migrate import downgrade, upgrade

    upgrade(revision="0002")
    db.session.execute(
        sa.text(
            "INSERT INTO measure_definition (name, org, group1_key, aggregation_threshold, wildcard_groups)"
            " VALUES ('m', 'o', 'g', 3, '[[\"group1\"]]')"
        )
    )
    for g, n in (("x", 5), ("y", 2), ("z", 4), ("*", 11)):
        db.session.execute(
            sa.text(
                "INSERT INTO aggregate (measure_name, start_date, created_by, group1, count, count_not_zero,"
                " sum, sum_squares, min, max, avg, std) VALUES ('m', '2024-03-01', 'app', :g, :n, :n,"
                " :n, :n, 1, 1, 1, 0)"
            ),
            {"g": json.dumps({"g": g}), "n": n},
        )
    db.session.execute(sa.text("REFRESH MATERIALIZED VIEW filtered_aggregation"))
    db.session.commit()
    before = (
        db.session.execute(sa.text("SELECT body FROM filtered_aggregation ORDER BY body")).scalars().all()
    )
    db.session.commit()
    upgrade()
    after = db.session.execute(sa.text("SELECT body FROM published_cell ORDER BY body")).scalars().all()
    versions = db.session.execute(sa.text("SELECT count(*), min(version) FROM published_version")).one()
    pieces = db.session.execute(sa.text("SELECT count(*), sum(count) FROM publication_piece")).one()
    db.session.commit()
    assert after == before and len(after) == 2  # x and z; (*) hides y
    assert tuple(versions) == (2, 1)
    assert tuple(pieces) == (3, 11)
    downgrade(revision="0002")
    assert db.session.execute(sa.text("SELECT count(*) FROM filtered_aggregation")).scalar() == 2
    db.session.commit()
