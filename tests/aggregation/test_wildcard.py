"""compute_wildcard_aggregate: one recomputed wildcard level over an ingestion-time window."""

import os
import signal
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import psycopg2
import pytest
import sqlalchemy as sa

from dacc.aggregation.compute import compute_aggregation, compute_wildcard_aggregate
from dacc.db import db
from dacc.errors import BadRequest, Conflict, NotFound
from tests.aggregation.helpers import (
    aggregate_cells,
    assert_cells_equal,
    database_url,
    expected_cells,
    insert_raw,
)

DAY = datetime(2024, 6, 3)


@pytest.fixture
def energy(make_definition):
    definition = make_definition("energy", group1_key="heating", group2_key="size", with_quartiles=True)
    rows = []
    for i, (heating, size) in enumerate([("gas", "s"), ("gas", "l"), ("oil", "s"), ("oil", "l")] * 3):
        rows.append(
            (
                Decimal(i * 3 - 7),
                DAY + timedelta(days=i % 2),
                "app",
                {"heating": heating},
                {"size": size},
                None,
            )
        )
    insert_raw("energy", rows)
    return definition


def test_wildcard_level_equals_a_group_by_with_the_groups_merged(app, energy):
    result = compute_wildcard_aggregate("energy", ["group2"])
    assert result.groups == ["group2"]
    # Per day: gas and oil, each over both sizes.
    assert result.per_start_date == {DAY: 2, DAY + timedelta(days=1): 2}
    assert result.count == 4
    assert_cells_equal(
        aggregate_cells("energy", {"group2": "size"}), expected_cells(energy, frozenset({"group2"}))
    )
    both = aggregate_cells("energy", {"group1": "heating", "group2": "size"})
    assert both == {}


def test_recomputing_replaces_the_earlier_rows(app, energy):
    compute_wildcard_aggregate("energy", ["group1", "group2"])
    insert_raw("energy", [(Decimal("100"), DAY, "app", {"heating": "gas"}, {"size": "s"}, None)])
    again = compute_wildcard_aggregate("energy", ["group2", "group1"])
    assert again.count == 2
    cells = aggregate_cells("energy", {"group1": "heating", "group2": "size"})
    assert [c["count"] for _, c in sorted(cells.items())] == [7, 6]
    assert_cells_equal(cells, expected_cells(energy, frozenset({"group1", "group2"})))


def test_only_measures_ingested_in_the_window_count(app, energy):
    db.session.execute(
        sa.text("UPDATE raw_measure SET last_updated = :t WHERE value < 0"),
        {"t": datetime(2024, 1, 10, 23, 59, tzinfo=UTC)},
    )
    db.session.commit()
    negatives = db.session.execute(sa.text("SELECT count(*) FROM raw_measure WHERE value < 0")).scalar()
    old = compute_wildcard_aggregate(
        "energy", ["group1", "group2"], from_date=date(2024, 1, 10), to_date=date(2024, 1, 10)
    )
    assert old.count >= 1
    cells = aggregate_cells("energy", {"group1": "heating", "group2": "size"})
    assert sum(c["count"] for c in cells.values()) == negatives
    assert all(c["max"] < 0 for c in cells.values())
    none = compute_wildcard_aggregate("energy", ["group1"], to_date=date(2024, 1, 9))
    assert (none.count, none.per_start_date) == (0, {})


@pytest.mark.parametrize(
    "groups, message",
    [
        (["group4"], 'unknown group "group4"'),
        (["heating"], 'unknown group "heating"'),
        (["group3"], "energy has no group3"),
        (["group1", "group1"], "named twice"),
        ([], "non-empty list"),
    ],
)
def test_bad_groups_are_refused(app, energy, groups, message):
    with pytest.raises(BadRequest, match=message):
        compute_wildcard_aggregate("energy", groups)
    assert aggregate_cells("energy") == {}


def test_a_declared_level_is_left_to_compute_aggregation(app, make_definition):
    make_definition("m", wildcard_groups=[["group1"]])
    with pytest.raises(BadRequest, match="declared wildcard level"):
        compute_wildcard_aggregate("m", ["group1"])


def test_from_date_after_to_date_is_refused(app, energy):
    with pytest.raises(BadRequest, match="from-date"):
        compute_wildcard_aggregate("energy", ["group1"], from_date=date(2024, 2, 1), to_date=date(2024, 1, 1))


def test_unknown_measure_is_not_found(app):
    with pytest.raises(NotFound):
        compute_wildcard_aggregate("nope", ["group1"])


def test_ad_hoc_wildcard_rows_are_not_merged_into_by_compute_aggregation(app, energy):
    compute_wildcard_aggregate("energy", ["group2"])
    before = aggregate_cells("energy", {"group2": "size"})
    insert_raw("energy", [(Decimal("1"), DAY, "app", {"heating": "gas"}, {"size": "s"}, None)])
    compute_aggregation("energy", force=True)
    assert aggregate_cells("energy", {"group2": "size"}) == before


def _counts_by_cell(cells):
    return sorted((k[0], k[2], c["count"]) for k, c in cells.items())


