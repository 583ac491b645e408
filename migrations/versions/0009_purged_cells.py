"""aggregate: an index of the cells stamped by a purge; forget closed cells' contributors

Revision ID: 0009_purged_cells
Revises: 0007_writers_contributors
Create Date: 2026-12-02 02:00:00

- ix_aggregate_purged (measure_name) WHERE stamped: each
  run of a quartile measure asks whether any of its cells is stamped (to refuse late
  measures); without the index that reads every cell of the measure, with it none
  unless one is.
- The purge now deletes the contributor state of a quartile measure's cells as it
  stamps them (no later measure can be merged into them); this deletes what earlier
  purges left: the cell_contributor and contributor_quota rows of stamped cells of
  quartile definitions, and the contributor_quota rows of definitions without a cap.
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0009_purged_cells"
down_revision = "0007_writers_contributors"
branch_labels = None
depends_on = None

# Frozen copies of this revision's rules (dacc/purge.py may change later).
_STAMPED_QUARTILE_CELL = """
    FROM aggregate a
    JOIN measure_definition d ON d.name = a.measure_name AND d.with_quartiles
    WHERE a.last_raw_measures_purged IS NOT NULL
      AND k.measure_name = a.measure_name
      AND k.start_date = a.start_date
      AND k.created_by = a.created_by
      AND k.group1 IS NOT DISTINCT FROM a.group1
      AND k.group2 IS NOT DISTINCT FROM a.group2
      AND k.group3 IS NOT DISTINCT FROM a.group3
"""


def upgrade():
    op.execute(f"DELETE FROM cell_contributor k WHERE EXISTS (SELECT 1 {_STAMPED_QUARTILE_CELL})")
    op.execute(f"DELETE FROM contributor_quota k WHERE EXISTS (SELECT 1 {_STAMPED_QUARTILE_CELL})")
    op.execute(
        "DELETE FROM contributor_quota k WHERE NOT EXISTS (SELECT 1 FROM measure_definition d"
        " WHERE d.name = k.measure_name AND d.max_contributions_per_cell IS NOT NULL)"
    )
    # CONCURRENTLY (outside the migration's transaction): runs and purges go on while
    # the index is built over a large aggregate table.
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_aggregate_purged"
            " ON aggregate (measure_name)"
            " WHERE last_raw_measures_purged IS NOT NULL"
        )


def downgrade():
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_aggregate_purged")
