"""Schema upgrades run by the app itself (embedded database, tests)."""

import contextlib
import logging
import time

import sqlalchemy as sa
from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import current_app

from dacc.db import db

log = logging.getLogger(__name__)

MIGRATION_LOCK = 7_420_001
"""Advisory lock key: several processes starting at once migrate one at a time."""


HEAD_KEY = "dacc_schema_head"


def schema_head() -> str:
    """The newest migration this code ships (read once per process)."""
    head = current_app.extensions.get(HEAD_KEY)
    if head is None:
        head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
        current_app.extensions[HEAD_KEY] = head
    return head


def schema_is_behind(revision: str | None) -> bool:
    """True when the database at `revision` lacks migrations this code ships.

    A revision this code does not know is newer (a later release migrated it during a
    rolling upgrade): not behind, since migrations keep the previous release working.
    """
    if revision == schema_head():
        return False
    if revision is None:
        return True
    script = ScriptDirectory.from_config(_alembic_config())
    try:
        return script.get_revision(revision) is not None
    except Exception:  # alembic raises its own errors for an unknown revision
        return False


def _alembic_config():
    migrate_ext = current_app.extensions["migrate"]
    return migrate_ext.migrate.get_config(migrate_ext.directory)


def upgrade_to_head() -> bool:
    """Upgrade the database to the newest migration; True when something ran (or
    waited for another process's run: see `migration_lock`)."""
    head = schema_head()
    with db.engine.connect() as conn:
        if MigrationContext.configure(conn).get_current_revision() == head:
            return False
    log.info("migrating the database to %s", head)
    command.upgrade(_alembic_config(), "head")
    return True


@contextlib.contextmanager
def migration_lock(engine: sa.engine.Engine):
    """Hold the migrations' advisory lock: every online Alembic run (migrations/env.py:
    `flask db upgrade`, the embedded start, the tests) runs alone, and reads the
    revision only once it holds the lock, so that a second run finds the first's work
    done instead of repeating it.

    On a connection of its own, in autocommit, polling instead of waiting in
    pg_advisory_lock: a process waiting inside a statement holds a snapshot, which a
    CREATE INDEX CONCURRENTLY run by the migrating process would wait for (both stuck
    until statement_timeout).
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        said = False
        while not conn.execute(_TRY_LOCK, {"key": MIGRATION_LOCK}).scalar():
            if not said:
                log.info("waiting for another process's migration (advisory lock %s)", MIGRATION_LOCK)
                said = True
            time.sleep(0.2)
        try:
            yield
        finally:
            conn.execute(_UNLOCK, {"key": MIGRATION_LOCK})


_TRY_LOCK = sa.text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK = sa.text("SELECT pg_advisory_unlock(:key)")
