"""One live version per uri: versions that a newer one replaced after they were (partly)
trained leave the live set (data only; the schema does not change).

Until now a new version superseded only pending rows, so rows were left that the current
code never writes (issue 14):
- a version skipped "superseded by document N before training" that the cycle running at
  the time trained anyway (it has trained bytes or a cycle) becomes deleted, "superseded by
  document N after training";
- an older version still learning or trained while a newer version of its uri is live
  becomes deleted, "superseded by document N after training" (N: the uri's live version,
  the one updated last), so it is neither learned on nor replayed.
Downgrading leaves the rows as they are: older code reads them as it reads its own.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 11:50:00.000000
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

LIVE = ("pending", "learning", "trained")


def upgrade() -> None:
    conn = op.get_bind()
    conn.execute(sa.text(
        "UPDATE documents SET status = 'deleted',"
        " reason = REPLACE(reason, ' before training', ' after training')"
        " WHERE status = 'skipped' AND sha256 IS NOT NULL"
        " AND (trained_bytes > 0 OR cycle_id IS NOT NULL)"))
    rows = conn.execute(sa.text(
        "SELECT id, uri, updated FROM documents WHERE sha256 IS NOT NULL"
        " AND status IN ('pending', 'learning', 'trained') ORDER BY uri, updated, id")).all()
    by_uri: dict[str, list[int]] = {}
    for doc_id, uri, _ in rows:
        by_uri.setdefault(uri, []).append(doc_id)
    retired = [{"i": doc_id, "why": f"superseded by document {ids[-1]} after training"}
               for ids in by_uri.values() if len(ids) > 1 for doc_id in ids[:-1]]
    if retired:
        conn.execute(sa.text("UPDATE documents SET status = 'deleted', reason = :why WHERE id = :i"),
                     retired)


def downgrade() -> None:
    pass
