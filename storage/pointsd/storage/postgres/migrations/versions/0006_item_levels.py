"""catalog items: a minimum level, and streak freezes as a kind

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

An item may require a level of the tenant's rule set (min_level, a level id;
'' for anyone). A new item kind, 'streak_freeze', gives the redeeming user
streak freezes instead of a thing. Rows written before this revision get ''
and keep their kinds.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_KINDS_BEFORE = "kind IN ('virtual', 'physical', 'benefit', 'donation')"
_KINDS = "kind IN ('virtual', 'physical', 'benefit', 'donation', 'streak_freeze')"


def upgrade() -> None:
    op.add_column(
        "catalog_items",
        sa.Column("min_level", sa.Text(), nullable=False, server_default=""),
    )
    op.drop_constraint("ck_catalog_items_kind", "catalog_items", type_="check")
    op.create_check_constraint("ck_catalog_items_kind", "catalog_items", _KINDS)


def downgrade() -> None:
    op.drop_constraint("ck_catalog_items_kind", "catalog_items", type_="check")
    # NOT VALID: streak-freeze items already created stay readable.
    op.execute(
        f"ALTER TABLE catalog_items ADD CONSTRAINT ck_catalog_items_kind CHECK ({_KINDS_BEFORE}) "
        "NOT VALID"
    )
    op.drop_column("catalog_items", "min_level")
