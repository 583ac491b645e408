"""MQTT messages that ingestion set aside: not JSON, wrong shape, or an invalid measure."""

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from dacc.db import db
from dacc.models.definitions import KEY_LENGTH

PAYLOAD_LIMIT = 4096
"""Bytes of a rejected payload that are kept: enough to see what is wrong."""


class RejectedMessage(db.Model):
    __tablename__ = "rejected_message"
    __table_args__ = (
        sa.Index("ix_rejected_message_received_at", "received_at"),
        sa.Index("ix_rejected_message_topic_received_at", "topic", "received_at"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    topic: Mapped[str] = mapped_column(sa.Text)
    org: Mapped[str] = mapped_column(sa.String(KEY_LENGTH))
    """The org of the subscription the message came through."""
    received_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    error: Mapped[str] = mapped_column(sa.Text)
    payload: Mapped[bytes] = mapped_column(sa.LargeBinary)
    """The first PAYLOAD_LIMIT bytes, as received (it may not be text)."""
    payload_size: Mapped[int] = mapped_column(sa.Integer)
    """The size of the whole payload, in bytes."""
