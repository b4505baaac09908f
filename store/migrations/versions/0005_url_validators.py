"""fetched_urls.etag and fetched_urls.last_modified: the validators a page was served with,
so a re-crawl asks conditionally (If-None-Match / If-Modified-Since) and a 304 costs nothing.
Existing rows have none: their first re-crawl is a plain GET.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:30:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('fetched_urls', schema=None) as batch_op:
        batch_op.add_column(sa.Column('etag', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('last_modified', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('fetched_urls', schema=None) as batch_op:
        batch_op.drop_column('last_modified')
        batch_op.drop_column('etag')
