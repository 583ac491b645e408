"""The aggregation statements: all the work of a run happens in PostgreSQL.

Statements are assembled from fixed fragments only (the group expressions of a level,
the optional rebuild clause); every value is a bound parameter.
"""

from __future__ import annotations

GROUPS = ("group1", "group2", "group3")
STEPS = {"day": "1 day", "week": "1 week", "month": "1 month"}
"""Length of an aggregate cell for each aggregation_period (date_trunc field → interval)."""

REFUSED_REASON = "quartiles after purge: raw measures of this cell were purged"

# Who may run a measure: one aggregation (or delete-aggregations-from-date) at a time.
LOCK_KEY = "hashtextextended('dacc.aggregate:' || CAST(:name AS text), 0)"
TRY_SESSION_LOCK = f"SELECT pg_try_advisory_lock({LOCK_KEY})"
# Taken while the session lock is held (so it cannot fail), then the session lock is
# released: from here on the lock lives and dies with the transaction.
TAKE_XACT_LOCK = f"SELECT pg_advisory_xact_lock({LOCK_KEY})"
RELEASE_SESSION_LOCK = f"SELECT pg_advisory_unlock({LOCK_KEY})"
TRY_XACT_LOCK = f"SELECT pg_try_advisory_xact_lock({LOCK_KEY})"

NO_TIMEOUT = "SET LOCAL statement_timeout = 0"
# Around the merges of an incremental run. The planner cannot count the new rows (their
# txids lie past its statistics of raw_measure): it expects one, and groups them by
# sorting them on their cell keys, whose jsonb comparisons cost twice what hashing them
# does (10,000 new rows: 53 against 60 ms of backend CPU for the whole merge). Nothing
# the merges need sorted is affected: a window or ordered aggregate still sorts.
HASH_NEW_ROWS = "SET LOCAL enable_sort = off"
PLAN_AS_USUAL = "SET LOCAL enable_sort TO DEFAULT"

READ_STATE = """
SELECT last_run_at, snapshot_xmin, snapshot_xmax, snapshot_xip, rebuild_from,
       now() < last_run_at + CAST(:every AS interval) - interval '1 hour' AS too_early
FROM aggregation_state
WHERE measure_name = :name
"""

# The raw rows of the measure that the previous run did not see: the negation of
# snapshot.SEEN_BY_LAST_RUN with the previous snapshot bound as parameters, written so
# that `measure_name = :name AND txid >= :xmin` is an index condition on
# ix_raw_measure_name_txid: an incremental run reads only the new rows (and those of
# transactions still running at the previous run), never the old ones.
NOT_SEEN = "r.txid >= :xmin AND (r.txid >= :xmax OR r.txid = ANY (CAST(:xip AS bigint[])))"
# After delete-aggregations-from-date: every raw row of the deleted cells is new again.
REBUILD = "\n         OR r.start_date >= :rebuild_from"

# A new raw row that lands in a cell (of any maintained level) whose raw rows were
# partly purged cannot be merged into its quartiles exactly: move it to
# refused_raw_measure instead, so that no level counts it. One statement; {purged} is
# an OR of one EXISTS per level.
REFUSE = """
WITH moved AS (
    DELETE FROM raw_measure r
    WHERE {new_rows}
      AND ({purged})
    RETURNING r.measure_name, r.value, r.start_date, r.created_by,
              r.group1, r.group2, r.group3, r.last_updated, r.contributor
)
INSERT INTO refused_raw_measure
    (measure_name, value, start_date, created_by, group1, group2, group3, last_updated,
     contributor, reason)
SELECT measure_name, value, start_date, created_by, group1, group2, group3, last_updated,
       contributor, :reason
FROM moved
"""
PURGED_CELL = """EXISTS (
        SELECT 1 FROM aggregate a
        WHERE a.measure_name = :name
          AND a.start_date = date_trunc(:period, r.start_date)
          AND a.created_by = r.created_by
          AND {groups}
          AND a.last_raw_measures_purged IS NOT NULL)"""

# Sample standard deviation from exact sums, in numeric:
# sqrt((n·Σx² − (Σx)²) / (n·(n − 1))). The numerator is exact (no cancellation), so
# the result matches stddev_samp to ~16 significant digits; 0 for a single value.
STD = """CASE WHEN {n} > 1
         THEN sqrt(({n} * {ss} - {s} * {s}) / ({n} * ({n} - 1)))
         ELSE 0 END"""

