"""API tokens: only a hash of the secret is stored."""

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from dacc.db import db
from dacc.models.definitions import KEY_LENGTH


class ApiToken(db.Model):
    __tablename__ = "api_token"
    __table_args__ = (sa.Index("ix_api_token_org", "org"),)

    id: Mapped[int] = mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    org: Mapped[str] = mapped_column(sa.String(KEY_LENGTH))
    label: Mapped[str | None] = mapped_column(sa.String(200))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(sa.String(32)))
    secret_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    """SHA-256 of the secret, hex. The secret has 256 random bits: no slow KDF needed."""
    prefix: Mapped[str] = mapped_column(sa.String(16))
    """First characters of the secret, to recognise it in listings."""
    app: Mapped[str | None] = mapped_column(sa.String(KEY_LENGTH))
    """When set, the token may only send measures whose createdBy is this app."""
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
