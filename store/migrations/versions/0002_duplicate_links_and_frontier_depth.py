"""Real columns for what reasons used to carry: documents.duplicate_of_id (a refused
duplicate names the row that holds its content) and fetched_urls.depth (the frontier's
link depth).

Existing rows are backfilled from the reasons the code wrote until now:
- a skipped row without content whose reason is "duplicate content of <uri>" links to the
  newest content row at <uri> (the one live there when the duplicate was recorded);
- a fetched_urls row whose reason is "found at depth <n>" gets depth n.
The reasons stay as they were (they are what `cllm history` shows).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:00:00.000000
"""
import re
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

DUPLICATE_PREFIX = "duplicate content of "
DEPTH_REASON = re.compile(r"found at depth (\d+)")  # what agent/crawler.py matched


def upgrade() -> None:
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('duplicate_of_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_documents_duplicate_of_id'), ['duplicate_of_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_documents_duplicate_of_id_documents'), 'documents',
                                    ['duplicate_of_id'], ['id'], ondelete='SET NULL')
    with op.batch_alter_table('fetched_urls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('depth', sa.Integer(), nullable=True))

    conn = op.get_bind()
    conn.execute(sa.text(
        "UPDATE documents SET duplicate_of_id = ("
        " SELECT max(o.id) FROM documents o"
        " WHERE o.sha256 IS NOT NULL AND o.uri = substr(documents.reason, :start))"
        " WHERE status = 'skipped' AND sha256 IS NULL AND reason LIKE :pattern"),
        {"start": len(DUPLICATE_PREFIX) + 1, "pattern": DUPLICATE_PREFIX + "%"})
    found = conn.execute(sa.text(
        "SELECT id, reason FROM fetched_urls WHERE reason LIKE 'found at depth %'")).all()
    depths = [{"i": i, "d": int(m.group(1))} for i, reason in found
              if (m := DEPTH_REASON.match(reason))]
    if depths:
        conn.execute(sa.text("UPDATE fetched_urls SET depth = :d WHERE id = :i"), depths)


def downgrade() -> None:
    with op.batch_alter_table('fetched_urls', schema=None) as batch_op:
        batch_op.drop_column('depth')
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_documents_duplicate_of_id_documents'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_documents_duplicate_of_id'))
        batch_op.drop_column('duplicate_of_id')
