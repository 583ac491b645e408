"""The migrations and the models describe the same schema; upgrades run one at a time."""

import os
import subprocess
import sys
import time

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from dacc.db import db
from dacc.migrations_runner import MIGRATION_LOCK, schema_head


def test_models_and_migrations_agree(app):
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), db.metadata)
    assert diff == []


def test_filtered_view_is_the_ledger_view_of_the_code(app):
    """Migration 0003 embeds a copy of the view's text: it must match the code's."""
    from dacc.publication.sql import FILTERED_AGGREGATION_VIEW

    with db.engine.begin() as conn:
        conn.execute(sa.text("CREATE TEMP VIEW code_view AS " + FILTERED_AGGREGATION_VIEW))
        live, code = conn.execute(
            sa.text(
                "SELECT pg_get_viewdef('filtered_aggregation'::regclass), pg_get_viewdef('code_view'::regclass)"
            )
        ).one()
        kind = conn.execute(
            sa.text("SELECT relkind FROM pg_class WHERE relname = 'filtered_aggregation'")
        ).scalar()
    assert (kind, live) == ("v", code)


def test_downgrade_to_base_then_upgrade_again(unmigrated_app):
    """On a database of its own, so the shared test database stays intact."""
    from flask_migrate import downgrade, upgrade

    upgrade()
    assert "raw_measure" in sa.inspect(db.engine).get_table_names()
    downgrade(revision="base")
    assert sa.inspect(db.engine).get_table_names() == ["alembic_version"]
    upgrade()
    names = set(sa.inspect(db.engine).get_table_names())
    assert {"aggregate", "api_token", "measure_definition", "raw_measure"} <= names


def test_the_ledger_tables_keep_room_for_in_place_updates(app):
    """Migration 0011: each publication rewrites these rows; half-free pages let
    PostgreSQL update them in place."""
    with db.engine.connect() as conn:
        options = dict(
            conn.execute(
                sa.text(
                    "SELECT relname, reloptions FROM pg_class"
                    " WHERE relname IN ('published_cell', 'publication_leaf', 'published_version')"
                )
            ).all()
        )
    assert options == {
        "published_cell": ["fillfactor=50"],
        "publication_leaf": ["fillfactor=50"],
        "published_version": None,
    }


