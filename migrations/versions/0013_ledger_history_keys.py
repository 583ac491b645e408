"""ledger history: versions and pieces name their measure without a foreign key

Revision ID: 0013_ledger_history_keys
Revises: 0012_quartile_state
Create Date: 2026-12-02 05:25:00

A publication appends one row to published_version per served version and one to
publication_piece per plain cell that gained contributions; the foreign key to
measure_definition checked each appended row (a key lookup and a row lock per row:
35 ms of a 3-day publication's ~270 ms of database time, EXPLAIN ANALYZE on the
benchmark's 1,000,000 cells). Both tables are append-only history: their rows are
deleted with their definition by `remove_definition`, after the definition row, so
that a publication committing meanwhile (it holds publication_state, which the
definition's delete cascades to) leaves nothing behind. The one-row-per-cell tables
(published_cell, publication_leaf, publication_state) keep their foreign key.

The downgrade deletes history rows whose definition is gone, then restores the keys.
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0013_ledger_history_keys"
down_revision = "0012_quartile_state"
branch_labels = None
depends_on = None

TABLES = ("published_version", "publication_piece")
"""Fixed identifiers: no input reaches these statements."""


def upgrade():
    for table in TABLES:
        op.drop_constraint(f"fk_{table}_measure_name_measure_definition", table, type_="foreignkey")


def downgrade():
    for table in TABLES:
        op.execute(
            f"DELETE FROM {table} t WHERE NOT EXISTS"
            " (SELECT 1 FROM measure_definition d WHERE d.name = t.measure_name)"
        )
        op.create_foreign_key(
            f"fk_{table}_measure_name_measure_definition",
            table,
            "measure_definition",
            ["measure_name"],
            ["name"],
            ondelete="CASCADE",
            onupdate="CASCADE",
        )