CELL_ROWS = """SELECT date_trunc(:period, r.start_date) AS start_date, r.created_by,
                   {group1} AS group1, {group2} AS group2, {group3} AS group3,
                   r.value, r.contributor
            FROM raw_measure r
            WHERE {rows}"""
"""Raw rows `r` as rows of their cells: MERGE and WILDCARD share it."""
RANKED = """SELECT c.*, row_number() OVER (
               PARTITION BY c.start_date, c.created_by, c.group1, c.group2, c.group3
               ORDER BY c.value DESC) AS rank
        FROM ({cell_rows}) c"""
"""CELL_ROWS each ranked within its cell by value, largest first: the rank-2 value is
the cell's second largest, exactly, without keeping the cell's values. It costs a sort
of the rows by cell, so only definitions with a dominance rule (pPercent) pay it."""
CELL_STATS = """r.start_date, r.created_by, r.group1, r.group2, r.group3,
           count(*) AS n,
           count(*) FILTER (WHERE r.value <> 0) AS n_not_zero,
           sum(r.value) AS s,
           sum(r.value * r.value) AS ss,
           min(r.value) AS lo,
           max(r.value) AS hi,
           {hi2} AS hi2,
           count(*) FILTER (WHERE r.contributor IS NULL) AS anonymous"""
"""The mergeable statistics of cell rows `r` grouped by cell: MERGE and WILDCARD share
them. `anonymous`: rows without a contributor, each its own contributor."""
HI2_RANKED = "max(r.value) FILTER (WHERE r.rank = 2)"
HI2_NONE = "CAST(NULL AS numeric)"
CELL_COLUMNS = """(measure_name, start_date, created_by, group1, group2, group3,
        count, count_not_zero, sum, sum_squares, min, max, avg, std,
        median, first_quartile, third_quartile, last_updated,
        contributors, largest_value, second_largest_value, quartile_values)"""
"""The aggregate columns MERGE and WILDCARD insert, in the order of their SELECT lists."""
SAME_CELL = """c.start_date = f.start_date AND c.created_by = f.created_by
        AND coalesce(c.group1, 'null') = coalesce(f.group1, 'null')
        AND coalesce(c.group2, 'null') = coalesce(f.group2, 'null')
        AND coalesce(c.group3, 'null') = coalesce(f.group3, 'null')"""
"""Cell equality that a hash join can use (IS NOT DISTINCT FROM cannot): a group is an
object or NULL, never the JSON null."""

