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
