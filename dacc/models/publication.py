"""The publication ledger: what /aggregate serves, every version ever served, and the
pieces (contributions per cell and publication epoch) the audit reasons about."""

from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from dacc.db import db
from dacc.models.definitions import KEY_LENGTH, NAME_LENGTH

CELL_KEY = ("measure_name", "start_date", "created_by", "group1", "group2", "group3")
"""measure_name leads every ledger key: the tables can be distributed by measure."""


class HistoryCellKey:
    """The key of a cell, shared by the ledger tables (a mixin: each table gets its own
    columns). The append-only history tables (versions, pieces) name their measure
    without a foreign key: a publication appends a row per served version and per
    piece, and a key check per row cost a tenth of its database time; their rows go
    with their definition by an explicit delete (dacc.definitions)."""

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    measure_name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH))
    start_date: Mapped[datetime] = mapped_column(sa.DateTime)
    created_by: Mapped[str] = mapped_column(sa.String(KEY_LENGTH))
    group1: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))
    group2: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))
    group3: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))


class CellKey(HistoryCellKey):
    """The key of a cell of a ledger table that holds one row per cell, tied to its
    definition (deleted with it)."""

    measure_name: Mapped[str] = mapped_column(
        sa.String(NAME_LENGTH),
        sa.ForeignKey("measure_definition.name", ondelete="CASCADE", onupdate="CASCADE"),
    )


class PublishedCell(CellKey, db.Model):
    """The version of a cell (plain or wildcard) that /aggregate serves now."""

    __tablename__ = "published_cell"
    __table_args__ = (
        sa.Index("uq_published_cell_cell", *CELL_KEY, unique=True, postgresql_nulls_not_distinct=True),
    )

    version: Mapped[int] = mapped_column(sa.Integer)
    contributions: Mapped[int] = mapped_column(sa.BigInteger)
    """Contributions the served version covers (its count)."""
    epoch: Mapped[int] = mapped_column(sa.Integer)
    """Publication epoch of the version: it covers the pieces of epochs up to this one."""
    count: Mapped[int | None] = mapped_column(sa.BigInteger)
    count_not_zero: Mapped[int | None] = mapped_column(sa.BigInteger)
    sum: Mapped[Decimal | None] = mapped_column(sa.Numeric)
    min: Mapped[Decimal | None] = mapped_column(sa.Numeric)
    max: Mapped[Decimal | None] = mapped_column(sa.Numeric)
    avg: Mapped[Decimal | None] = mapped_column(sa.Numeric)
    std: Mapped[Decimal | None] = mapped_column(sa.Numeric)
    median: Mapped[Decimal | None] = mapped_column(sa.Numeric)
    first_quartile: Mapped[Decimal | None] = mapped_column(sa.Numeric)
    third_quartile: Mapped[Decimal | None] = mapped_column(sa.Numeric)
    body: Mapped[str] = mapped_column(sa.Text)
    """The row exactly as /aggregate serves it (JSON text): a read concatenates these."""
    sort_key: Mapped[str] = mapped_column(sa.Text(collation="C"))
    published_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class PublishedVersion(HistoryCellKey, db.Model):
    """Every version ever served, never deleted but with its definition: the audit's memory."""

    __tablename__ = "published_version"
    __table_args__ = (
        sa.Index(
            "uq_published_version_cell_version",
            *CELL_KEY,
            "version",
            unique=True,
            postgresql_nulls_not_distinct=True,
        ),
    )

    version: Mapped[int] = mapped_column(sa.Integer)
    contributions: Mapped[int] = mapped_column(sa.BigInteger)
    epoch: Mapped[int] = mapped_column(sa.Integer)
    body: Mapped[str] = mapped_column(sa.Text)
    published_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class PublicationLeaf(CellKey, db.Model):
    """A plain cell as publication last saw it: contributions split into pieces so far."""

    __tablename__ = "publication_leaf"
    __table_args__ = (
        sa.Index("uq_publication_leaf_cell", *CELL_KEY, unique=True, postgresql_nulls_not_distinct=True),
    )

    count: Mapped[int] = mapped_column(sa.BigInteger)
    frozen_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    """Set when the cell lost contributions (a rebuild after a purge): its contents no
    longer match its pieces, so no row covering it is served anew."""


class PublicationPiece(HistoryCellKey, db.Model):
    """The contributions a plain cell gained in one publication epoch."""

    __tablename__ = "publication_piece"
    __table_args__ = (
        sa.Index(
            "uq_publication_piece_cell_epoch",
            *CELL_KEY,
            "epoch",
            unique=True,
            postgresql_nulls_not_distinct=True,
        ),
    )

    epoch: Mapped[int] = mapped_column(sa.Integer)
    count: Mapped[int] = mapped_column(sa.BigInteger)


class PublicationState(db.Model):
    """Per measure: the last publication epoch and when it ran."""

    __tablename__ = "publication_state"

    measure_name: Mapped[str] = mapped_column(
        sa.String(NAME_LENGTH),
        sa.ForeignKey("measure_definition.name", ondelete="CASCADE", onupdate="CASCADE"),
        primary_key=True,
    )
    epoch: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    published_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