# Merge the new raw rows of one level into its cells: one INSERT ... SELECT ... GROUP BY
# ... ON CONFLICT DO UPDATE. Cells keep exact sums (count, sum, sum of squares,
# extremes) so that a merge gives the same numbers as a recompute. With quartiles, the
# touched cells get median and quartiles of ALL their values in the same statement
# ({quartiles}, {state}, {quartiles_from}, {quartiles_merged}): a plain cell from its
# stored sorted values and the new ones (STORED_CELL_STATE), a wildcard cell from its
# raw rows; when the measure had no cell at all, every row of a wildcard cell is new and
# the GROUP BY computes them ({fresh_percentiles}) without a second read.
# Contributors: each (cell, contributor) of the new rows goes into cell_contributor;
# the unique index keeps those already counted out, and what it let in is the cell's
# gain in distinct contributors (exact, whatever was purged from raw_measure: the
# hashes stay while the cell can take measures, see dacc.purge). Collecting the hashes
# in `fresh` instead (array_agg) would save that second read of the new rows but makes
# the planner sort a first run's rows instead of hashing them (1,000,000 rows: 1.45
# against 0.88 s). The two largest values merge as the two largest of {old two, new two}.
# RETURNING (xmax = 0) tells inserted from updated.
MERGE = (
    """
WITH added AS (
    INSERT INTO cell_contributor (measure_name, start_date, created_by, group1, group2, group3, contributor)
    SELECT DISTINCT :name, n.start_date, n.created_by, n.group1, n.group2, n.group3, n.contributor
    FROM ({contributor_rows}) n
    ON CONFLICT DO NOTHING
    RETURNING start_date, created_by, group1, group2, group3
), gained AS (
    SELECT start_date, created_by, group1, group2, group3, count(*) AS n
    FROM added
    GROUP BY 1, 2, 3, 4, 5
), fresh AS (
    SELECT """
    + CELL_STATS
    + """{fresh_percentiles}
    FROM ({cell_rows}) r
    GROUP BY 1, 2, 3, 4, 5
){touched}, merged AS (
    INSERT INTO aggregate AS a """
    + CELL_COLUMNS
    + """
    SELECT :name, f.start_date, f.created_by, f.group1, f.group2, f.group3,
           f.n, f.n_not_zero, f.s, f.ss, f.lo, f.hi, f.s / f.n, {std_new},
           {quartiles}, now(),
           f.anonymous + coalesce(c.n, 0), f.hi, f.hi2, {state}
    FROM fresh f
    LEFT JOIN gained c ON """
    + SAME_CELL
    + """{quartiles_from}
    ON CONFLICT (measure_name, start_date, created_by, group1, group2, group3)
    DO UPDATE SET
        count = a.count + EXCLUDED.count,
        count_not_zero = a.count_not_zero + EXCLUDED.count_not_zero,
        sum = a.sum + EXCLUDED.sum,
        sum_squares = a.sum_squares + EXCLUDED.sum_squares,
        min = LEAST(a.min, EXCLUDED.min),
        max = GREATEST(a.max, EXCLUDED.max),
        avg = (a.sum + EXCLUDED.sum) / (a.count + EXCLUDED.count),
        std = {std_merged},
        {quartiles_merged},
        last_updated = EXCLUDED.last_updated,
        contributors = a.contributors + EXCLUDED.contributors,
        largest_value = GREATEST(a.largest_value, EXCLUDED.largest_value),
        second_largest_value = {second_merged}
    RETURNING a.xmax = 0 AS inserted
)
SELECT (SELECT coalesce(sum(n), 0) FROM fresh) AS raw_read,
       count(*) FILTER (WHERE inserted) AS inserted,
       count(*) FILTER (WHERE NOT inserted) AS updated
FROM merged
"""
)
# Second of the union of two cells' values: the smaller of the two largest, or a
# runner-up if larger (GREATEST ignores NULLs: a side of one value has no runner-up).
SECOND_MERGED = """GREATEST(
            LEAST(a.largest_value, EXCLUDED.largest_value),
            a.second_largest_value, EXCLUDED.second_largest_value)"""
NO_QUARTILES = "NULL, NULL, NULL"
NO_STATE = "NULL"
QUARTILES = "q.p[2], q.p[1], q.p[3]"
FRESH_QUARTILES = "f.p[2], f.p[1], f.p[3]"
PERCENTILES = "percentile_cont(ARRAY[0.25, 0.5, 0.75]) WITHIN GROUP (ORDER BY r.value)"
"""Median and quartiles of the grouped rows, as PostgreSQL interpolates them: {q1, median, q3}."""

QUARTILES_EXCLUDED = """median = EXCLUDED.median,
        first_quartile = EXCLUDED.first_quartile,
        third_quartile = EXCLUDED.third_quartile,
        quartile_values = NULL"""
"""Levels without quartile state: a plain cell of a measure whose quartiles were switched
off loses the values it kept."""

# Plain cells of a quartile measure keep their values (aggregate.quartile_values): the
# float8 values percentile_cont sorts, in order, one per raw row. A merge sorts the
# stored values with the new ones and takes median and quartiles from that array
# (QUARTILE), instead of re-reading every raw row of the cell: 10,000 new rows into the
# 600 cells of 100,000, merge statement 104-130 against 200-234 ms of backend CPU (see
# docs/PERFORMANCE.md). The state is trusted only while it holds as many values as the
# cell has rows (a.count) and no purge stamped the cell; otherwise (a cell migration
# 0014 did not fill, state dropped by the purge's ageing) the cell's raw rows are read
# ({values_from_rows}) and the state is stored anew. A stamped cell keeps no state:
# the purge drops it with the raw rows it copies (dacc.purge), and a merge never stores
# it back.
# QUARTILE is percentile_cont's own float8 arithmetic (orderedsetaggs.c): for the
# fraction p of n sorted values, pos = p·(n − 1), exact for p in {0.25, 0.5, 0.75};
# the value at floor(pos), or lo + (pos − floor(pos))·(hi − lo) between two of them,
# the same operations in the same order, so the same bits.
QUARTILE = """CASE WHEN {pos} = floor({pos}) THEN {v}[CAST({pos} AS int) + 1]
           ELSE {v}[CAST(floor({pos}) AS int) + 1] + ({pos} - floor({pos}))
                * ({v}[CAST(floor({pos}) AS int) + 2] - {v}[CAST(floor({pos}) AS int) + 1])
           END"""
