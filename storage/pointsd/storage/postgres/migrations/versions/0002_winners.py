"""hall of fame: winners of closed weeks and months

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_KEY = ["tenant_id", "board", "period_kind", "period_key", "scope"]


def upgrade() -> None:
    op.create_table(
        "winner_periods",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("board", sa.Text(), nullable=False),
        sa.Column("period_kind", sa.Text(), nullable=False),
        sa.Column("period_key", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint(*_KEY, name="pk_winner_periods"),
    )
    op.create_table(
        "winners",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("board", sa.Text(), nullable=False),
        sa.Column("period_kind", sa.Text(), nullable=False),
        sa.Column("period_key", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("member_id", sa.Text(), nullable=False),
        sa.Column("score", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*_KEY, "position", name="pk_winners"),
        sa.ForeignKeyConstraint(
            _KEY, [f"winner_periods.{c}" for c in _KEY], name="fk_winners_winner_periods"
        ),
    )


def downgrade() -> None:
    op.drop_table("winners")
    op.drop_table("winner_periods")
