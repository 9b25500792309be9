"""crawl_runs: local-time (configured timezone) copies of the run's instants

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-21 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None

_COLUMNS = ("started_at_local", "finished_at_local", "window_from_local", "window_to_local")


def upgrade() -> None:
    with op.batch_alter_table("crawl_runs", schema=None) as batch_op:
        for name in _COLUMNS:
            batch_op.add_column(sa.Column(name, sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("crawl_runs", schema=None) as batch_op:
        for name in reversed(_COLUMNS):
            batch_op.drop_column(name)
