"""raw measures: an index on each row's cell key hash, for per-cell quartiles

Revision ID: 0006_quartile_cell_index
Revises: 0008_operations
Create Date: 2026-12-01 23:00:00

A run that adds rows to existing quartile cells recomputes each touched cell's
quartiles from all of the cell's raw rows. ix_raw_measure_name_start_date narrows that
to the cell's period only (every group's rows of the day); this index narrows it to the
cell itself: (measure_name, hash of created_by and the groups, start_date).
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0006_quartile_cell_index"
down_revision = "0008_operations"
branch_labels = None
depends_on = None

# A frozen copy of dacc.models.measures.CELL_KEY_HASH at this revision (without a table
# prefix); tests/aggregation/test_quartiles.py checks that the aggregation's statement
# still uses this index.
CELL_KEY_HASH = (
    "(((hashtextextended(created_by::text, 0::bigint)"
    " # COALESCE(jsonb_hash_extended(group1, 1::bigint), 1::bigint))"
    " # COALESCE(jsonb_hash_extended(group2, 2::bigint), 2::bigint))"
    " # COALESCE(jsonb_hash_extended(group3, 3::bigint), 3::bigint))"
)


def upgrade():
    # CONCURRENTLY (outside the migration's transaction): ingestion keeps writing while
    # the index is built over a large raw_measure.
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_raw_measure_cell"
            f" ON raw_measure (measure_name, {CELL_KEY_HASH}, start_date)"
        )


def downgrade():
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_raw_measure_cell")
