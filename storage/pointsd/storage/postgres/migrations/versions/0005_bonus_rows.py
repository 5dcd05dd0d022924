"""bonus rows: a milestone may be a zero-point ledger row

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

An award's bonuses (service/pointsd/service/domain/steps.py: Cross and Entry) reach the
ledger as rows of kind 'bonus'. A milestone that pays nothing (a level
reached) is still recorded, so the constraint that every row moves points
now spares bonus rows. Rows written before this revision are all valid.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


_NAME = op.f("ck_ledger_entries_points_nonzero")


def upgrade() -> None:
    op.drop_constraint(_NAME, "ledger_entries", type_="check")
    op.create_check_constraint(_NAME, "ledger_entries", "points <> 0 OR kind = 'bonus'")


def downgrade() -> None:
    # NOT VALID: milestone rows already written stay (the ledger loses
    # nothing); new rows must move points again.
    op.drop_constraint(_NAME, "ledger_entries", type_="check")
    op.execute(
        "ALTER TABLE ledger_entries ADD CONSTRAINT ck_ledger_entries_points_nonzero "
        "CHECK (points <> 0) NOT VALID"
    )
