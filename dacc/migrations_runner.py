"""Schema upgrades run by the app itself (embedded database, tests)."""

import logging

import sqlalchemy as sa
from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import current_app

from dacc.db import db

log = logging.getLogger(__name__)

MIGRATION_LOCK = 7_420_001
"""Advisory lock key: several processes starting at once migrate one at a time."""


def upgrade_to_head() -> bool:
    """Upgrade the database to the newest migration; True when something ran."""
    migrate_ext = current_app.extensions["migrate"]
    alembic_config = migrate_ext.migrate.get_config(migrate_ext.directory)
    head = ScriptDirectory.from_config(alembic_config).get_current_head()
    with db.engine.connect() as conn:
        if MigrationContext.configure(conn).get_current_revision() == head:
            return False
    with db.engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
        try:
            log.info("migrating the database to %s", head)
            command.upgrade(alembic_config, "head")
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
    return True
