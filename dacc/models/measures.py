"""Raw measures as ingested, the ones refused by aggregation, and idempotency keys."""

from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from dacc.db import db
from dacc.models.definitions import KEY_LENGTH, NAME_LENGTH

VALUE_TYPE = sa.Numeric(16, 2)
"""Values keep 2 decimals; |value| < 10**14."""

CURRENT_XID_SQL = "(pg_current_xact_id()::text::bigint)"
CURRENT_XID = sa.text(CURRENT_XID_SQL)
"""The inserting transaction's 64-bit id. Aggregation selects new rows by comparing it
with the snapshot of its previous run, which (unlike a now() watermark) stays exact when
transactions commit out of order."""

CELL_KEY_HASH = (
    "(((hashtextextended({t}created_by::text, 0::bigint)"
    " # COALESCE(jsonb_hash_extended({t}group1, 1::bigint), 1::bigint))"
    " # COALESCE(jsonb_hash_extended({t}group2, 2::bigint), 2::bigint))"
    " # COALESCE(jsonb_hash_extended({t}group3, 3::bigint), 3::bigint))"
)
"""A 64-bit hash of a raw row's cell key within its measure and period (created_by and
the three groups; `{t}` is the table prefix, e.g. "r."): contributor_quota's cell key
(dacc.ingestion). Never trusted alone to tell cells apart where exactness matters."""


class RawMeasure(db.Model):
    __tablename__ = "raw_measure"
    __table_args__ = (
        sa.Index("ix_raw_measure_name_txid", "measure_name", "txid"),
        sa.Index("ix_raw_measure_name_start_date", "measure_name", "start_date"),
        sa.Index("ix_raw_measure_name_last_updated", "measure_name", "last_updated"),
    )

    # No foreign key to the definition: a per-row check would slow COPY, and ingestion
    # already validates the name against the definitions.
    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    measure_name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH))
    value: Mapped[Decimal] = mapped_column(VALUE_TYPE)
    start_date: Mapped[datetime] = mapped_column(sa.DateTime)
    created_by: Mapped[str] = mapped_column(sa.String(KEY_LENGTH))
    group1: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))
    group2: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))
    group3: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))
    last_updated: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    txid: Mapped[int] = mapped_column(sa.BigInteger, server_default=CURRENT_XID)
    contributor: Mapped[bytes | None] = mapped_column(sa.LargeBinary(32))
    """HMAC-SHA256 of the writer's org and the client's pseudonym (dacc.contributors);
    None: the measure is its own contributor."""


class RefusedRawMeasure(db.Model):
    """Raw measures that aggregation could not merge exactly (quartiles after purge)."""

    __tablename__ = "refused_raw_measure"
    __table_args__ = (sa.Index("ix_refused_raw_measure_name", "measure_name", "start_date"),)

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    measure_name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH))
    value: Mapped[Decimal] = mapped_column(VALUE_TYPE)
    start_date: Mapped[datetime] = mapped_column(sa.DateTime)
    created_by: Mapped[str] = mapped_column(sa.String(KEY_LENGTH))
    group1: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))
    group2: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))
    group3: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))
    last_updated: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    contributor: Mapped[bytes | None] = mapped_column(sa.LargeBinary(32))
    refused_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    reason: Mapped[str] = mapped_column(sa.Text)


class MeasureKey(db.Model):
    """Client-chosen `measureId` of a stored measure: the idempotency tombstone.

    Kept apart from raw_measure so that it survives the purge of the raw row at a
    fraction of its size; the primary key makes concurrent duplicates impossible. Scoped
    to the writer's org: another org can neither learn that an id exists nor take it.
    """

    __tablename__ = "measure_key"

    measure_name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH), primary_key=True)
    org: Mapped[str] = mapped_column(sa.String(KEY_LENGTH), primary_key=True, server_default="")
    """The writer's org ("" for a caller without one, e.g. an admin import)."""
    measure_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
