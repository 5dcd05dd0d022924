"""api tokens: callers, roles and tenant scopes

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

One row per API token (issue 12): a public token_id (part of the token), the
caller it stands for (name, roles, tenants; NULL tenants = every tenant) and
a self-describing scrypt hash of the secret (`scrypt$n$r$p$salt$hash`), never
the secret. Rows are never deleted: revoked_at and expires_at end a token,
replaced_by names its successor after a rotation. updated_at (PostgreSQL's
clock) moves on every change; the index on it serves each process's
refresh of its token cache. A new table: nothing else changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ROLES_CHECK = (
    "cardinality(roles) > 0 AND roles <@ ARRAY['ingest', 'read', 'redeem', 'admin']::text[]"
)
TENANTS_CHECK = "tenants IS NULL OR cardinality(tenants) > 0"


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("token_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("roles", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("tenants", postgresql.ARRAY(sa.Text()), nullable=True),
        sa.Column("secret_hash", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replaced_by", sa.Text(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("token_id", name="pk_api_tokens"),
        sa.CheckConstraint(ROLES_CHECK, name="ck_api_tokens_roles"),
        sa.CheckConstraint(TENANTS_CHECK, name="ck_api_tokens_tenants"),
        sa.CheckConstraint("secret_hash LIKE 'scrypt$%'", name="ck_api_tokens_hashed"),
    )
    op.create_index("ix_api_tokens_updated_at", "api_tokens", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_api_tokens_updated_at", table_name="api_tokens")
    op.drop_table("api_tokens")