QUARTILE_POSITION = "(CAST({p} AS float8) * (cardinality({v}) - 1))"
NEW_CELL_VALUES = ",\n           array_agg(CAST(r.value AS float8)) AS vals"
# The new values of each touched cell, sorted alone (a handful per cell): a new cell's
# state and quartiles, and what a stored cell's state takes in (EXCLUDED).
SORTED_NEW_VALUES = """
    CROSS JOIN LATERAL (SELECT ARRAY(SELECT unnest(f.vals) ORDER BY 1) AS v OFFSET 0) q"""
# OFFSET 0 keeps the subquery from being pulled up: the array is built once, not once
# per reference in QUARTILE.
STORED_CELL_STATE = """(quartile_values, first_quartile, median, third_quartile) = (
            SELECT CASE WHEN a.last_raw_measures_purged IS NULL THEN m.v END, {quartiles}
            FROM (
                SELECT CASE
                    WHEN cardinality(a.quartile_values) = a.count AND a.last_raw_measures_purged IS NULL
                    THEN ARRAY(SELECT unnest(a.quartile_values || EXCLUDED.quartile_values) ORDER BY 1)
                    ELSE ({values_from_rows})
                END AS v
                OFFSET 0
            ) m)"""
# A stored cell without state (aged out by the purge, or left by migration 0014): its
# values from all its raw rows, through ix_raw_measure_name_start_date (the cell's
# period, its other groups' rows filtered out). Rare, so no index of raw rows by cell
# (migration 0014 dropped it: every ingested row paid its entry).
VALUES_FROM_ROWS = """SELECT array_agg(CAST(r.value AS float8) ORDER BY CAST(r.value AS float8))
                FROM raw_measure r
                WHERE r.measure_name = :name
                  AND r.start_date >= EXCLUDED.start_date
                  AND r.start_date < EXCLUDED.start_date + CAST(:step AS interval)
                  AND r.created_by = EXCLUDED.created_by
                  AND {same_raw_cell}"""


def quartiles_of(values: str) -> tuple[str, str, str]:
    """(first quartile, median, third quartile) of `values`, an expression of a sorted,
    non-empty float8[], exactly as percentile_cont gives them over those values."""
    parts = []
    for p in ("0.25", "0.5", "0.75"):
        parts.append(QUARTILE.format(v=values, pos=QUARTILE_POSITION.format(p=p, v=values)))
    return parts[0], parts[1], parts[2]


