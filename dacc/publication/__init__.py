"""Publication: the one place that decides what /aggregate serves, and remembers it.

Aggregation runs publish in their own transaction, right after the merge
(publish_measure); `flask view ...` and `flask jobs run` publish what became pending
without new data (periods that closed) with publish_pending; `flask privacy check`
audits everything served (check_privacy). /aggregate reads only the ledger
(published_cell); the plain view filtered_aggregation shows it to external readers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime

import numpy as np
import sqlalchemy as sa

from dacc.aggregation.sql import TRY_XACT_LOCK
from dacc.db import db
from dacc.errors import Conflict, NotFound
from dacc.publication import sql
from dacc.publication.publisher import (
    PieceSpace,
    PublicationResult,
    load_hierarchies,
    publish_measure,
    served_audits,
)

log = logging.getLogger(__name__)

__all__ = [
    "PublicationResult",
    "check_privacy",
    "create_view",
    "delete_view",
    "publish_measure",
    "publish_pending",
]

VIEW = "filtered_aggregation"


def publish_pending(*, names: list[str] | None = None, full: bool = False) -> list[PublicationResult]:
    """Publish what is pending for each measure (all when `names` is None), each in its
    own transaction under the measure's aggregation lock; a measure whose lock is held
    is skipped (its holder publishes when it commits). `full` decides every closed
    hierarchy again (after a rule change). Commits per measure."""
    from dacc.restitution import forget_cached_reads

    known = list(db.session.scalars(sa.text("SELECT name FROM measure_definition ORDER BY name")))
    db.session.commit()
    if names is None:
        names = known
    for name in set(names) - set(known):
        raise NotFound(f"measure '{name}': no such definition")
    from dacc.runs import record_run

    results = []
    for name in names:
        started = time.monotonic()
        try:
            with db.engine.connect() as conn, conn.begin():
                conn.execute(sa.text("SET LOCAL statement_timeout = 0"))
                if not conn.execute(sa.text(TRY_XACT_LOCK), {"name": name}).scalar():
                    results.append(PublicationResult(name, skipped=True))
                    continue
                result = publish_measure(conn, name, full=full)
        except Exception:
            record_run("publication", name, ok=False, seconds=time.monotonic() - started)
            raise
        result.seconds = time.monotonic() - started
        record_run("publication", name, ok=True, seconds=result.seconds)
        results.append(result)
    forget_cached_reads()
    return results


def create_view(*, replace: bool = False) -> None:
    """Create the plain view filtered_aggregation over the ledger, for external readers.
    Raises Conflict if it exists (unless `replace`). Commits."""
    with db.engine.begin() as conn:
        exists = conn.execute(sa.text(_VIEW_EXISTS)).scalar()
        if exists and not replace:
            raise Conflict(f"{VIEW} already exists (recreate-filtered-aggregation republishes)")
        conn.execute(sa.text(f"CREATE OR REPLACE VIEW {VIEW} AS {sql.FILTERED_AGGREGATION_VIEW}"))


def delete_view() -> None:
    """Drop the view filtered_aggregation; /aggregate keeps serving the ledger. Raises
    NotFound if it does not exist. Commits."""
    with db.engine.begin() as conn:
        if not conn.execute(sa.text(_VIEW_EXISTS)).scalar():
            raise NotFound(f"{VIEW} does not exist")
        conn.execute(sa.text(f"DROP VIEW {VIEW}"))


_VIEW_EXISTS = f"""
SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = '{VIEW}' AND relkind = 'v'
               AND relnamespace = current_schema()::regnamespace)
"""


@dataclasses.dataclass
class Disclosure:
    """A set of contributions the served rows give away: what `flask privacy check` lists."""

    measure_name: str
    start_date: datetime
    created_by: str
    contributions: int
    pieces: list[str]
    """Each piece: the plain cell's groups and the epoch its contributions arrived in."""
    rows: list[str]
    """The served versions that combine into its total (with their coefficients)."""


def check_privacy(name: str | None = None, *, day: datetime | None = None) -> list[Disclosure]:
    """Audit everything served (one measure, or all; one start day, or all): every set
    of 1..k-1 contributions whose total the served versions give away. Reads only."""
    names = (
        [name]
        if name
        else list(db.session.scalars(sa.text("SELECT name FROM measure_definition ORDER BY name")))
    )
    found = []
    with db.engine.connect() as conn:
        for measure in names:
            k = conn.execute(sa.text(sql.DEFINITION), {"name": measure}).one().k
            scope = conn.execute(sa.text(sql.SERVED_HIERARCHIES), {"name": measure, "day": day}).all()
            if not scope:
                continue
            params = {
                "name": measure,
                "starts": [s.start_date for s in scope],
                "apps": [s.created_by for s in scope],
            }
            for (start, app), hierarchy in load_hierarchies(conn, params, with_rows=False).items():
                found += _disclosures(measure, start, app, hierarchy, k)
    db.session.commit()
    return found


def _disclosures(measure, start, app, hierarchy, k) -> list[Disclosure]:
    space = PieceSpace(hierarchy)
    audits = served_audits(space, hierarchy, k)
    found = audits.counts.findings() + (audits.sums.findings() if audits.sums is not audits.counts else [])
    findings = list({f.pieces: f for f in found}.values())
    if not findings:
        return []
    vectors = np.array([space.vector((v.g1, v.g2, v.g3), v.epoch) for v in hierarchy.versions], dtype=float)
    out = []
    for finding in findings:
        target = np.zeros(len(space.piece_counts))
        target[list(finding.pieces)] = 1
        weights, *_ = np.linalg.lstsq(vectors.T, target, rcond=None)
        rows = [
            f"{w:+.3g} x {_describe(v.g1, v.g2, v.g3)} v{v.version}"
            for w, v in zip(weights, hierarchy.versions)
            if abs(w) > 1e-9
        ]
        pieces = [
            f"{_describe(p.g1, p.g2, p.g3)} epoch {p.epoch} ({p.count})"
            for p in (hierarchy.pieces[i] for i in sorted(finding.pieces))
        ]
        out.append(Disclosure(measure, start, app, finding.contributions, pieces, rows))
    return out


def _describe(*groups) -> str:
    return "(" + ", ".join(g for g in groups if g is not None) + ")"
