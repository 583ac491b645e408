"""The publication statements: the ledger's reads and writes, all bound parameters.

Every statement names one measure (`:name`), the leading key of every ledger table, and
the hierarchies it works on as parallel arrays (`:starts`, `:apps`): no cross-measure
join, and the cost follows the hierarchies in scope, not the measure's history.
"""

from __future__ import annotations

STEPS = {"day": "1 day", "week": "1 week", "month": "1 month"}

HASH_JOINS = "SET LOCAL enable_nestloop = off"
"""For the publication's statements, which join sets of a few days' cells: built from
the days in scope (CTEs, unnest), their row estimates are guesses, stale as soon as the
latest days were written after the last ANALYZE; on an estimate of one row the planner
nest-loops two sets of thousands of cells (1,638 x 1,216 jsonb comparisons, 1.2 s
measured, instead of a 20 ms hash join)."""
PLAN_AS_USUAL = "SET LOCAL enable_nestloop TO DEFAULT"

STAR_TEST = """@? '$.* ? (@ == "*")'"""
"""jsonpath test on a group column: true when it holds {key: "*"} (a wildcard)."""
PLAIN = " AND ".join(f"NOT coalesce(a.group{i} {STAR_TEST}, false)" for i in (1, 2, 3))
"""SQL condition: aggregate `a` is a plain cell (no group starred)."""

SERVED_ROW_JSON = """json_strip_nulls(json_build_object(
    'measureName', s.measure_name,
    'startDate', to_char(s.start_date, 'YYYY-MM-DD"T"HH24:MI:SS'),
    'createdBy', s.created_by,
    'group1', s.group1, 'group2', s.group2, 'group3', s.group3,
    'count', s.count, 'countNotZero', s.count_not_zero,
    'sum', s.sum, 'min', s.min, 'max', s.max, 'avg', s.avg, 'std', s.std,
    'median', s.median, 'firstQuartile', s.first_quartile, 'thirdQuartile', s.third_quartile
))::text"""
"""SQL of one served row `s` (numbers already rounded and shaped), as /aggregate returns
it: DACC's camelCase fields, null fields left out. The ledger stores it, so a read
concatenates stored text (measured 1.4 ms for 600 rows, against 13 ms building the
JSON at query time)."""

SHAPES = ("full", "no_extremes", "counts", "count")
"""What a served row shows: everything; no min/max/median/quartiles/std (extremes rule);
count and countNotZero only (few non-zero values); count only (dominance)."""

SERVED_ORDER_KEY = """concat_ws(' ', a.group1, a.group2, a.group3, a.created_by) COLLATE "C\""""
"""SQL of the order of rows within a start date: the groups' JSON text, bytewise."""

DEFINITION = """
SELECT aggregation_threshold AS k, aggregation_period AS period, publish_delay_hours AS delay,
       extremes, p_percent
FROM measure_definition WHERE name = :name
"""

# The measure's publication state, locked for this transaction (created at the first
# publication). The row lock also serialises publications of one measure that do not
# run under the aggregation lock (flask view ..., jobs).
LOCK_STATE = """
WITH created AS (
    INSERT INTO publication_state (measure_name, epoch) VALUES (:name, 0)
    ON CONFLICT (measure_name) DO NOTHING
)
SELECT epoch, published_at FROM publication_state WHERE measure_name = :name FOR UPDATE
"""
LOCK_STATE_AGAIN = "SELECT epoch, published_at FROM publication_state WHERE measure_name = :name FOR UPDATE"

SAVE_STATE = """
UPDATE publication_state SET epoch = :epoch, published_at = now() WHERE measure_name = :name
"""

CLOSED = """a.start_date + CAST(:step AS interval) + make_interval(hours => :delay)
          <= (now() AT TIME ZONE 'UTC')"""
"""A cell's period has ended, plus the definition's publishDelayHours."""

