"""Which raw measures an aggregation run has already seen.

Each run records the snapshot it read raw_measure with (pg_current_snapshot(): xmin,
xmax, in-progress ids). A raw row was seen by that run exactly when its inserting
transaction (raw_measure.txid) was visible in that snapshot. Unlike a now() watermark,
this stays exact when transactions commit out of order.
"""

SEEN_BY_LAST_RUN = """(
    r.txid < s.snapshot_xmin
    OR (r.txid < s.snapshot_xmax AND NOT r.txid = ANY (s.snapshot_xip))
) AND (s.rebuild_from IS NULL OR r.start_date < s.rebuild_from)"""
"""SQL condition on raw_measure `r` joined to its aggregation_state `s`: the row is
already counted in the aggregates. A raw row of a measure without aggregation_state
has never been aggregated."""
