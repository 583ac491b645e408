"""Measure definitions: what may be measured, how it is grouped and who may read it."""

from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from dacc.db import db

PERIODS = ("day", "week", "month")
EXTREMES = ("hide", "k2", "show")
"""When a cell's min, max, median, quartiles and std are served: never, from 2k
contributions on (the default), or whenever the cell is served (DACC's behaviour)."""
ANY_WRITER = "*"
"""In `writers`: any token with measure:write may send the measure (DACC's behaviour)."""
NAME_LENGTH = 200
KEY_LENGTH = 100


class MeasureDefinition(db.Model):
    __tablename__ = "measure_definition"
    __table_args__ = (
        sa.CheckConstraint("aggregation_period IN ('day', 'week', 'month')", name="aggregation_period"),
        sa.CheckConstraint("execution_frequency IN ('day', 'week', 'month')", name="execution_frequency"),
        sa.CheckConstraint("aggregation_threshold >= 1", name="aggregation_threshold"),
        sa.CheckConstraint("max_days_to_update_quartile >= 0", name="max_days_quartile"),
        sa.CheckConstraint("raw_retention_days IS NULL OR raw_retention_days >= 1", name="retention"),
        sa.CheckConstraint("publish_delay_hours >= 0", name="publish_delay"),
        sa.CheckConstraint("extremes IN ('hide', 'k2', 'show')", name="extremes"),
        sa.CheckConstraint("p_percent IS NULL OR (p_percent > 0 AND p_percent <= 100)", name="p_percent"),
        sa.CheckConstraint(
            "max_contributions_per_cell IS NULL OR max_contributions_per_cell >= 1",
            name="max_contributions",
        ),
        # Group keys are positional: group2 needs group1, group3 needs group2.
        sa.CheckConstraint(
            "(group2_key IS NULL OR group1_key IS NOT NULL)"
            " AND (group3_key IS NULL OR group2_key IS NOT NULL)",
            name="group_keys_in_order",
        ),
    )

    id: Mapped[int] = mapped_column(sa.Integer, sa.Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH), unique=True)
    org: Mapped[str] = mapped_column(sa.String(KEY_LENGTH))
    created_by: Mapped[str | None] = mapped_column(sa.String(KEY_LENGTH))
    group1_key: Mapped[str | None] = mapped_column(sa.String(KEY_LENGTH))
    group2_key: Mapped[str | None] = mapped_column(sa.String(KEY_LENGTH))
    group3_key: Mapped[str | None] = mapped_column(sa.String(KEY_LENGTH))
    description: Mapped[str | None] = mapped_column(sa.Text)
    aggregation_period: Mapped[str] = mapped_column(sa.String(5), server_default="day")
    execution_frequency: Mapped[str] = mapped_column(sa.String(5), server_default="day")
    aggregation_threshold: Mapped[int] = mapped_column(sa.Integer, server_default="5")
    access_app: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    access_public: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    with_quartiles: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.false())
    max_days_to_update_quartile: Mapped[int] = mapped_column(sa.Integer, server_default="100")
    wildcard_groups: Mapped[list] = mapped_column(JSONB, server_default=sa.text("'[]'::jsonb"))
    """Declared wildcard levels, e.g. [["group2"], ["group1", "group2"]]."""
    raw_retention_days: Mapped[int | None] = mapped_column(sa.Integer)
    publish_delay_hours: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    """A cell is first published once its period has ended plus this delay."""
    writers: Mapped[list] = mapped_column(JSONB, server_default=sa.text("'[\"*\"]'::jsonb"))
    """Orgs whose tokens may send this measure; ["*"]: any token. The column default
    keeps definitions of a live deployment open (DACC's behaviour) on upgrade; a new
    definition written without the field gets [its org] (dacc.definitions)."""
    extremes: Mapped[str] = mapped_column(sa.String(4), server_default="k2")
    p_percent: Mapped[Decimal | None] = mapped_column(sa.Numeric(5, 2))
    """p % dominance rule: a cell is sensitive when the values other than its two largest
    total less than p % of the largest. None: no dominance rule."""
    max_contributions_per_cell: Mapped[int | None] = mapped_column(sa.Integer)
    """Measures one contributor may send into one cell; None: no cap."""
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())
    updated_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())

    @property
    def group_keys(self) -> list[str]:
        return [k for k in (self.group1_key, self.group2_key, self.group3_key) if k]
