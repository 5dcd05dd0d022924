"""redemptions remember how much stock they took

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

A failed or refunded redemption gives back exactly the stock it took: an item
switched between unlimited and counted stock while a redemption was open must
not gain stock that was never taken. NULL (rows written before this revision):
give back the quantity when the item counts stock, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("redemptions", sa.Column("stock_taken", sa.BigInteger(), nullable=True))
    op.create_check_constraint(
        "ck_redemptions_stock_taken", "redemptions", "stock_taken IS NULL OR stock_taken >= 0"
    )


def downgrade() -> None:
    op.drop_constraint("ck_redemptions_stock_taken", "redemptions", type_="check")
    op.drop_column("redemptions", "stock_taken")