# Wildcard cells span several plain cells (every value of a starred group): their
# quartiles come from one pass over the rows of the touched periods (a range scan of
# ix_raw_measure_name_start_date per period), hash-grouped by the level's cell into an
# array of values, keeping the cells that hold a new row; percentile_cont then sorts
# each cell's array alone (the same values, so the same quartiles, as over the rows).
# Sorting the periods' rows by cell instead costs half as much again (measured), and a
# scan of the period per cell reads the period once per cell. The cells are joined to
# the merge's on the NULL-coalesced keys (a hash join), kept exact by IS NOT DISTINCT FROM.
TOUCHED_WILDCARD = """, touched AS (
    SELECT c.start_date, c.created_by, c.group1, c.group2, c.group3,
           (SELECT percentile_cont(ARRAY[0.25, 0.5, 0.75]) WITHIN GROUP (ORDER BY v)
            FROM unnest(c.vals) AS v) AS p
    FROM (
        SELECT date_trunc(:period, r.start_date) AS start_date, r.created_by,
               {group1} AS group1, {group2} AS group2, {group3} AS group3,
               array_agg(r.value) AS vals
        FROM (SELECT DISTINCT start_date FROM fresh) d
        JOIN raw_measure r
          ON r.measure_name = :name
         AND r.start_date >= d.start_date
         AND r.start_date < d.start_date + CAST(:step AS interval)
        GROUP BY 1, 2, 3, 4, 5
        HAVING bool_or({is_new})
    ) c
)"""
# A wildcard level that stars every group the measure has: one cell per period and
# app, so a range scan of the cell's period (ix_raw_measure_name_start_date) per cell
# is already one pass over the period, and cheaper than grouping it (measured: 36 ms
# against 55 ms for 30 such cells over 110,000 rows).
QUARTILES_FROM_PERIOD = (
    """
    CROSS JOIN LATERAL (
        SELECT """
    + PERCENTILES
    + """ AS p
        FROM raw_measure r
        WHERE r.measure_name = :name
          AND r.start_date >= f.start_date
          AND r.start_date < f.start_date + CAST(:step AS interval)
          AND r.created_by = f.created_by
          AND {groups}
    ) q"""
)
QUARTILES_FROM_TOUCHED = """
    LEFT JOIN touched q
           ON q.start_date = f.start_date
          AND q.created_by = f.created_by
          AND {same_touched_cell}"""

# Record the snapshot this run read raw_measure with: the next run takes exactly the
# rows that this snapshot did not see (see snapshot.py). In a REPEATABLE READ
# transaction pg_current_snapshot() is the transaction's snapshot, whatever statement
# asks. Also clears rebuild_from: the rebuild is done.
SAVE_STATE = """
INSERT INTO aggregation_state AS st
    (measure_name, last_run_at, snapshot_xmin, snapshot_xmax, snapshot_xip, rebuild_from)
SELECT :name, now(),
       CAST(CAST(pg_snapshot_xmin(s) AS text) AS bigint),
       CAST(CAST(pg_snapshot_xmax(s) AS text) AS bigint),
       ARRAY(SELECT CAST(CAST(x AS text) AS bigint) FROM pg_snapshot_xip(s) AS x),
       NULL
FROM pg_current_snapshot() AS s
ON CONFLICT (measure_name) DO UPDATE SET
    last_run_at = EXCLUDED.last_run_at,
    snapshot_xmin = EXCLUDED.snapshot_xmin,
    snapshot_xmax = EXCLUDED.snapshot_xmax,
    snapshot_xip = EXCLUDED.snapshot_xip,
    rebuild_from = NULL
"""

# delete-aggregations-from-date: cells are aligned on the period, so the date is
# rounded down to its cell's start; otherwise the kept cell holding that date would
# get its later raw rows merged a second time by the rebuild.
ALIGN_DATE = "SELECT date_trunc(:period, CAST(:date AS timestamp)) AS aligned"
# The cells DELETE_FROM_DATE would delete that a purge stamped: their purged raw rows
# cannot be re-read by the rebuild.
COUNT_PURGED_FROM_DATE = """
SELECT count(*) FROM aggregate
WHERE measure_name = :name AND start_date >= :aligned AND last_raw_measures_purged IS NOT NULL
"""
# Counts the stamped cells it deletes in the same statement: a purge batch that stamps
# a cell meanwhile is waited for and its stamp seen (READ COMMITTED re-reads the row).
DELETE_FROM_DATE = """
WITH gone AS (
    DELETE FROM aggregate WHERE measure_name = :name AND start_date >= :aligned
    RETURNING last_raw_measures_purged
), contributors_gone AS (
    -- The rebuild counts the cells' contributors again from their raw rows.
    DELETE FROM cell_contributor WHERE measure_name = :name AND start_date >= :aligned
)
SELECT count(*) AS deleted, count(last_raw_measures_purged) AS purged FROM gone
"""
# The next run re-reads every raw row from `aligned` on (an earlier pending rebuild
# date wins). Without a state row no run has happened: every row is new anyway.
SET_REBUILD = """
UPDATE aggregation_state
SET rebuild_from = LEAST(coalesce(rebuild_from, :aligned), :aligned)
WHERE measure_name = :name
"""