def _db_upgrade(app, folder, name):
    """`flask db upgrade` on the app's database, in a process of its own; (process, log)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DACC_") and k != "DATABASE_URL"}
    env.update(DATABASE_URL=app.config["DACC"].database_url, FLASK_APP="dacc")
    log = folder / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "flask", "db", "upgrade"], env=env, cwd=folder, stdout=out, stderr=out
        )
    return process, log


def _revision():
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_db_upgrade_waits_for_the_migration_lock(unmigrated_app, tmp_path):
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
        process, log = _db_upgrade(unmigrated_app, tmp_path, "upgrade")
        try:
            deadline = time.monotonic() + 60
            while "waiting for another process's migration" not in log.read_text():
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            time.sleep(0.5)
            assert process.poll() is None
            assert _revision() is None  # nothing ran while the lock was held
        finally:
            holder.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
        assert process.wait(60) == 0, log.read_text()
    assert _revision() == schema_head()


def test_two_concurrent_db_upgrades_migrate_once(unmigrated_app, tmp_path):
    runs = [_db_upgrade(unmigrated_app, tmp_path, f"upgrade-{i}") for i in range(2)]
    for process, log in runs:
        assert process.wait(120) == 0, log.read_text()
    assert _revision() == schema_head()
    # The second to take the lock read the revision after the first's commit: it ran
    # no migration of its own.
    first_steps = [log.read_text().count("Running upgrade  -> 0001") for _, log in runs]
    assert sorted(first_steps) == [0, 1]


def _quartile_state_schema():
    with db.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT a.attstorage, format_type(a.atttypid, a.atttypmod),"
                "       (SELECT pg_get_expr(i.indpred, i.indrelid) FROM pg_index i"
                "        WHERE i.indexrelid = to_regclass('ix_aggregate_quartile_state'))"
                " FROM pg_attribute a"
                " WHERE a.attrelid = 'aggregate'::regclass AND a.attname = 'quartile_values'"
                "   AND NOT a.attisdropped"
            )
        ).first()


def test_quartile_state_migration_adds_and_removes_the_column_and_its_index(unmigrated_app):
    """Migration 0012: float8[] stored out of line uncompressed, a partial index of the
    cells that have it; its downgrade leaves the aggregates as they were."""
    from flask_migrate import downgrade, upgrade

    upgrade(revision="0012_quartile_state")
    assert tuple(_quartile_state_schema()) == ("e", "double precision[]", "(quartile_values IS NOT NULL)")
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO measure_definition (name, org, aggregation_period, execution_frequency)"
                " VALUES ('m', 'org', 'day', 'day')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO aggregate (measure_name, start_date, created_by, count, count_not_zero, sum,"
                " sum_squares, min, max, avg, std, contributors, largest_value, median, quartile_values)"
                " VALUES ('m', '2024-01-01', 'app', 2, 2, 3, 5, 1, 2, 1.5, 0.7, 2, 2, 1.5, ARRAY[1.0, 2.0])"
            )
        )
    downgrade(revision="0011_publication_fillfactor")
    assert _quartile_state_schema() is None
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count, median FROM aggregate")).one() == (2, 1.5)
    upgrade()
    assert _quartile_state_schema() is not None


def _index_exists(name: str) -> bool:
    with db.engine.connect() as conn:
        return conn.execute(sa.text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name}).scalar()


def test_cell_index_migration_fills_the_state_in_reach_then_drops_the_index(unmigrated_app):
    """Migration 0014: the plain cells of quartile definitions within
    maxDaysToUpdateQuartile, unstamped, whose raw rows are exactly their count, get
    their sorted values; no other cell does. Its downgrade builds the index again."""
    from flask_migrate import downgrade, upgrade

    upgrade(revision="0012_quartile_state")
    assert _index_exists("ix_raw_measure_cell")
    cells = {  # group1 value: (days ago, raw values, stored count, stamped)
        "filled": (3, [5, 1.5, 3], 3, False),
        "unaggregated": (3, [1, 2, 3], 2, False),
        "stamped": (3, [1, 2], 2, True),
        "old": (200, [1, 2], 2, False),
    }
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO measure_definition (name, org, aggregation_period, execution_frequency,"
                " group1_key, with_quartiles, max_days_to_update_quartile)"
                " VALUES ('q', 'org', 'day', 'day', 'g1', true, 100), ('plain', 'org', 'day', 'day', 'g1', false, 100)"
            )
        )
        for name, group, (days, values, count, stamped) in [
            *(("q", g, c) for g, c in cells.items()),
            ("plain", "filled", cells["filled"]),
        ]:
            params = {"name": name, "group1": f'{{"g1": "{group}"}}', "days": days, "count": count}
            day = "date_trunc('day', CAST(now() AS timestamp)) - make_interval(days => :days)"
            for value in values:
                conn.execute(
                    sa.text(
                        "INSERT INTO raw_measure (measure_name, value, start_date, created_by, group1)"
                        f" VALUES (:name, :value, {day} + interval '1 hour', 'app', CAST(:group1 AS jsonb))"
                    ),
                    {**params, "value": value},
                )
            conn.execute(
                sa.text(
                    "INSERT INTO aggregate (measure_name, start_date, created_by, group1, count, count_not_zero,"
                    " sum, sum_squares, min, max, avg, std, contributors, largest_value, last_raw_measures_purged)"
                    f" VALUES (:name, {day}, 'app', CAST(:group1 AS jsonb), :count, :count, 1, 1, 1, 1, 1, 0,"
                    " :count, 1, CASE WHEN :stamped THEN now() END)"
                ),
                {**params, "stamped": stamped},
            )

    upgrade(revision="0014_drop_cell_index")

    with db.engine.connect() as conn:
        states = dict(
            conn.execute(
                sa.text("SELECT measure_name || ' ' || (group1 ->> 'g1'), quartile_values FROM aggregate")
            ).all()
        )
    assert states == {
        "q filled": [1.5, 3.0, 5.0],
        "q unaggregated": None,
        "q stamped": None,
        "q old": None,
        "plain filled": None,
    }
    assert not _index_exists("ix_raw_measure_cell")
    downgrade(revision="0013_ledger_history_keys")
    assert _index_exists("ix_raw_measure_cell")
    upgrade()
