"""quartile state for the cells in reach; raw measures: ix_raw_measure_cell dropped

Revision ID: 0014_drop_cell_index
Revises: 0013_ledger_history_keys
Create Date: 2026-12-02 05:30:00

Since 0012 a quartile cell merges into its stored sorted values; the per-cell index
of raw measures served only cells without state. This fills the state of every plain
cell of a quartile definition that starts within maxDaysToUpdateQuartile days and was
never stamped by a purge, when its raw rows are exactly its count (a cell with raw
measures not aggregated yet is left to the merge, which reads its rows), then drops
the index: each raw row no longer pays its entry (COPY of 10,000 rows: 134 against 194
ms of backend CPU). A cell left without state is read through
ix_raw_measure_name_start_date on its next merge. The downgrade builds the index again
and leaves the state (0012's downgrade drops it).
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0014_drop_cell_index"
down_revision = "0013_ledger_history_keys"
branch_labels = None
depends_on = None

# Frozen copies of this revision's rules: the state is the cell's values as
# percentile_cont sees them, sorted (dacc/aggregation/sql.py); it is kept from the
# start of the cell's period maxDaysToUpdateQuartile days ago (dacc/purge.py).
_FILL_STATE = """
UPDATE aggregate a
SET quartile_values = c.vals
FROM (
    SELECT r.measure_name, date_trunc(d.aggregation_period, r.start_date) AS start_date,
           r.created_by, r.group1, r.group2, r.group3,
           array_agg(CAST(r.value AS float8) ORDER BY CAST(r.value AS float8)) AS vals
    FROM raw_measure r
    JOIN measure_definition d ON d.name = r.measure_name AND d.with_quartiles
    WHERE r.start_date >= date_trunc(d.aggregation_period,
                                     CAST(now() AS timestamp) - make_interval(days => d.max_days_to_update_quartile))
    GROUP BY 1, 2, 3, 4, 5, 6
) c
JOIN measure_definition d ON d.name = c.measure_name
WHERE a.measure_name = c.measure_name
  AND a.start_date = c.start_date
  AND a.created_by = c.created_by
  AND a.group1 IS NOT DISTINCT FROM c.group1
  AND a.group2 IS NOT DISTINCT FROM c.group2
  AND a.group3 IS NOT DISTINCT FROM c.group3
  AND a.start_date >= CAST(now() AS timestamp) - make_interval(days => d.max_days_to_update_quartile)
  AND a.last_raw_measures_purged IS NULL
  AND a.quartile_values IS NULL
  AND a.count = cardinality(c.vals)
"""
# A frozen copy of 0006's index expression.
CELL_KEY_HASH = (
    "(((hashtextextended(created_by::text, 0::bigint)"
    " # COALESCE(jsonb_hash_extended(group1, 1::bigint), 1::bigint))"
    " # COALESCE(jsonb_hash_extended(group2, 2::bigint), 2::bigint))"
    " # COALESCE(jsonb_hash_extended(group3, 3::bigint), 3::bigint))"
)


def upgrade():
    op.execute(_FILL_STATE)
    # CONCURRENTLY (outside the migration's transaction): ingestion goes on meanwhile.
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_raw_measure_cell")


def downgrade():
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_raw_measure_cell"
            f" ON raw_measure (measure_name, {CELL_KEY_HASH}, start_date)"
        )
