"""Keyed contributor hashes per cell: what makes k count people, not measures."""

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from dacc.db import db
from dacc.models.definitions import KEY_LENGTH, NAME_LENGTH

CELL_KEY = ("measure_name", "start_date", "created_by", "group1", "group2", "group3", "contributor")


class CellContributor(db.Model):
    """One contributor already counted in one aggregate cell (plain or declared wildcard).

    Written by the merge under the measure's lock, in the statement that raises the
    cell's `contributors`; kept when raw measures are purged, so that counts stay exact.
    Deleted with the cells it describes. No primary key: its unique index (NULLS NOT
    DISTINCT, like the aggregate's) is the key.
    """

    __tablename__ = "cell_contributor"
    __table_args__ = (
        sa.Index("uq_cell_contributor", *CELL_KEY, unique=True, postgresql_nulls_not_distinct=True),
    )
    __mapper_args__ = {"primary_key": CELL_KEY}

    measure_name: Mapped[str] = mapped_column(
        sa.String(NAME_LENGTH),
        sa.ForeignKey("measure_definition.name", ondelete="CASCADE", onupdate="CASCADE"),
    )
    start_date: Mapped[datetime] = mapped_column(sa.DateTime)
    created_by: Mapped[str] = mapped_column(sa.String(KEY_LENGTH))
    group1: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))
    group2: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))
    group3: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))
    contributor: Mapped[bytes] = mapped_column(sa.LargeBinary(32))


QUOTA_KEY = ("measure_name", "start_date", "cell_key", "contributor")


class ContributorQuota(db.Model):
    """Measures accepted from one contributor into one plain cell, kept only for
    definitions with max_contributions_per_cell: counted at ingestion, in the measure's
    own statement, by an upsert whose row lock makes the cap race-free.

    The cell is its period and `cell_key`, the 64-bit CELL_KEY_HASH of its app and
    groups: the unique index compares two integers and a digest instead of three jsonb
    groups (the upsert is most of a capped bulk body's cost). Two cells of a measure and
    period whose keys hash alike (about 1 in 2^64 per pair) share their quotas: the cap
    can only get stricter, never looser. No foreign key (it is written on the ingestion
    path, like raw_measure); removing a definition deletes its rows, and so does a purge
    of what no later measure can use (dacc.purge).
    """

    __tablename__ = "contributor_quota"
    # Migration 0010 gives the table half-full pages (fillfactor 50): room on each page
    # for a row's next version, so that a count's update is a HOT update, with no new
    # entry in the unique index (10,000 quota updates: 64 against 86 ms).
    __table_args__ = (sa.Index("uq_contributor_quota", *QUOTA_KEY, unique=True),)
    __mapper_args__ = {"primary_key": QUOTA_KEY}

    measure_name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH))
    start_date: Mapped[datetime] = mapped_column(sa.DateTime)
    cell_key: Mapped[int] = mapped_column(sa.BigInteger)
    contributor: Mapped[bytes] = mapped_column(sa.LargeBinary(32))
    contributions: Mapped[int] = mapped_column(sa.Integer)
