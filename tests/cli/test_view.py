"""`flask view ...`: create, update, delete and recreate filtered_aggregation."""

from datetime import datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from dacc import filtered_view
from dacc.db import db
from tests.aggregation.helpers import insert_raw


@pytest.fixture
def view_back(app):
    yield
    filtered_view.recreate_filtered_view()


def _served():
    rows = db.session.execute(sa.text("SELECT measure_name, count FROM filtered_aggregation")).all()
    db.session.commit()
    return rows


def _aggregate(runner, make_definition):
    make_definition("m", aggregation_threshold=2)
    insert_raw("m", [(Decimal(1), datetime(2024, 1, 1), "app", {"g1": "x"}, None, None)] * 2)
    runner.invoke(args=["compute-aggregation", "m"])


def test_update_refreshes_the_view(runner, make_definition):
    _aggregate(runner, make_definition)
    db.session.execute(sa.text("UPDATE aggregate SET count = 7"))
    db.session.commit()
    result = runner.invoke(args=["view", "update-filtered-aggregation"])
    assert result.exit_code == 0, result.output
    assert result.output == "filtered_aggregation refreshed\n"
    assert _served() == [("m", 7)]


def test_create_when_it_exists_fails(runner, app):
    result = runner.invoke(args=["view", "create-filtered-aggregation"])
    assert result.exit_code == 1
    assert "filtered_aggregation already exists" in result.output


def test_delete_asks_first(runner, app):
    result = runner.invoke(args=["view", "delete-filtered-aggregation"], input="n\n")
    assert result.exit_code == 1
    assert _served() == []  # still there


def test_delete_then_update_fails_then_create_serves_again(runner, make_definition, view_back):
    _aggregate(runner, make_definition)
    deleted = runner.invoke(args=["view", "delete-filtered-aggregation", "--yes"])
    assert (deleted.exit_code, deleted.output) == (0, "filtered_aggregation deleted\n")
    update = runner.invoke(args=["view", "update-filtered-aggregation"])
    assert update.exit_code == 1
    assert "filtered_aggregation does not exist" in update.output
    again = runner.invoke(args=["view", "delete-filtered-aggregation", "--yes"])
    assert again.exit_code == 1
    created = runner.invoke(args=["view", "create-filtered-aggregation"])
    assert (created.exit_code, created.output) == (0, "filtered_aggregation created\n")
    assert _served() == [("m", 2)]


def test_recreate_swaps_in_a_fresh_view(runner, make_definition, view_back):
    _aggregate(runner, make_definition)
    db.session.execute(sa.text("UPDATE aggregate SET count = 9"))
    db.session.commit()
    result = runner.invoke(args=["view", "recreate-filtered-aggregation"])
    assert (result.exit_code, result.output) == (0, "filtered_aggregation recreated\n")
    assert _served() == [("m", 9)]
