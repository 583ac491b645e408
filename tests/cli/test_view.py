"""`flask view ...`: publish what is pending, republish, and the filtered_aggregation view."""

from datetime import datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from dacc import publication
from dacc.db import db
from tests.aggregation.helpers import insert_raw


@pytest.fixture
def view_back(app):
    yield
    publication.create_view(replace=True)


def _served():
    rows = db.session.execute(sa.text("SELECT measure_name, count, version FROM filtered_aggregation")).all()
    db.session.commit()
    return rows


def _aggregate(runner, make_definition, n=2):
    make_definition("m", aggregation_threshold=2)
    insert_raw("m", [(Decimal(1), datetime(2024, 1, 1), "app", {"g1": "x"}, None, None)] * n)
    runner.invoke(args=["compute-aggregation", "m", "--force"])


def test_update_publishes_what_is_pending_and_nothing_else(runner, make_definition):
    _aggregate(runner, make_definition)
    assert _served() == [("m", 2, 1)]
    # A count that moved by less than k is not served anew, even when asked.
    db.session.execute(sa.text("UPDATE aggregate SET count = 3, last_updated = now()"))
    db.session.commit()
    result = runner.invoke(args=["view", "update-filtered-aggregation"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "filtered_aggregation refreshed"
    assert "m: 0 row(s) published, 1 withheld" not in result.output
    assert _served() == [("m", 2, 1)]


def test_create_when_it_exists_fails(runner, app):
    result = runner.invoke(args=["view", "create-filtered-aggregation"])
    assert result.exit_code == 1
    assert "filtered_aggregation already exists" in result.output


def test_delete_asks_first(runner, app):
    result = runner.invoke(args=["view", "delete-filtered-aggregation"], input="n\n")
    assert result.exit_code == 1
    assert _served() == []  # still there


def test_delete_keeps_aggregate_serving_then_create_restores_the_view(
    runner, make_definition, view_back, client, auth_header
):
    _aggregate(runner, make_definition)
    deleted = runner.invoke(args=["view", "delete-filtered-aggregation", "--yes"])
    assert (deleted.exit_code, deleted.output) == (0, "filtered_aggregation deleted\n")
    answer = client.get(
        "/aggregate",
        query_string={"measureName": "m", "startDate": "2024-01-01", "endDate": "2024-01-02"},
        headers=auth_header(),
    )
    assert [row["count"] for row in answer.get_json()] == [2]
    again = runner.invoke(args=["view", "delete-filtered-aggregation", "--yes"])
    assert again.exit_code == 1 and "filtered_aggregation does not exist" in again.output
    created = runner.invoke(args=["view", "create-filtered-aggregation"])
    assert created.exit_code == 0 and created.output.startswith("filtered_aggregation created\n")
    assert _served() == [("m", 2, 1)]


def test_recreate_republishes_after_a_rule_change(runner, make_definition):
    _aggregate(runner, make_definition, n=6)
    db.session.execute(sa.text("UPDATE aggregate SET count = 9"))  # +3 >= k (2), not touched
    db.session.commit()
    assert _served() == [("m", 6, 1)]
    result = runner.invoke(args=["view", "recreate-filtered-aggregation", "--measure", "m"])
    assert result.exit_code == 0, result.output
    assert "m: 1 row(s) published, 0 withheld, 1 day(s)/app(s) decided" in result.output
    assert _served() == [("m", 9, 2)]


def test_recreate_of_an_unknown_measure_is_one_line(runner, app):
    result = runner.invoke(args=["view", "recreate-filtered-aggregation", "--measure", "nope"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: measure 'nope': no such definition"
