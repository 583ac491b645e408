"""write grants, contributors and magnitude state

Revision ID: 0007_writers_contributors
Revises: 0006_quartile_cell_index
Create Date: 2026-12-01 23:00:00

- measure_definition: `writers` (orgs whose tokens may send the measure; existing
  definitions get ["*"], any token, so that a live deployment is not locked out),
  `extremes` (k2), `p_percent`, `max_contributions_per_cell`.
- api_token.app: a token bound to one createdBy.
- measure_key is scoped to the writer's org; existing ids go to the definition's org.
- raw and refused measures carry an optional keyed contributor hash.
- aggregate: `contributors` (existing cells: their count, as nobody sent contributors),
  `largest_value` (= max) and `second_largest_value` (kept only under a dominance
  rule, pPercent; setting one on stored cells rebuilds them).
- cell_contributor (merge) and contributor_quota (ingestion cap).
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = "0007_writers_contributors"
down_revision = "0006_quartile_cell_index"
branch_labels = None
depends_on = None

CELL_KEY = ["measure_name", "start_date", "created_by", "group1", "group2", "group3", "contributor"]


def _cell_table(name, *extra):
    op.create_table(
        name,
        sa.Column("measure_name", sa.String(length=200), nullable=False),
        sa.Column("start_date", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("group1", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("group2", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("group3", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("contributor", sa.LargeBinary(length=32), nullable=False),
        *extra,
    )
    op.create_index(op.f(f"uq_{name}"), name, CELL_KEY, unique=True, postgresql_nulls_not_distinct=True)


def upgrade():
    with op.batch_alter_table("measure_definition") as batch_op:
        batch_op.add_column(
            sa.Column(
                "writers",
                postgresql.JSONB(astext_type=sa.Text()),
                server_default=sa.text("'[\"*\"]'::jsonb"),
                nullable=False,
            )
        )
        batch_op.add_column(sa.Column("extremes", sa.String(length=4), server_default="k2", nullable=False))
        batch_op.add_column(sa.Column("p_percent", sa.Numeric(precision=5, scale=2), nullable=True))
        batch_op.add_column(sa.Column("max_contributions_per_cell", sa.Integer(), nullable=True))
        batch_op.create_check_constraint(
            op.f("ck_measure_definition_extremes"), "extremes IN ('hide', 'k2', 'show')"
        )
        batch_op.create_check_constraint(
            op.f("ck_measure_definition_p_percent"),
            "p_percent IS NULL OR (p_percent > 0 AND p_percent <= 100)",
        )
        batch_op.create_check_constraint(
            "max_contributions", "max_contributions_per_cell IS NULL OR max_contributions_per_cell >= 1"
        )

    op.add_column("api_token", sa.Column("app", sa.String(length=100), nullable=True))

    # Ids stored before were not scoped: give them to the definition's own org, the
    # likely writer ("" when the definition is gone).
    op.add_column("measure_key", sa.Column("org", sa.String(length=100), server_default="", nullable=False))
    op.execute("UPDATE measure_key k SET org = d.org FROM measure_definition d WHERE d.name = k.measure_name")
    op.drop_constraint("pk_measure_key", "measure_key", type_="primary")
    op.create_primary_key("pk_measure_key", "measure_key", ["measure_name", "org", "measure_id"])

    op.add_column("raw_measure", sa.Column("contributor", sa.LargeBinary(length=32), nullable=True))
    op.add_column("refused_raw_measure", sa.Column("contributor", sa.LargeBinary(length=32), nullable=True))

    op.add_column("aggregate", sa.Column("contributors", sa.BigInteger(), nullable=True))
    op.add_column("aggregate", sa.Column("largest_value", sa.Numeric(precision=16, scale=2), nullable=True))
    op.add_column(
        "aggregate", sa.Column("second_largest_value", sa.Numeric(precision=16, scale=2), nullable=True)
    )
    # No definition has a dominance rule yet: no cell keeps its second largest value.
    op.execute("UPDATE aggregate SET contributors = count, largest_value = max")
    op.alter_column("aggregate", "contributors", nullable=False)
    op.alter_column("aggregate", "largest_value", nullable=False)

    _cell_table("cell_contributor")
    op.create_foreign_key(
        op.f("fk_cell_contributor_measure_name_measure_definition"),
        "cell_contributor",
        "measure_definition",
        ["measure_name"],
        ["name"],
        onupdate="CASCADE",
        ondelete="CASCADE",
    )
    _cell_table("contributor_quota", sa.Column("contributions", sa.Integer(), nullable=False))


def downgrade():
    op.drop_table("contributor_quota")
    op.drop_table("cell_contributor")
    op.drop_column("aggregate", "second_largest_value")
    op.drop_column("aggregate", "largest_value")
    op.drop_column("aggregate", "contributors")
    op.drop_column("refused_raw_measure", "contributor")
    op.drop_column("raw_measure", "contributor")
    # The same id under several orgs: keep one, the unscoped key allows only one.
    op.execute(
        "DELETE FROM measure_key a USING measure_key b WHERE a.measure_name = b.measure_name"
        " AND a.measure_id = b.measure_id AND a.org > b.org"
    )
    op.drop_constraint("pk_measure_key", "measure_key", type_="primary")
    op.create_primary_key("pk_measure_key", "measure_key", ["measure_name", "measure_id"])
    op.drop_column("measure_key", "org")
    op.drop_column("api_token", "app")
    with op.batch_alter_table("measure_definition") as batch_op:
        batch_op.drop_constraint(op.f("ck_measure_definition_max_contributions"), type_="check")
        batch_op.drop_constraint(op.f("ck_measure_definition_p_percent"), type_="check")
        batch_op.drop_constraint(op.f("ck_measure_definition_extremes"), type_="check")
        batch_op.drop_column("max_contributions_per_cell")
        batch_op.drop_column("p_percent")
        batch_op.drop_column("extremes")
        batch_op.drop_column("writers")
