"""thanks feed: partial indexes for ListThanks

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

ListThanks pages the receivers' award rows of thanks cards newest first
(storage/pointsd/storage/postgres/ledger.py, `Ledger.thanks`): the tenant's
feed, a department's (the sender's department_id or the receiver's
target_department_id attribute) and a user's (received: user_id; sent:
counterpart_id). One partial index per way of reading it, each holding only
those rows, so a feed page is an index scan however large the ledger grows
and other rows pay nothing for them. The predicate must stay the one the
queries repeat word for word, or the planner cannot use them. No data
changes. Building them blocks writes to ledger_entries meanwhile (one scan
of the table): the flusher waits and retries, ingest goes on, its entries
wait in the outbox.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_CARDS = sa.text("action = 'thanks_card' AND kind = 'award' AND role = 't'")
_NEWEST = [sa.text("occurred_at DESC"), sa.text("id DESC")]
# Index name -> the columns (or expression) before the newest-first order.
_INDEXES: dict[str, list[str | sa.TextClause]] = {
    "ix_ledger_entries_thanks_feed": ["tenant_id"],
    "ix_ledger_entries_thanks_department": ["tenant_id", "department_id"],
    "ix_ledger_entries_thanks_target_department": [
        "tenant_id",
        sa.text("(attributes ->> 'target_department_id')"),
    ],
    "ix_ledger_entries_thanks_receiver": ["tenant_id", "user_id"],
    "ix_ledger_entries_thanks_sender": ["tenant_id", "counterpart_id"],
}


def upgrade() -> None:
    for name, columns in _INDEXES.items():
        op.create_index(name, "ledger_entries", [*columns, *_NEWEST], postgresql_where=_CARDS)


def downgrade() -> None:
    for name in reversed(list(_INDEXES)):
        op.drop_index(name, table_name="ledger_entries")
