"""job_run_stat: run counters of the jobs, for /metrics

Revision ID: 0008_operations
Revises: 0003
Create Date: 2026-12-01 23:00:00

Aggregation, publication and purge run in CLI processes; each run adds to its row
here (one per job and measure) so that any web process can serve the job metrics.
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0008_operations"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "job_run_stat",
        sa.Column("job", sa.String(length=20), nullable=False),
        sa.Column("measure_name", sa.String(length=200), nullable=False),
        sa.Column("runs_ok", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("runs_failed", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("seconds_total", sa.Float(), server_default="0", nullable=False),
        sa.Column("last_seconds", sa.Float(), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("job", "measure_name", name=op.f("pk_job_run_stat")),
    )


def downgrade():
    op.drop_table("job_run_stat")
