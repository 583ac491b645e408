"""aggregate: each plain quartile cell keeps its sorted values (quartile_values)

Revision ID: 0012_quartile_state
Revises: 0011_publication_fillfactor
Create Date: 2026-12-02 05:00:00

- quartile_values float8[]: a merge into a quartile cell sorts the stored values with
  the new ones and takes median and quartiles from them, instead of re-reading every
  raw row of the cell. Not filled here: a cell without state is read from its raw
  rows on its next merge, which stores it (dacc.aggregation.sql). Storage EXTERNAL:
  an array too large for the row goes out of line uncompressed (float8 values hardly
  compress, and pglz would cost each merge the attempt).
- ix_aggregate_quartile_state (measure_name, start_date) WHERE it is set: the purge
  drops the state of cells past maxDaysToUpdateQuartile by reading only those.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = "0012_quartile_state"
down_revision = "0011_publication_fillfactor"
branch_labels = None
depends_on = None


def upgrade():
    # A column without default: no table rewrite.
    op.add_column("aggregate", sa.Column("quartile_values", postgresql.ARRAY(sa.Float()), nullable=True))
    op.execute("ALTER TABLE aggregate ALTER COLUMN quartile_values SET STORAGE EXTERNAL")
    with op.get_context().autocommit_block():
        op.execute(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_aggregate_quartile_state"
            " ON aggregate (measure_name, start_date)"
            " WHERE quartile_values IS NOT NULL"
        )


def downgrade():
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_aggregate_quartile_state")
    op.drop_column("aggregate", "quartile_values")
