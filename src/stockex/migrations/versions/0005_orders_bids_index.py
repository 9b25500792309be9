"""orders: an index that reads the bids best first (price descending, oldest first)

``ix_orders_book`` (market_id, side, status, price, id) gives the asks in book order, but the
bids (price descending, id ascending within a price) had to be sorted: every sell placement
sorted all the bids it could cross while holding the market's lock.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 23:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index(
            "ix_orders_bids",
            ["market_id", "side", "status", sa.text("price DESC"), "id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_bids")
