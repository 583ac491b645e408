"""Schema upgrades run by the app itself (embedded database, tests)."""

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
    """Upgrade the database to the newest migration; True when something ran."""
    alembic_config = _alembic_config()
    head = schema_head()
    with db.engine.connect() as conn:
        if MigrationContext.configure(conn).get_current_revision() == head:
            return False
    # Autocommit, and polling instead of waiting in pg_advisory_lock: a process waiting
    # inside a statement holds a snapshot, which a CREATE INDEX CONCURRENTLY run by the
    # migrating process would wait for (both stuck until statement_timeout).
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        while not conn.execute(
            sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK}
        ).scalar():
            time.sleep(0.2)
        try:
            log.info("migrating the database to %s", head)
            command.upgrade(alembic_config, "head")
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
    return True
