"""What the purge keeps of the contributor state (cell_contributor, contributor_quota):
what a later merge or cap check can still use, and nothing else; k stays exact."""

import pytest
import sqlalchemy as sa

from dacc.aggregation.compute import compute_aggregation
from dacc.db import db
from dacc.errors import Conflict
from dacc.ingestion import record_measure, record_measures
from dacc.purge import purge_raw_measures
from tests.test_contributors import cell_key

OLD, YOUNG = "2022-01-01", "2022-01-02"


def body(group, contributor, day, value=1):
    return {
        "measureName": "m",
        "value": value,
        "startDate": day,
        "createdBy": "app",
        "group1": {"g1": group},
        "contributor": contributor,
    }


def age_day(day):
    """The raw measures of `day` were ingested ten days ago."""
    db.session.execute(
        sa.text(
            "UPDATE raw_measure SET last_updated = now() - interval '10 days'"
            " WHERE start_date = CAST(:day AS timestamp)"
        ),
        {"day": day},
    )
    db.session.commit()


def cells():
    """{(day, group1 value or '*'): (count, contributors)}."""
    rows = db.session.execute(
        sa.text("SELECT to_char(start_date, 'YYYY-MM-DD'), group1->>'g1', count, contributors FROM aggregate")
    ).all()
    return {(day, g): (n, c) for day, g, n, c in rows}


def hashes():
    """{(day, group1 value or '*'): contributor hashes kept}."""
    rows = db.session.execute(
        sa.text(
            "SELECT to_char(start_date, 'YYYY-MM-DD'), group1->>'g1', count(*) FROM cell_contributor"
            " GROUP BY 1, 2"
        )
    ).all()
    return {(day, g): n for day, g, n in rows}


def quotas():
    """{(day, group1 value): measures counted, all contributors}."""
    keys = {cell_key("app", {"g1": g}): g for g in ("x", "y")}
    rows = db.session.execute(
        sa.text(
            "SELECT to_char(start_date, 'YYYY-MM-DD'), cell_key, sum(contributions)"
            " FROM contributor_quota GROUP BY 1, 2"
        )
    ).all()
    return {(day, keys[key]): n for day, key, n in rows}


def refused() -> int:
    return db.session.execute(sa.text("SELECT count(*) FROM refused_raw_measure")).scalar()


def test_a_quartile_measure_forgets_the_contributors_of_the_cells_a_purge_stamps(make_definition):
    make_definition(
        "m",
        with_quartiles=True,
        max_days_to_update_quartile=1,
        wildcard_groups=[["group1"]],
        max_contributions_per_cell=2,
    )
    record_measures(
        [
            body("x", "alice", OLD),
            body("x", "alice", OLD),
            body("x", "bob", OLD),
            body("y", "carol", OLD),
            body("x", "alice", YOUNG),
            body("x", "bob", YOUNG),
        ]
    )
    compute_aggregation("m", force=True)
    age_day(OLD)
    before = {
        (OLD, "x"): (3, 2),
        (OLD, "y"): (1, 1),
        (OLD, "*"): (4, 3),
        (YOUNG, "x"): (2, 2),
        (YOUNG, "*"): (2, 2),
    }
    assert cells() == before
    assert hashes() == {(OLD, "x"): 2, (OLD, "y"): 1, (OLD, "*"): 3, (YOUNG, "x"): 2, (YOUNG, "*"): 2}
    assert quotas() == {(OLD, "x"): 3, (OLD, "y"): 1, (YOUNG, "x"): 2}

    result = purge_raw_measures("m", days=1)

    assert (result.deleted, result.stamped) == (4, 3)
    # Hashes: 2 + 1 + 3 of the stamped day; quota rows: alice's, bob's and carol's.
    assert result.forgotten == 6 + 3
    assert hashes() == {(YOUNG, "x"): 2, (YOUNG, "*"): 2}
    assert quotas() == {(YOUNG, "x"): 2}
    assert cells() == before
    # A stamped cell takes no later measure: alice's quota there is gone, and what she
    # sends is refused by the aggregation, counted nowhere.
    record_measure(body("x", "alice", OLD))
    # The young day still counts distinct contributors: alice again, dave new.
    record_measures([body("x", "alice", YOUNG), body("x", "dave", YOUNG)])
    with pytest.raises(Conflict):
        record_measure(body("x", "alice", YOUNG))
    compute_aggregation("m", force=True)
    assert refused() == 1
    assert cells() == {**before, (YOUNG, "x"): (4, 3), (YOUNG, "*"): (4, 3)}
    assert hashes() == {(YOUNG, "x"): 3, (YOUNG, "*"): 3}


def test_without_quartiles_a_purged_cell_keeps_its_hashes_and_quotas(make_definition):
    """Late measures merge into purged cells: k and the cap stay exact only with them."""
    make_definition("m", wildcard_groups=[["group1"]], max_contributions_per_cell=2)
    record_measures([body("x", "alice", OLD), body("x", "alice", OLD), body("x", "bob", OLD)])
    compute_aggregation("m", force=True)
    age_day(OLD)

    result = purge_raw_measures("m", days=1)

    assert (result.deleted, result.stamped, result.forgotten) == (3, 2, 0)
    assert hashes() == {(OLD, "x"): 2, (OLD, "*"): 2}
    assert quotas() == {(OLD, "x"): 3}
    with pytest.raises(Conflict):
        record_measure(body("x", "alice", OLD))
    record_measures([body("x", "bob", OLD, value=5), body("x", "carol", OLD, value=7)])
    compute_aggregation("m", force=True)
    assert refused() == 0
    # 5 measures from 3 people, though the raw rows of the first 3 are gone.
    assert cells() == {(OLD, "x"): (5, 3), (OLD, "*"): (5, 3)}


def test_the_quotas_of_a_definition_without_a_cap_go_at_its_next_purge(make_definition):
    make_definition("m", max_contributions_per_cell=1)
    record_measures([body("x", "alice", OLD), body("y", "alice", OLD)])
    compute_aggregation("m", force=True)
    db.session.execute(sa.text("UPDATE measure_definition SET max_contributions_per_cell = NULL"))
    db.session.commit()

    result = purge_raw_measures("m", days=1)

    assert (result.deleted, result.forgotten) == (0, 2)
    assert quotas() == {}
    assert hashes() == {(OLD, "x"): 1, (OLD, "y"): 1}