# compute-wildcard-aggregate: the level's rows are deleted first (same transaction,
# under the measure's lock), then recomputed from the raw rows ingested in [from, to):
# afterwards the level holds exactly that window, no cell of an earlier computation
# outside it. A starred group is {key: "*"}; a group not starred is anything else
# (NULL included, and any group when the definition has no key for it).
DELETE_WILDCARD_LEVEL = """
WITH gone AS (
    DELETE FROM aggregate a
    WHERE a.measure_name = :name
      AND {level}
    RETURNING a.last_raw_measures_purged
)
SELECT count(*) AS deleted, count(last_raw_measures_purged) AS purged FROM gone
"""
# The window's cells, counted directly: contributors as distinct hashes plus the rows
# without one. A windowed level is never merged into afterwards (declared levels are
# refused), so it keeps no cell_contributor rows.
WILDCARD = (
    """
WITH cells AS (
    SELECT """
    + CELL_STATS
    + """,
           count(DISTINCT r.contributor) AS named,
           {percentiles} AS p
    FROM ({cell_rows}) r
    GROUP BY 1, 2, 3, 4, 5
)
INSERT INTO aggregate AS a """
    + CELL_COLUMNS
    + """
SELECT :name, c.start_date, c.created_by, c.group1, c.group2, c.group3,
       c.n, c.n_not_zero, c.s, c.ss, c.lo, c.hi, c.s / c.n, {std},
       c.p[2], c.p[1], c.p[3], now(),
       c.anonymous + c.named, c.hi, c.hi2, NULL
FROM cells c
RETURNING a.start_date
"""
)
WILDCARD_NO_PERCENTILES = "CAST(NULL AS float8[])"


def level_groups(starred: frozenset[str]) -> dict[str, str]:
    """Group expressions of a level: a starred group becomes its {key: "*"} parameter."""
    return {g: f"CAST(:star_{g} AS jsonb)" if g in starred else f"r.{g}" for g in GROUPS}


def new_rows(*, rebuild: bool) -> str:
    return f"r.measure_name = :name\n      AND {_is_new(rebuild=rebuild)}"


def _is_new(*, rebuild: bool) -> str:
    """Whether raw row `r` of the measure is new to this run."""
    return f"({NOT_SEEN}{REBUILD if rebuild else ''})"


def merge(
    starred: frozenset[str],
    *,
    rebuild: bool,
    quartiles: bool,
    all_new: bool = False,
    keyed: frozenset[str] = frozenset(GROUPS),
    top2: bool = False,
) -> str:
    """The MERGE of one level. `top2`: keep each cell's second largest value (the
    definition has a dominance rule). `all_new`: the measure has no cell yet, so a
    wildcard level's quartiles come from the new rows alone, in the GROUP BY (plain
    cells take theirs from the values they gather either way). `keyed`: the
    groups the definition has a key for (they decide how a wildcard level's quartiles
    are read, not what they are)."""
    n, s, ss = (
        "(a.count + EXCLUDED.count)",
        "(a.sum + EXCLUDED.sum)",
        "(a.sum_squares + EXCLUDED.sum_squares)",
    )
    quartile_parts = {
        "quartiles": NO_QUARTILES,
        "state": NO_STATE,
        "quartiles_from": "",
        "fresh_percentiles": "",
        "touched": "",
        "quartiles_merged": QUARTILES_EXCLUDED,
    }
    if quartiles and not starred:
        first, median, third = quartiles_of("q.v")
        values_from_rows = VALUES_FROM_ROWS.format(same_raw_cell=_same_groups("r", "EXCLUDED"))
        quartile_parts.update(
            quartiles=f"{median}, {first}, {third}",
            state="q.v",
            fresh_percentiles=NEW_CELL_VALUES,
            quartiles_from=SORTED_NEW_VALUES,
            quartiles_merged=STORED_CELL_STATE.format(
                quartiles=", ".join(quartiles_of("m.v")), values_from_rows=values_from_rows
            ),
        )
    elif quartiles and all_new:
        quartile_parts.update(
            quartiles=FRESH_QUARTILES, fresh_percentiles=f",\n           {PERCENTILES} AS p"
        )
    elif quartiles and keyed <= starred:
        unstarred = [f"r.{g} IS NOT DISTINCT FROM f.{g}" for g in GROUPS if g not in starred]
        quartile_parts.update(
            quartiles=QUARTILES,
            quartiles_from=QUARTILES_FROM_PERIOD.format(groups=" AND ".join(unstarred) or "TRUE"),
        )
    elif quartiles:
        quartile_parts.update(
            quartiles=QUARTILES,
            touched=TOUCHED_WILDCARD.format(**level_groups(starred), is_new=_is_new(rebuild=rebuild)),
            quartiles_from=QUARTILES_FROM_TOUCHED.format(
                same_touched_cell=_same_groups("q", "f", coalesced=True)
            ),
        )
    groups = level_groups(starred)
    rows = new_rows(rebuild=rebuild)
    plain_rows = CELL_ROWS.format(**groups, rows=rows)
    return MERGE.format(
        cell_rows=RANKED.format(cell_rows=plain_rows) if top2 else plain_rows,
        # Its own read of the new rows (the same index range as the merge's): nothing to
        # read back when no measure carries a contributor.
        contributor_rows=CELL_ROWS.format(**groups, rows=f"{rows}\n      AND r.contributor IS NOT NULL"),
        hi2=HI2_RANKED if top2 else HI2_NONE,
        second_merged=SECOND_MERGED if top2 else "NULL",
        std_new=STD.format(n="f.n", s="f.s", ss="f.ss"),
        std_merged=STD.format(n=n, s=s, ss=ss),
        **quartile_parts,
    )