# The hierarchies (start date, app) to decide again, all closed: with `full`, every one
# of the measure; else those holding a cell that changed since the last publication
# (ix_aggregate_name_last_updated) and those whose period closed since then (a range of
# uq_aggregate_cell, widened by a day for month lengths, then the exact test).
SCOPE_FULL = f"""
SELECT DISTINCT a.start_date, a.created_by FROM aggregate a
WHERE a.measure_name = :name AND {CLOSED}
ORDER BY 1, 2
"""
SCOPE_CHANGED = f"""
SELECT start_date, created_by FROM (
    SELECT a.start_date, a.created_by FROM aggregate a
    WHERE a.measure_name = :name AND a.last_updated > :since
    UNION
    SELECT a.start_date, a.created_by FROM aggregate a
    WHERE a.measure_name = :name
      AND a.start_date > (CAST(:since AS timestamptz) AT TIME ZONE 'UTC')
                         - CAST(:step AS interval) - make_interval(hours => :delay)
                         - interval '1 day'
      AND a.start_date + CAST(:step AS interval) + make_interval(hours => :delay)
          > (CAST(:since AS timestamptz) AT TIME ZONE 'UTC')
) a
WHERE {CLOSED}
ORDER BY 1, 2
"""

SCOPE_JOIN = """JOIN unnest(CAST(:starts AS timestamp[]), CAST(:apps AS text[])) WITH ORDINALITY
          AS s (start_date, created_by, h)
      ON s.start_date = {t}.start_date AND s.created_by = {t}.created_by
      AND {t}.start_date = ANY (CAST(:starts AS timestamp[]))"""
"""Restrict table alias {t} to the hierarchies in scope; `s.h` numbers the hierarchy
(1-based, in the order of the arrays). The ANY condition is an index condition beside
measure_name (the planner cannot see through unnest): the statement reads the days in
scope, not the measure's history."""

SCOPE_DAYS = """{t}.start_date = ANY (CAST(:starts AS timestamp[]))
      AND {t}.created_by = ANY (CAST(:apps AS text[]))"""
"""A superset of the hierarchies in scope (every pairing of their days and apps), for a
set that is joined further: its row estimate stays that of the days read (a join on
unnest makes the planner expect a row or two, then nest-loop a join of thousands)."""


def cell_key(t: str) -> str:
    """SQL of one value naming the cell of table alias `t` within a measure: the sets
    joined by cell carry it, so that the join has one equality on all of the key. Joined
    on the five columns, the planner merge-joined on the first two (start date, app) and
    compared the groups of every pair of a day's cells (370 M jsonb comparisons for
    1,831 days). Absent groups are JSON null in the array, never equal to a stored
    group (an object)."""
    return f"jsonb_build_array({t}.start_date, {t}.created_by, {t}.group1, {t}.group2, {t}.group3)"


# Split what the plain cells in scope gained since the last publication into this
# epoch's pieces, and move each cell's published count on. A cell whose count went down
# (rebuilt after a purge: its contributions are no longer those of its pieces) is frozen
# for good: no row covering it is served anew. One statement.
UPDATE_LEAVES = (
    """
WITH plain AS MATERIALIZED (
    SELECT a.start_date, a.created_by, a.group1, a.group2, a.group3, a.count, """
    + cell_key("a")
    + """ AS cell
    FROM aggregate a
    WHERE a.measure_name = :name AND """
    + SCOPE_DAYS.format(t="a")
    + " AND "
    + PLAIN
    + """
), known AS MATERIALIZED (
    SELECT l.id, l.count, l.frozen_at, """
    + cell_key("l")
    + """ AS cell
    FROM publication_leaf l
    WHERE l.measure_name = :name AND """
    + SCOPE_DAYS.format(t="l")
    + """
), cells AS MATERIALIZED (
    -- Two materialized sets, joined on equalities: a hash join, not a probe per cell;
    -- then only the hierarchies in scope.
    SELECT a.start_date, a.created_by, a.group1, a.group2, a.group3, a.count,
           l.id AS leaf_id, l.count AS published, l.frozen_at
    FROM plain a
    LEFT JOIN known l ON l.cell = a.cell
    """
    + SCOPE_JOIN.format(t="a")
    + """
), pieces AS (
    INSERT INTO publication_piece
        (measure_name, start_date, created_by, group1, group2, group3, epoch, count)
    SELECT :name, start_date, created_by, group1, group2, group3, :epoch,
           count - coalesce(published, 0)
    FROM cells
    WHERE frozen_at IS NULL AND count > coalesce(published, 0)
), added AS (
    INSERT INTO publication_leaf (measure_name, start_date, created_by, group1, group2, group3, count)
    SELECT :name, start_date, created_by, group1, group2, group3, count
    FROM cells WHERE leaf_id IS NULL
)
UPDATE publication_leaf l
SET count = CASE WHEN c.count > l.count THEN c.count ELSE l.count END,
    frozen_at = CASE WHEN c.count < l.count THEN now() ELSE NULL END
FROM cells c
WHERE l.id = c.leaf_id AND l.frozen_at IS NULL AND c.count <> l.count
  -- The leaves of the days in scope: the other side of a hash join (nested loops are
  -- off during a publication), read by index, not the measure's every leaf.
  AND l.measure_name = :name AND """
    + SCOPE_DAYS.format(t="l")
    + """
"""
)

