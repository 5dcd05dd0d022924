"""farming flags and held ledger entries

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

Issue 12, farming held for review (docs/farming.md):

- ledger_entries.state: 'paid' (every row so far, the default) or 'held':
  an award of a flagged user, on hold in the user's `held` balance until
  its flag is released or voided. flag_id names that flag (held rows and
  the release/void rows that settle them; NULL otherwise). Two new kinds,
  `release` and `void`, settle held points (INVARIANTS.md); the kind column
  has no check constraint, so nothing changes for them.
- ix_ledger_entries_farming (tenant_id, occurred_at) over award rows: the
  farming pass reads one week of a tenant's awards, not the whole table.
- farming_flags: one row per hold of one user; at most one open per
  (tenant, user) (a partial unique index). State open -> released or
  voided once, by an administrator; settled_at/settled_points record the
  Redis settlement of the decision (NULL until it ran).
- farming_findings: what the detector saw, one row per (tenant, user,
  signal, period) ever: a finding already judged is never raised again.

Existing rows get state 'paid' (a constant default: no table rewrite).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "ledger_entries", sa.Column("state", sa.Text(), server_default="paid", nullable=False)
    )
    op.add_column("ledger_entries", sa.Column("flag_id", sa.BigInteger(), nullable=True))
    op.create_check_constraint(
        "ck_ledger_entries_state", "ledger_entries", "state IN ('paid', 'held')"
    )
    op.create_index(
        "ix_ledger_entries_farming",
        "ledger_entries",
        ["tenant_id", "occurred_at"],
        postgresql_where=sa.text("kind = 'award'"),
    )
    op.create_table(
        "farming_flags",
        sa.Column("flag_id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), server_default="open", nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.Text(), server_default="", nullable=False),
        sa.Column("note", sa.Text(), server_default="", nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("settled_points", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("flag_id", name="pk_farming_flags"),
        sa.CheckConstraint(
            "state IN ('open', 'released', 'voided')", name="ck_farming_flags_state"
        ),
        sa.CheckConstraint(
            "(state = 'open') = (decided_at IS NULL)", name="ck_farming_flags_decided"
        ),
        sa.CheckConstraint("char_length(note) <= 1000", name="ck_farming_flags_note"),
    )
    op.create_index(
        "ix_farming_flags_open_user",
        "farming_flags",
        ["tenant_id", "user_id"],
        unique=True,
        postgresql_where=sa.text("state = 'open'"),
    )
    op.create_index(
        "ix_farming_flags_newest",
        "farming_flags",
        ["tenant_id", sa.text("flag_id DESC")],
    )
    op.create_index(
        "ix_farming_flags_unsettled",
        "farming_flags",
        ["flag_id"],
        postgresql_where=sa.text("settled_at IS NULL"),
    )
    op.create_table(
        "farming_findings",
        sa.Column("tenant_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("signal", sa.Text(), nullable=False),
        sa.Column("period_key", sa.Text(), nullable=False),
        sa.Column("flag_id", sa.BigInteger(), nullable=False),
        sa.Column("counterparts", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("found_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant_id", "user_id", "signal", "period_key", name="pk_farming_findings"
        ),
        sa.ForeignKeyConstraint(
            ["flag_id"], ["farming_flags.flag_id"], name="fk_farming_findings_flag_id"
        ),
        sa.CheckConstraint(
            "signal IN ('reciprocity', 'ring', 'rate')", name="ck_farming_findings_signal"
        ),
    )
    op.create_index("ix_farming_findings_flag_id", "farming_findings", ["flag_id"])


def downgrade() -> None:
    op.drop_table("farming_findings")
    op.drop_table("farming_flags")
    op.drop_index("ix_ledger_entries_farming", table_name="ledger_entries")
    op.drop_constraint("ck_ledger_entries_state", "ledger_entries", type_="check")
    op.drop_column("ledger_entries", "flag_id")
    op.drop_column("ledger_entries", "state")