def _same_groups(left: str, right: str, *, coalesced: bool = False) -> str:
    """`left` and `right` have the same three groups, NULL equal to NULL. `coalesced`
    adds equalities on coalesce(group, 'null') that a hash join can use (IS NOT DISTINCT
    FROM is not hashable); the IS NOT DISTINCT FROM conditions keep the match exact."""
    same = [f"{left}.{g} IS NOT DISTINCT FROM {right}.{g}" for g in GROUPS]
    if coalesced:
        same = [f"coalesce({left}.{g}, 'null') = coalesce({right}.{g}, 'null')" for g in GROUPS] + same
    return "\n          AND ".join(same)


def refuse(levels: list[frozenset[str]], *, rebuild: bool) -> str:
    exists = []
    for starred in levels:
        groups = " AND ".join(
            f"a.{g} = CAST(:star_{g} AS jsonb)" if g in starred else f"a.{g} IS NOT DISTINCT FROM r.{g}"
            for g in GROUPS
        )
        exists.append(PURGED_CELL.format(groups=groups))
    return REFUSE.format(new_rows=new_rows(rebuild=rebuild), purged="\n        OR ".join(exists))


def wildcard_level(starred: frozenset[str]) -> str:
    """The condition on aggregate `a` that selects exactly the rows of one wildcard level."""
    return "\n      AND ".join(
        (
            f"a.{g} = CAST(:star_{g} AS jsonb)"
            if g in starred
            else f"coalesce(a.{g} <> CAST(:star_{g} AS jsonb), TRUE)"
        )
        for g in GROUPS
    )


def wildcard(starred: frozenset[str], *, quartiles: bool, top2: bool = False) -> str:
    groups = level_groups(starred)
    rows = "r.measure_name = :name\n      AND r.last_updated >= :from_ts AND r.last_updated < :to_ts"
    plain_rows = CELL_ROWS.format(**groups, rows=rows)
    return WILDCARD.format(
        cell_rows=RANKED.format(cell_rows=plain_rows) if top2 else plain_rows,
        hi2=HI2_RANKED if top2 else HI2_NONE,
        percentiles=PERCENTILES if quartiles else WILDCARD_NO_PERCENTILES,
        std=STD.format(n="c.n", s="c.s", ss="c.ss"),
    )


HAS_CELLS = """
SELECT EXISTS (SELECT 1 FROM aggregate WHERE measure_name = :name) AS any_cell,
       EXISTS (SELECT 1 FROM aggregate
               WHERE measure_name = :name AND last_raw_measures_purged IS NOT NULL) AS any_purged
"""
"""Read under the measure's lock: no other run or rebuild adds or removes its cells. A
purge that stamps a cell after this run's snapshot is not seen by REFUSE either."""

READ_DEFINITION_VERSION = """
SELECT updated_at FROM measure_definition WHERE name = :name
"""
"""Read inside the run's snapshot: a plan made from an older version is redone."""
