"""contributor_quota keyed by a hash of the cell, not its jsonb groups

Revision ID: 0010_quota_cell_key
Revises: 0009_purged_cells
Create Date: 2026-12-02 02:20:00

The cap's upsert compared three jsonb groups and the app at each step of its unique
index; it now compares (measure_name, start_date, cell_key, contributor), cell_key
being the cell's 64-bit key hash (the one ix_raw_measure_cell indexes), in half-full
pages (fillfactor 50) so that a count's update is a HOT update. Existing rows
are carried over, summed per new key. The table is rebuilt under an exclusive lock
(ingestion of capped measures waits for it; the table holds one row per cell and
contributor).

Downgrade: the groups cannot be read back from the hash; the old table comes back
empty (quotas count from then on).
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = "0010_quota_cell_key"
down_revision = "0009_purged_cells"
branch_labels = None
depends_on = None

# A frozen copy of dacc.models.measures.CELL_KEY_HASH at this revision, on table `q`.
CELL_KEY_HASH = (
    "(((hashtextextended(q.created_by::text, 0::bigint)"
    " # COALESCE(jsonb_hash_extended(q.group1, 1::bigint), 1::bigint))"
    " # COALESCE(jsonb_hash_extended(q.group2, 2::bigint), 2::bigint))"
    " # COALESCE(jsonb_hash_extended(q.group3, 3::bigint), 3::bigint))"
)


def upgrade():
    op.create_table(
        "contributor_quota_next",
        sa.Column("measure_name", sa.String(length=200), nullable=False),
        sa.Column("start_date", sa.DateTime(), nullable=False),
        sa.Column("cell_key", sa.BigInteger(), nullable=False),
        sa.Column("contributor", sa.LargeBinary(length=32), nullable=False),
        sa.Column("contributions", sa.Integer(), nullable=False),
    )
    # Half-full pages: a count's update fits on its row's page (a HOT update).
    op.execute("ALTER TABLE contributor_quota_next SET (fillfactor = 50)")
    op.execute("LOCK TABLE contributor_quota IN EXCLUSIVE MODE")
    op.execute(
        "INSERT INTO contributor_quota_next"
        f" SELECT q.measure_name, q.start_date, {CELL_KEY_HASH}, q.contributor, sum(q.contributions)"
        " FROM contributor_quota q GROUP BY 1, 2, 3, 4"
    )
    op.drop_table("contributor_quota")
    op.rename_table("contributor_quota_next", "contributor_quota")
    op.create_index(
        "uq_contributor_quota",
        "contributor_quota",
        ["measure_name", "start_date", "cell_key", "contributor"],
        unique=True,
    )


def downgrade():
    op.drop_table("contributor_quota")
    op.create_table(
        "contributor_quota",
        sa.Column("measure_name", sa.String(length=200), nullable=False),
        sa.Column("start_date", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("group1", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("group2", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("group3", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("contributor", sa.LargeBinary(length=32), nullable=False),
        sa.Column("contributions", sa.Integer(), nullable=False),
    )
    op.create_index(
        "uq_contributor_quota",
        "contributor_quota",
        ["measure_name", "start_date", "created_by", "group1", "group2", "group3", "contributor"],
        unique=True,
        postgresql_nulls_not_distinct=True,
    )