GROUP_TEXT = "a.group1::text AS g1, a.group2::text AS g2, a.group3::text AS g3"

LEAVES = (
    """
SELECT s.h, """
    + GROUP_TEXT
    + """, a.count, a.frozen_at IS NOT NULL AS frozen
FROM publication_leaf a
"""
    + SCOPE_JOIN.format(t="a")
    + """
WHERE a.measure_name = :name
"""
)
PIECES = (
    """
SELECT s.h, """
    + GROUP_TEXT
    + """, a.epoch, a.count
FROM publication_piece a
"""
    + SCOPE_JOIN.format(t="a")
    + """
WHERE a.measure_name = :name
"""
)
VERSIONS = (
    """
SELECT s.h, """
    + GROUP_TEXT
    + """, a.version, a.epoch, a.contributions, strpos(a.body, '"sum":') > 0 AS with_sum
FROM published_version a
"""
    + SCOPE_JOIN.format(t="a")
    + """
WHERE a.measure_name = :name
ORDER BY a.id
"""
)
# Every row of the hierarchies in scope, all levels, with what is served of it now (two
# materialized sets joined by cell key, as in UPDATE_LEAVES).
CANDIDATES = (
    """
WITH rows AS MATERIALIZED (
    -- The columns decided on, not a.*: a quartile cell's sorted values are kilobytes.
    SELECT a.id, a.start_date, a.created_by, a.group1, a.group2, a.group3, a.count,
           a.count_not_zero, a.contributors, a.sum, a.min, a.largest_value,
           a.second_largest_value, """
    + cell_key("a")
    + """ AS cell FROM aggregate a WHERE a.measure_name = :name AND """
    + SCOPE_DAYS.format(t="a")
    + """
), served AS MATERIALIZED (
    SELECT p.contributions, """
    + cell_key("p")
    + """ AS cell
    FROM published_cell p
    WHERE p.measure_name = :name AND """
    + SCOPE_DAYS.format(t="p")
    + """
)
SELECT s.h, a.id, """
    + GROUP_TEXT
    + """, a.count, a.count_not_zero, a.contributors, p.contributions AS served,
       -- The values only the dominance rule reads (numeric: costly to fetch).
       CASE WHEN :values THEN a.sum END AS sum, CASE WHEN :values THEN a.min END AS min,
       CASE WHEN :values THEN a.largest_value END AS largest_value,
       CASE WHEN :values THEN a.second_largest_value END AS second_largest_value
FROM rows a
LEFT JOIN served p ON p.cell = a.cell
"""
    + SCOPE_JOIN.format(t="a")
    + """
"""
)

