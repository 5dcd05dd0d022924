"""reward catalog and redemptions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_items",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("item_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("stock", sa.BigInteger(), nullable=True),
        sa.Column("per_user_limit", sa.Integer(), nullable=True),
        sa.Column("limit_period", sa.Text(), nullable=True),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("tenant_id", "item_id", name="pk_catalog_items"),
        sa.CheckConstraint(
            "kind IN ('virtual', 'physical', 'benefit', 'donation')", name="ck_catalog_items_kind"
        ),
        sa.CheckConstraint("cost > 0", name="ck_catalog_items_cost_positive"),
        sa.CheckConstraint(
            "stock IS NULL OR stock >= 0", name="ck_catalog_items_stock_not_negative"
        ),
        sa.CheckConstraint(
            "(per_user_limit IS NULL AND limit_period IS NULL) OR (per_user_limit > 0 AND "
            "limit_period IN ('day', 'week', 'month', 'ever'))",
            name="ck_catalog_items_limit",
        ),
    )
    op.create_table(
        "redemptions",
        sa.Column("redemption_id", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("item_id", sa.Text(), nullable=False),
        sa.Column("item_name", sa.Text(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), server_default="", nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=True),
        sa.Column("limit_period_key", sa.Text(), nullable=True),
        sa.Column("refund_reason", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("redemption_id", name="pk_redemptions"),
        sa.UniqueConstraint("tenant_id", "request_id", name="uq_redemptions_tenant_id_request_id"),
        sa.CheckConstraint("quantity > 0", name="ck_redemptions_quantity_positive"),
        sa.CheckConstraint("points > 0", name="ck_redemptions_points_positive"),
        sa.CheckConstraint(
            "status IN ('pending', 'completed', 'failed', 'refunding', 'refunded')",
            name="ck_redemptions_status",
        ),
    )
    op.create_index(
        "ix_redemptions_user", "redemptions", ["tenant_id", "user_id", sa.text("created_at DESC")]
    )
    op.create_index(
        "ix_redemptions_item", "redemptions", ["tenant_id", "item_id", sa.text("created_at DESC")]
    )
    op.create_index(
        "ix_redemptions_limit",
        "redemptions",
        ["tenant_id", "item_id", "user_id", "limit_period_key"],
        postgresql_where=sa.text("status IN ('pending', 'completed', 'refunding')"),
    )
    op.create_index(
        "ix_redemptions_unfinished",
        "redemptions",
        ["updated_at"],
        postgresql_where=sa.text("status IN ('pending', 'refunding')"),
    )


def downgrade() -> None:
    op.drop_table("redemptions")
    op.drop_table("catalog_items")
