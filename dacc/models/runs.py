"""Counters of job runs, written by the CLI processes that run them, read by /metrics."""

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from dacc.db import db
from dacc.models.definitions import NAME_LENGTH


class JobRunStat(db.Model):
    """One row per job kind and measure: cumulative counts, durations, last success.

    Jobs are short CLI processes, often on another host or container than the web
    servers: their metrics live here, where any web process can serve them.
    """

    __tablename__ = "job_run_stat"

    job: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    """aggregation, publication or purge."""
    measure_name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH), primary_key=True)
    """The measure; '' for a job over every measure."""
    runs_ok: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    runs_failed: Mapped[int] = mapped_column(sa.BigInteger, server_default="0")
    seconds_total: Mapped[float] = mapped_column(sa.Float, server_default="0")
    """Sum of the durations of every run, successful or not."""
    last_seconds: Mapped[float | None] = mapped_column(sa.Float)
    last_success_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    last_failure_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
