"""publication ledger: room on each page for the next version (HOT updates)

Revision ID: 0011_publication_fillfactor
Revises: 0010_quota_cell_key
Create Date: 2026-12-02 01:45:00

Every publication rewrites the served row of each cell it re-publishes
(published_cell) and moves the ledger's count of each plain cell on
(publication_leaf). With pages kept half free, the new row version fits on its page
and no indexed column changes, so PostgreSQL updates it in place (a heap-only tuple):
no new entry in the wide unique index of the cell. Measured on a republication of
1,638 cells: about a fifth less database time. Pages written from now on follow the
setting; existing ones are repacked by a `VACUUM FULL` of the two tables, which an
operator may run when convenient (not here: it locks the table).
"""

from alembic import op

# revision identifiers, used by Alembic.
revision = "0011_publication_fillfactor"
down_revision = "0010_quota_cell_key"
branch_labels = None
depends_on = None

TABLES = ("published_cell", "publication_leaf")
"""Fixed identifiers: no input reaches these statements."""


def upgrade():
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} SET (fillfactor = 50)")


def downgrade():
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
