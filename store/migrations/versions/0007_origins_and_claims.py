"""Several agents on one store: documents name the machine they came from, and crawl
frontier rows carry the claim of the agent fetching them (expiring, so a dead agent's
claims pass to the others).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 13:00:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('origin', sa.String(length=255), nullable=True))
    with op.batch_alter_table('fetched_urls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('claim_expires', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('fetched_urls', schema=None) as batch_op:
        batch_op.drop_column('claim_expires')
        batch_op.drop_column('claimed_by')
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_column('origin')
