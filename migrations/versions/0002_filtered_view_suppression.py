"""filtered view: secondary suppression, served JSON and read order

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 19:56:09

The view now selects only the rows dacc.privacy publishes: primary suppression (count
below the threshold) and secondary suppression (a wildcard row whose unpublished parts
at some level hold 1..k-1 contributions), decided level by level in one statement. It
also stores each row's served JSON (`body`) and its order within a date (`sort_key`),
so that /aggregate concatenates stored text.
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# A frozen copy of dacc.filtered_view.FILTERED_VIEW_QUERY at this revision (which builds
# it from dacc.privacy and dacc.restitution); later migrations replace the view.
FILTERED_VIEW_QUERY = """
SELECT a.id, a.measure_name, a.start_date, a.created_by, a.group1, a.group2, a.group3,
       a.count, a.count_not_zero, a.sum, a.min, a.max, a.avg, a.std,
       a.median, a.first_quartile, a.third_quartile, a.last_updated,
       json_strip_nulls(json_build_object(
    'measureName', a.measure_name,
    'startDate', to_char(a.start_date, 'YYYY-MM-DD"T"HH24:MI:SS'),
    'createdBy', a.created_by,
    'group1', a.group1, 'group2', a.group2, 'group3', a.group3,
    'count', a.count, 'countNotZero', a.count_not_zero,
    'sum', round(a.sum, 2), 'min', a.min, 'max', a.max,
    'avg', round(a.avg::numeric, 2), 'std', round(a.std::numeric, 2),
    'median', round(a.median::numeric, 2),
    'firstQuartile', round(a.first_quartile::numeric, 2),
    'thirdQuartile', round(a.third_quartile::numeric, 2)
))::text AS body,
       concat_ws(' ', a.group1, a.group2, a.group3, a.created_by) COLLATE "C" AS sort_key