# Serve the chosen aggregate rows as new versions: the current version is replaced,
# the history gains it. The numbers are stored as served (rounded), beside the JSON.
PUBLISH = (
    """
WITH chosen AS (
    -- The days in scope read as ranges of uq_aggregate_cell, hash-joined with the chosen
    -- ids: fewer pages than a primary-key probe per id.
    SELECT a.*, c.shape
    FROM aggregate a
    JOIN unnest(CAST(:ids AS bigint[]), CAST(:shapes AS text[])) AS c (id, shape) ON c.id = a.id
    WHERE a.measure_name = :name AND """
    + SCOPE_DAYS.format(t="a")
    + """
), shaped AS (
    -- What each row shows, rounded as served: the magnitude rules null fields out.
    SELECT measure_name, start_date, created_by, group1, group2, group3, count,
           CASE WHEN shape <> 'count' THEN count_not_zero END AS count_not_zero,
           CASE WHEN shape IN ('full', 'no_extremes') THEN round(sum, 2) END AS sum,
           CASE WHEN shape IN ('full', 'no_extremes') THEN round(avg::numeric, 2) END AS avg,
           CASE WHEN shape = 'full' THEN min END AS min,
           CASE WHEN shape = 'full' THEN max END AS max,
           CASE WHEN shape = 'full' THEN round(std::numeric, 2) END AS std,
           CASE WHEN shape = 'full' THEN round(median::numeric, 2) END AS median,
           CASE WHEN shape = 'full' THEN round(first_quartile::numeric, 2) END AS first_quartile,
           CASE WHEN shape = 'full' THEN round(third_quartile::numeric, 2) END AS third_quartile,
           """
    + SERVED_ORDER_KEY
    + """ AS sort_key
    FROM chosen a
), served AS (
    INSERT INTO published_cell AS p
        (measure_name, start_date, created_by, group1, group2, group3, version, contributions,
         epoch, count, count_not_zero, sum, min, max, avg, std, median, first_quartile,
         third_quartile, body, sort_key, published_at)
    SELECT measure_name, start_date, created_by, group1, group2, group3, 1, count,
           :epoch, count, count_not_zero, sum, min, max, avg, std, median, first_quartile,
           third_quartile, """
    + SERVED_ROW_JSON
    + """, sort_key, now()
    FROM shaped s
    ON CONFLICT (measure_name, start_date, created_by, group1, group2, group3) DO UPDATE SET
        version = p.version + 1,
        contributions = EXCLUDED.contributions,
        epoch = EXCLUDED.epoch,
        count = EXCLUDED.count,
        count_not_zero = EXCLUDED.count_not_zero,
        sum = EXCLUDED.sum,
        min = EXCLUDED.min,
        max = EXCLUDED.max,
        avg = EXCLUDED.avg,
        std = EXCLUDED.std,
        median = EXCLUDED.median,
        first_quartile = EXCLUDED.first_quartile,
        third_quartile = EXCLUDED.third_quartile,
        body = EXCLUDED.body,
        sort_key = EXCLUDED.sort_key,
        published_at = EXCLUDED.published_at
    RETURNING p.*
)
INSERT INTO published_version
    (measure_name, start_date, created_by, group1, group2, group3, version, contributions,
     epoch, body, published_at)
SELECT measure_name, start_date, created_by, group1, group2, group3, version, contributions,
       epoch, body, published_at
FROM served
"""
)

# For `flask privacy check`: the hierarchies holding served versions.
SERVED_HIERARCHIES = """
SELECT DISTINCT start_date, created_by FROM published_version
WHERE measure_name = :name
  AND (CAST(:day AS timestamp) IS NULL
       OR (start_date >= CAST(:day AS timestamp) AND start_date < CAST(:day AS timestamp) + interval '1 day'))
ORDER BY 1, 2
"""

# The read side: the relation DACC documents, over the ledger, for external readers.
FILTERED_AGGREGATION_VIEW = """
SELECT id, measure_name, start_date, created_by, group1, group2, group3,
       count, count_not_zero, sum, min, max, avg, std,
       median, first_quartile, third_quartile, published_at AS last_updated,
       version, body, sort_key
FROM published_cell
"""
"""The body of the plain view filtered_aggregation; migration 0003 creates it from a copy
that a test compares with this text."""
