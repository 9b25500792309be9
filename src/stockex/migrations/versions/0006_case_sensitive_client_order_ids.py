"""orders: client_order_id compared with letter case on MySQL

The table's utf8mb4 collation (MySQL 8's utf8mb4_0900_ai_ci, MariaDB's utf8mb4_general_ci)
compares without case, so the unique key (user_id, client_order_id) took "ABC" for the "abc"
of an earlier order. Client order ids are case-sensitive (as on Binance): the column gets the
binary collation. SQLite already compares bytes; nothing changes there.

Rebuilds ``orders`` on MySQL (as any collation change of an indexed column does); plan for it
on a large table. The downgrade fails while one user has two ids differing only in case.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _set_collation(collation: str | None) -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    op.alter_column(
        "orders", "client_order_id",
        existing_type=sa.String(length=64),
        type_=mysql.VARCHAR(64, charset="utf8mb4", collation=collation),
        existing_nullable=True,
    )


def upgrade() -> None:
    _set_collation("utf8mb4_bin")


def downgrade() -> None:
    _set_collation(None)  # the table's default collation again