def test_a_narrower_window_replaces_every_earlier_row_of_the_level(app, energy):
    compute_aggregation("energy", force=True)
    compute_wildcard_aggregate("energy", ["group1"])
    compute_wildcard_aggregate("energy", ["group2"])
    assert len(aggregate_cells("energy", {"group2": "size"})) == 4
    levels = ({}, {"group1": "heating"})
    others = [aggregate_cells("energy", level) for level in levels]
    db.session.execute(
        sa.text("UPDATE raw_measure SET last_updated = :t WHERE value < 0"),
        {"t": datetime(2024, 1, 10, 12, tzinfo=UTC)},
    )
    db.session.commit()
    result = compute_wildcard_aggregate(
        "energy", ["group2"], from_date=date(2024, 1, 10), to_date=date(2024, 1, 10)
    )
    # Only the three negative measures (-7 gas day 1, -4 gas day 2, -1 oil day 1) were
    # ingested that day: the (oil, day 2) cell of the first computation is gone, and
    # the others hold the window's measures only.
    assert result.per_start_date == {DAY: 2, DAY + timedelta(days=1): 1}
    cells = aggregate_cells("energy", {"group2": "size"})
    assert _counts_by_cell(cells) == [
        (DAY, '{"heating": "gas"}', 1),
        (DAY, '{"heating": "oil"}', 1),
        (DAY + timedelta(days=1), '{"heating": "gas"}', 1),
    ]
    assert sorted(c["sum"] for c in cells.values()) == [Decimal("-7"), Decimal("-4"), Decimal("-1")]
    assert [aggregate_cells("energy", level) for level in levels] == others


def test_a_run_holding_the_measure_makes_it_a_conflict_and_changes_nothing(app, energy):
    compute_wildcard_aggregate("energy", ["group2"])
    before = aggregate_cells("energy")
    holder = psycopg2.connect(database_url())
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(hashtextextended('dacc.aggregate:' || 'energy', 0))")
        with pytest.raises(Conflict, match="another run holds measure energy"):
            compute_wildcard_aggregate(
                "energy", ["group2"], from_date=date(2030, 1, 1), to_date=date(2030, 1, 1)
            )
    finally:
        holder.close()
    assert aggregate_cells("energy") == before


def test_a_level_stamped_by_a_purge_is_recomputed_only_when_loss_is_allowed(app, energy):
    compute_wildcard_aggregate("energy", ["group2"])
    db.session.execute(
        sa.text("UPDATE aggregate SET last_raw_measures_purged = now() WHERE start_date = :d"), {"d": DAY}
    )
    db.session.commit()
    before = aggregate_cells("energy")
    with pytest.raises(
        Conflict, match=r"2 wildcard aggregate\(s\) of energy \(group2\) hold raw measures that were purged"
    ):
        compute_wildcard_aggregate("energy", ["group2"])
    assert aggregate_cells("energy") == before
    assert compute_wildcard_aggregate("energy", ["group2"], allow_purged_loss=True).count == 4
    stamped = db.session.execute(
        sa.text("SELECT count(*) FROM aggregate WHERE last_raw_measures_purged IS NOT NULL")
    ).scalar()
    assert stamped == 0


def test_a_definition_changed_before_the_lock_is_planned_again(app, make_definition):
    """The run reads its definition before winning the lock: a newer version wins."""
    stale = make_definition("m")
    insert_raw("m", [(Decimal("2"), DAY, "app", {"g1": "a"}, None, None)])
    assert stale.wildcard_groups == []  # loaded now, kept by the session
    with db.engine.begin() as conn:  # another process changes the definition
        conn.execute(
            sa.text(
                "UPDATE measure_definition SET wildcard_groups = '[[\"group1\"]]',"
                " updated_at = now() WHERE name = 'm'"
            )
        )
    compute_aggregation(stale, force=True)
    starred = (
        db.session.execute(sa.text('SELECT count FROM aggregate WHERE group1 = \'{"g1": "*"}\''))
        .scalars()
        .all()
    )
    assert starred == [1]


def test_a_replanned_run_is_not_skipped_by_its_own_first_attempt(app, make_definition):
    """As test_a_definition_changed_before_the_lock_is_planned_again, with a backend
    slow to end, as on a loaded machine: any connection the run drops is held (SIGSTOP)
    until the run returned. The stale attempt must release the measure's lock itself
    (roll back), not leave it to a dropped connection's backend, or the retry finds the
    measure held and skips the run."""
    stale = make_definition("m")
    insert_raw("m", [(Decimal("2"), DAY, "app", {"g1": "a"}, None, None)])
    assert stale.wildcard_groups == []
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE measure_definition SET wildcard_groups = '[[\"group1\"]]',"
                " updated_at = now() WHERE name = 'm'"
            )
        )
    stopped = []

    def hold_backend(dbapi_connection, connection_record, exception):
        pid = dbapi_connection.info.backend_pid
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    sa.event.listen(db.engine, "invalidate", hold_backend)
    try:
        result = compute_aggregation(stale, force=True)
    finally:
        sa.event.remove(db.engine, "invalidate", hold_backend)
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
    assert result.skipped is None
    starred = db.session.execute(sa.text('SELECT count FROM aggregate WHERE group1 = \'{"g1": "*"}\''))
    assert starred.scalars().all() == [1]