FROM aggregate a
WHERE a.id IN (
WITH cell AS MATERIALIZED (
    -- Every aggregate row with its threshold k, its wildcard mask and its number of
    -- stars. Absent groups become JSON null, so that plain equality compares them.
    SELECT *, ((mask >> 0) & 1) + ((mask >> 1) & 1) + ((mask >> 2) & 1) AS stars
    FROM (
        SELECT a.id, a.measure_name, a.start_date, a.created_by, a.count,
               d.aggregation_threshold AS k,
               coalesce(a.group1, 'null'::jsonb) AS g1,
               coalesce(a.group2, 'null'::jsonb) AS g2,
               coalesce(a.group3, 'null'::jsonb) AS g3,
               CASE WHEN a.group1 @? '$.* ? (@ == "*")' THEN 1 ELSE 0 END
             + CASE WHEN a.group2 @? '$.* ? (@ == "*")' THEN 2 ELSE 0 END
             + CASE WHEN a.group3 @? '$.* ? (@ == "*")' THEN 4 ELSE 0 END AS mask
        FROM aggregate a
        JOIN measure_definition d ON d.name = a.measure_name
    ) masked
),
present AS MATERIALIZED (
    -- {measure: bitmap of the masks it has rows for}: one lookup per row, no join.
    SELECT jsonb_object_agg(measure_name, bits) AS bits
    FROM (
        SELECT measure_name, bit_or(1 << mask) AS bits FROM cell WHERE mask > 0 GROUP BY 1
    ) per_measure
),
level0 AS MATERIALIZED (
    SELECT id, measure_name, start_date, created_by, count, k, g1, g2, g3, mask, count >= k AS published FROM cell WHERE stars = 0
),
parts1 AS MATERIALIZED (
    -- Every lower row, once per mask of this level that covers its own mask (among the
    -- masks its measure has rows for), summed per cell of that mask and per part level:
    -- hidden = contributions in its unpublished parts, shown = in its published ones.
    SELECT p.measure_name, p.start_date, p.created_by, m.mask, CASE WHEN m.mask & 1 = 0 THEN p.g1 ELSE 'true'::jsonb END AS p1, CASE WHEN m.mask & 2 = 0 THEN p.g2 ELSE 'true'::jsonb END AS p2, CASE WHEN m.mask & 4 = 0 THEN p.g3 ELSE 'true'::jsonb END AS p3,
           p.mask AS part_mask, max(p.k) AS k,
           coalesce(sum(p.count) FILTER (WHERE NOT p.published), 0) AS hidden,
           coalesce(sum(p.count) FILTER (WHERE p.published), 0) AS shown
    FROM (SELECT * FROM level0) p
    CROSS JOIN (VALUES (1), (2), (4)) m (mask)
    WHERE m.mask & p.mask = p.mask
      AND ((SELECT bits FROM present) ->> p.measure_name)::int & (1 << m.mask) <> 0
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
),
judged1 AS MATERIALIZED (
    -- The rows of this level beside their part levels, in one window per cell (no join,
    -- so no plan depends on estimates). total = the row's count, on every part level.
    SELECT *, bool_or(hidden BETWEEN 1 AND k - 1 OR total - shown BETWEEN 1 AND k - 1)
                  OVER (PARTITION BY measure_name, start_date, created_by, mask, p1, p2, p3) AS blocked
    FROM (
        SELECT *, max(count) OVER (PARTITION BY measure_name, start_date, created_by, mask, p1, p2, p3) AS total
        FROM (
            SELECT id, measure_name, start_date, created_by, count, k, g1, g2, g3, mask, CASE WHEN c.mask & 1 = 0 THEN c.g1 ELSE 'true'::jsonb END AS p1, CASE WHEN c.mask & 2 = 0 THEN c.g2 ELSE 'true'::jsonb END AS p2, CASE WHEN c.mask & 4 = 0 THEN c.g3 ELSE 'true'::jsonb END AS p3,
                   NULL::numeric AS hidden, NULL::numeric AS shown
            FROM cell c
            WHERE c.stars = 1
            UNION ALL
            SELECT NULL, measure_name, start_date, created_by, NULL, k, NULL, NULL, NULL, mask,
                   p1, p2, p3, hidden, shown
            FROM parts1
        ) side_by_side
    ) with_total
),
level1 AS MATERIALIZED (
    SELECT id, measure_name, start_date, created_by, count, k, g1, g2, g3, mask, count >= k AND NOT coalesce(blocked, false) AS published
    FROM judged1
    WHERE id IS NOT NULL
),
parts2 AS MATERIALIZED (
    -- Every lower row, once per mask of this level that covers its own mask (among the
    -- masks its measure has rows for), summed per cell of that mask and per part level:
    -- hidden = contributions in its unpublished parts, shown = in its published ones.
    SELECT p.measure_name, p.start_date, p.created_by, m.mask, CASE WHEN m.mask & 1 = 0 THEN p.g1 ELSE 'true'::jsonb END AS p1, CASE WHEN m.mask & 2 = 0 THEN p.g2 ELSE 'true'::jsonb END AS p2, CASE WHEN m.mask & 4 = 0 THEN p.g3 ELSE 'true'::jsonb END AS p3,
           p.mask AS part_mask, max(p.k) AS k,
           coalesce(sum(p.count) FILTER (WHERE NOT p.published), 0) AS hidden,
           coalesce(sum(p.count) FILTER (WHERE p.published), 0) AS shown
    FROM (SELECT * FROM level0 UNION ALL SELECT * FROM level1) p
    CROSS JOIN (VALUES (3), (5), (6)) m (mask)
    WHERE m.mask & p.mask = p.mask
      AND ((SELECT bits FROM present) ->> p.measure_name)::int & (1 << m.mask) <> 0
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
),
judged2 AS MATERIALIZED (
    -- The rows of this level beside their part levels, in one window per cell (no join,
    -- so no plan depends on estimates). total = the row's count, on every part level.
    SELECT *, bool_or(hidden BETWEEN 1 AND k - 1 OR total - shown BETWEEN 1 AND k - 1)
                  OVER (PARTITION BY measure_name, start_date, created_by, mask, p1, p2, p3) AS blocked
    FROM (
        SELECT *, max(count) OVER (PARTITION BY measure_name, start_date, created_by, mask, p1, p2, p3) AS total
        FROM (
            SELECT id, measure_name, start_date, created_by, count, k, g1, g2, g3, mask, CASE WHEN c.mask & 1 = 0 THEN c.g1 ELSE 'true'::jsonb END AS p1, CASE WHEN c.mask & 2 = 0 THEN c.g2 ELSE 'true'::jsonb END AS p2, CASE WHEN c.mask & 4 = 0 THEN c.g3 ELSE 'true'::jsonb END AS p3,
                   NULL::numeric AS hidden, NULL::numeric AS shown
            FROM cell c
            WHERE c.stars = 2
            UNION ALL
            SELECT NULL, measure_name, start_date, created_by, NULL, k, NULL, NULL, NULL, mask,
                   p1, p2, p3, hidden, shown
            FROM parts2
        ) side_by_side
    ) with_total
),
level2 AS MATERIALIZED (
    SELECT id, measure_name, start_date, created_by, count, k, g1, g2, g3, mask, count >= k AND NOT coalesce(blocked, false) AS published
    FROM judged2
    WHERE id IS NOT NULL
),
parts3 AS MATERIALIZED (
    -- Every lower row, once per mask of this level that covers its own mask (among the
    -- masks its measure has rows for), summed per cell of that mask and per part level:
    -- hidden = contributions in its unpublished parts, shown = in its published ones.
    SELECT p.measure_name, p.start_date, p.created_by, m.mask, CASE WHEN m.mask & 1 = 0 THEN p.g1 ELSE 'true'::jsonb END AS p1, CASE WHEN m.mask & 2 = 0 THEN p.g2 ELSE 'true'::jsonb END AS p2, CASE WHEN m.mask & 4 = 0 THEN p.g3 ELSE 'true'::jsonb END AS p3,
           p.mask AS part_mask, max(p.k) AS k,
           coalesce(sum(p.count) FILTER (WHERE NOT p.published), 0) AS hidden,
           coalesce(sum(p.count) FILTER (WHERE p.published), 0) AS shown
    FROM (SELECT * FROM level0 UNION ALL SELECT * FROM level1 UNION ALL SELECT * FROM level2) p
    CROSS JOIN (VALUES (7)) m (mask)
    WHERE m.mask & p.mask = p.mask
      AND ((SELECT bits FROM present) ->> p.measure_name)::int & (1 << m.mask) <> 0
    GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
),
judged3 AS MATERIALIZED (
    -- The rows of this level beside their part levels, in one window per cell (no join,
    -- so no plan depends on estimates). total = the row's count, on every part level.
    SELECT *, bool_or(hidden BETWEEN 1 AND k - 1 OR total - shown BETWEEN 1 AND k - 1)
                  OVER (PARTITION BY measure_name, start_date, created_by, mask, p1, p2, p3) AS blocked
    FROM (
        SELECT *, max(count) OVER (PARTITION BY measure_name, start_date, created_by, mask, p1, p2, p3) AS total
        FROM (
            SELECT id, measure_name, start_date, created_by, count, k, g1, g2, g3, mask, CASE WHEN c.mask & 1 = 0 THEN c.g1 ELSE 'true'::jsonb END AS p1, CASE WHEN c.mask & 2 = 0 THEN c.g2 ELSE 'true'::jsonb END AS p2, CASE WHEN c.mask & 4 = 0 THEN c.g3 ELSE 'true'::jsonb END AS p3,
                   NULL::numeric AS hidden, NULL::numeric AS shown
            FROM cell c
            WHERE c.stars = 3
            UNION ALL
            SELECT NULL, measure_name, start_date, created_by, NULL, k, NULL, NULL, NULL, mask,
                   p1, p2, p3, hidden, shown
            FROM parts3
        ) side_by_side
    ) with_total
),
level3 AS MATERIALIZED (
    SELECT id, measure_name, start_date, created_by, count, k, g1, g2, g3, mask, count >= k AND NOT coalesce(blocked, false) AS published
    FROM judged3
    WHERE id IS NOT NULL
)
SELECT id FROM level0 WHERE published
UNION ALL SELECT id FROM level1 WHERE published
UNION ALL SELECT id FROM level2 WHERE published
UNION ALL SELECT id FROM level3 WHERE published
)
ORDER BY a.measure_name, a.start_date, sort_key
"""

# The view of revision 0001: primary suppression only.
PREVIOUS_VIEW_QUERY = """
SELECT a.id, a.measure_name, a.start_date, a.created_by, a.group1, a.group2, a.group3,
       a.count, a.count_not_zero, a.sum, a.min, a.max, a.avg, a.std,
       a.median, a.first_quartile, a.third_quartile, a.last_updated
FROM aggregate a
JOIN measure_definition d ON d.name = a.measure_name
WHERE a.count >= d.aggregation_threshold
"""


def upgrade():
    _replace_view(FILTERED_VIEW_QUERY)


def downgrade():
    _replace_view(PREVIOUS_VIEW_QUERY)


def _replace_view(query):
    # Drop and create in the migration's one transaction: readers wait on the lock and
    # then see the new view. Same index names as before, so the app's upkeep
    # (dacc.filtered_view) keeps working; the unique index allows REFRESH CONCURRENTLY.
    op.execute("DROP MATERIALIZED VIEW IF EXISTS filtered_aggregation")
    op.execute("CREATE MATERIALIZED VIEW filtered_aggregation AS " + query)
    op.execute("CREATE UNIQUE INDEX uq_filtered_aggregation_id ON filtered_aggregation (id)")
    op.execute(
        "CREATE INDEX ix_filtered_aggregation_name_start_date"
        " ON filtered_aggregation (measure_name, start_date)"
    )
