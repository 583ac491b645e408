"""rejected_message: MQTT messages that ingestion set aside

Revision ID: 0005_rejected_message
Revises: 0002
Create Date: 2026-12-01 22:55:00

`flask ingest mqtt` writes a row per message that is not JSON, has the wrong shape or
holds an invalid measure, in the transaction of the batch that held it, before the
message is acknowledged to the broker.
"""

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = "0005_rejected_message"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "rejected_message",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("org", sa.String(length=100), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("payload_size", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejected_message")),
    )
    op.create_index("ix_rejected_message_received_at", "rejected_message", ["received_at"])
    op.create_index("ix_rejected_message_topic_received_at", "rejected_message", ["topic", "received_at"])


def downgrade():
    op.drop_index("ix_rejected_message_topic_received_at", table_name="rejected_message")
    op.drop_index("ix_rejected_message_received_at", table_name="rejected_message")
    op.drop_table("rejected_message")
