"""What may be served: who may read a measure, and which aggregate rows are published.

This module is the one place that decides it. The materialized view
filtered_aggregation (dacc/filtered_view.py) selects the rows of PUBLISHABLE_AGGREGATES,
and /aggregate reads only that view, so a suppressed row cannot be served.

Suppression (invariant 3, statistical disclosure control):
- primary: a row is published only if its count reaches the measure's
  aggregation_threshold k;
- secondary: a wildcard row W (some groups {key: "*"}) is the sum of its parts at each
  lower level: for every set S' of its starred groups left starred (fewer stars),
  the rows of the same measure, start_date and created_by, equal to W on its concrete
  groups, starred on S' and concrete on the rest. If the unpublished parts of one such
  level hold c contributions with 0 < c < k, W minus its published parts would be an
  aggregate of c < k contributions: W is not published. The same when W's count minus
  its published parts' counts is in [1, k-1] (parts computed over other raw rows).

A row's status depends only on rows with fewer stars, so deciding the levels in order
(0, 1, 2 then 3 stars) reaches the fixpoint of "repeat until nothing changes" in one
statement. created_by is part of every cell and never wildcarded: filtering on it
selects rows and cannot change what is suppressed.
"""

from __future__ import annotations

from dacc.tokens import TokenIdentity

GROUP_COUNT = 3
MASKS = tuple(range(1, 1 << GROUP_COUNT))
"""Wildcard masks: bit 1, 2, 4 set when group1, group2, group3 is {key: "*"}."""
WILDCARD_TEST = """@? '$.* ? (@ == "*")'"""
"""jsonpath test on a group column: true when it holds a "*" value ({key: "*"})."""
COLUMNS = "id, measure_name, start_date, created_by, count, k, g1, g2, g3, mask"
CELL_OF_MASK = "PARTITION BY measure_name, start_date, created_by, mask, p1, p2, p3"


def _projected(mask: str, alias: str) -> str:
    """Groups of row `alias` seen from a wildcard mask: a starred group becomes `true`."""
    return ", ".join(
        f"CASE WHEN {mask} & {1 << (i - 1)} = 0 THEN {alias}.g{i} ELSE 'true'::jsonb END AS p{i}"
        for i in range(1, GROUP_COUNT + 1)
    )


def _level(stars: int) -> str:
    """CTEs deciding the rows with `stars` wildcard groups, from the levels below."""
    lower = " UNION ALL ".join(f"SELECT * FROM level{n}" for n in range(stars))
    masks = ", ".join(f"({m})" for m in MASKS if m.bit_count() == stars)
    return f"""parts{stars} AS MATERIALIZED (
    -- Every lower row, once per mask of this level that covers its own mask (among the
    -- masks its measure has rows for), summed per cell of that mask and per part level:
    -- hidden = contributions in its unpublished parts, shown = in its published ones.
    SELECT p.measure_name, p.start_date, p.created_by, m.mask, {_projected("m.mask", "p")},
           p.mask AS part_mask, max(p.k) AS k,
           coalesce(sum(p.count) FILTER (WHERE NOT p.published), 0) AS hidden,
           coalesce(sum(p.count) FILTER (WHERE p.published), 0) AS shown
    FROM ({lower}) p
    CROSS JOIN (VALUES {masks}) m (mask)
    WHERE m.mask & p.mask = p.mask
      AND ((SELECT bits FROM present) ->> p.measure_name)::int & (1 << m.mask) <> 0
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
),
judged{stars} AS MATERIALIZED (
    -- The rows of this level beside their part levels, in one window per cell (no join,
    -- so no plan depends on estimates). total = the row's count, on every part level.
    SELECT *, bool_or(hidden BETWEEN 1 AND k - 1 OR total - shown BETWEEN 1 AND k - 1)
                  OVER (CELL_OF_MASK) AS blocked
    FROM (
        SELECT *, max(count) OVER (CELL_OF_MASK) AS total
        FROM (
            SELECT {COLUMNS}, {_projected("c.mask", "c")},
                   NULL::numeric AS hidden, NULL::numeric AS shown
            FROM cell c
            WHERE c.stars = {stars}
            UNION ALL
            SELECT NULL, measure_name, start_date, created_by, NULL, k, NULL, NULL, NULL, mask,
                   p1, p2, p3, hidden, shown
            FROM parts{stars}
        ) side_by_side
    ) with_total
),
level{stars} AS MATERIALIZED (
    SELECT {COLUMNS}, count >= k AND NOT coalesce(blocked, false) AS published
    FROM judged{stars}
    WHERE id IS NOT NULL
)""".replace("CELL_OF_MASK", CELL_OF_MASK)


def _publishable_sql() -> str:
    mask = "\n             + ".join(
        f"CASE WHEN a.group{i} {WILDCARD_TEST} THEN {1 << (i - 1)} ELSE 0 END"
        for i in range(1, GROUP_COUNT + 1)
    )
    stars = " + ".join(f"((mask >> {i - 1}) & 1)" for i in range(1, GROUP_COUNT + 1))
    levels = ",\n".join(_level(n) for n in range(1, GROUP_COUNT + 1))
    published = "\nUNION ALL ".join(
        f"SELECT id FROM level{n} WHERE published" for n in range(GROUP_COUNT + 1)
    )
    return f"""WITH cell AS MATERIALIZED (
    -- Every aggregate row with its threshold k, its wildcard mask and its number of
    -- stars. Absent groups become JSON null, so that plain equality compares them.
    SELECT *, {stars} AS stars
    FROM (
        SELECT a.id, a.measure_name, a.start_date, a.created_by, a.count,
               d.aggregation_threshold AS k,
               coalesce(a.group1, 'null'::jsonb) AS g1,
               coalesce(a.group2, 'null'::jsonb) AS g2,
               coalesce(a.group3, 'null'::jsonb) AS g3,
               {mask} AS mask
        FROM aggregate a
        JOIN measure_definition d ON d.name = a.measure_name
    ) masked
),
present AS MATERIALIZED (
    -- {{measure: bitmap of the masks it has rows for}}: one lookup per row, no join.
    SELECT jsonb_object_agg(measure_name, bits) AS bits
    FROM (
        SELECT measure_name, bit_or(1 << mask) AS bits FROM cell WHERE mask > 0 GROUP BY 1
    ) per_measure
),
level0 AS MATERIALIZED (
    SELECT {COLUMNS}, count >= k AS published FROM cell WHERE stars = 0
),
{levels}
{published}"""


PUBLISHABLE_AGGREGATES = _publishable_sql()
"""SQL query: `id` of every aggregate row that may be served (primary and secondary
suppression). Fixed text, no parameters; migrations embed a frozen copy."""


def may_read_results(
    *, owner_org: str, access_public: bool, access_app: bool, token: TokenIdentity
) -> bool:
    """Whether `token` may read a measure's published results.

    The owner org may; anyone may when the definition is public; with accessApp, the
    tokens that may send its measures (measure:write) may, being the producing app's
    channel.
    """
    if token.org == owner_org or access_public:
        return True
    return access_app and "measure:write" in token.scopes
