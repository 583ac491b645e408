"""Aggregates (one row per cell) and the per-measure bookkeeping of aggregation runs."""

from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from dacc.db import db
from dacc.models.definitions import KEY_LENGTH, NAME_LENGTH
from dacc.models.measures import VALUE_TYPE


class Aggregate(db.Model):
    """Mergeable statistics of one cell: exact sums, so that merges stay exact.

    A group holding {key: "*"} is a wildcard: all values of that group merged.
    """

    __tablename__ = "aggregate"
    __table_args__ = (
        # NULLS NOT DISTINCT: a definition without group2 has NULL there, and its cells
        # must still be unique for ON CONFLICT to merge into them.
        sa.Index(
            "uq_aggregate_cell",
            "measure_name",
            "start_date",
            "created_by",
            "group1",
            "group2",
            "group3",
            unique=True,
            postgresql_nulls_not_distinct=True,
        ),
        # Publication finds the cells a run touched since the previous publication.
        sa.Index("ix_aggregate_name_last_updated", "measure_name", "last_updated"),
        # The cells a purge stamped, few or none: whether a run of a quartile measure must
        # refuse late measures reads this, not every cell of the measure.
        sa.Index(
            "ix_aggregate_purged",
            "measure_name",
            postgresql_where=sa.text("last_raw_measures_purged IS NOT NULL"),
        ),
        # The cells that keep quartile state, by day: the purge drops it from the cells
        # past maxDaysToUpdateQuartile without reading the others.
        sa.Index(
            "ix_aggregate_quartile_state",
            "measure_name",
            "start_date",
            postgresql_where=sa.text("quartile_values IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    measure_name: Mapped[str] = mapped_column(
        sa.String(NAME_LENGTH),
        sa.ForeignKey("measure_definition.name", ondelete="CASCADE", onupdate="CASCADE"),
    )
    start_date: Mapped[datetime] = mapped_column(sa.DateTime)
    created_by: Mapped[str] = mapped_column(sa.String(KEY_LENGTH))
    group1: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))
    group2: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))
    group3: Mapped[dict | None] = mapped_column(JSONB(none_as_null=True))
    count: Mapped[int] = mapped_column(sa.BigInteger)
    count_not_zero: Mapped[int] = mapped_column(sa.BigInteger)
    sum: Mapped[Decimal] = mapped_column(sa.Numeric)
    sum_squares: Mapped[Decimal] = mapped_column(sa.Numeric)
    """Exact sum of value², so that std merges exactly."""
    min: Mapped[Decimal] = mapped_column(VALUE_TYPE)
    max: Mapped[Decimal] = mapped_column(VALUE_TYPE)
    avg: Mapped[float] = mapped_column(sa.Float)
    std: Mapped[float] = mapped_column(sa.Float)
    median: Mapped[float | None] = mapped_column(sa.Float)
    first_quartile: Mapped[float | None] = mapped_column(sa.Float)
    third_quartile: Mapped[float | None] = mapped_column(sa.Float)
    contributors: Mapped[int] = mapped_column(sa.BigInteger)
    """Distinct contributors of the cell (a measure without one is its own): equals
    `count` when nobody sent the field. Exact after a purge (kept by the merge from
    cell_contributor). Never served; the publisher's k is counted in it."""
    largest_value: Mapped[Decimal] = mapped_column(VALUE_TYPE)
    """The largest value (= max), kept for the dominance rule; never served."""
    second_largest_value: Mapped[Decimal | None] = mapped_column(VALUE_TYPE)
    """The second largest value (a tie counts twice), kept exactly when the definition
    has a dominance rule (pPercent); None for a single value, and for every cell of a
    definition without the rule. Never served."""
    last_updated: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    last_raw_measures_purged: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    quartile_values: Mapped[list[float] | None] = mapped_column(ARRAY(sa.Float))
    """A plain cell's values, sorted, as percentile_cont sees them (float8), so that a
    merge takes its quartiles without re-reading its raw rows (dacc.aggregation.sql).
    A copy of raw values: only while the cell is within maxDaysToUpdateQuartile and
    unstamped (dacc.purge drops it with the raw rows); never served. NULL elsewhere."""


class AggregationState(db.Model):
    """Where the previous aggregation run of a measure stopped.

    The run's snapshot (xmin, xmax, in-progress ids) tells exactly which raw rows it
    saw: the next run takes the rows its own snapshot sees and that one did not.
    """

    __tablename__ = "aggregation_state"

    measure_name: Mapped[str] = mapped_column(
        sa.String(NAME_LENGTH),
        sa.ForeignKey("measure_definition.name", ondelete="CASCADE", onupdate="CASCADE"),
        primary_key=True,
    )
    last_run_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    snapshot_xmin: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    snapshot_xmax: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    snapshot_xip: Mapped[list[int]] = mapped_column(
        ARRAY(sa.BigInteger), server_default=sa.text("'{}'::bigint[]")
    )
    rebuild_from: Mapped[datetime | None] = mapped_column(sa.DateTime)
    """Set by delete-aggregations-from-date: the next run re-reads every raw measure
    from this start date on, whatever its transaction."""
