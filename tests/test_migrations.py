"""The migrations and the models describe the same schema."""

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from dacc.db import db


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
