"""audit log: every admin action, unchangeable

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08

One row per admin call (issue 12; storage/pointsd/storage/postgres/audit.py):
who (caller name and credential), when (the service clock), which RPC, the
tenant, the request as JSON without secrets, and the outcome ("OK", a status
code name, or "STARTED" while a saga step is under way). call_id (unique,
made by the service) lets the call settle its own row and makes a repeated
insert a no-op. Four indexes serve ListAudit newest first: unfiltered, and
by caller, tenant or RPC, each ending (occurred_at DESC, audit_id DESC), the
keyset the pages walk.

Rows cannot be changed: a trigger refuses UPDATE, DELETE and TRUNCATE,
except the one update the service makes, a STARTED outcome settled once
(outcome and message only). This guards against bugs and slips in the
application and its operators, not against the database owner, who can drop
the trigger. A new table: nothing else changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_NEWEST = (sa.text("occurred_at DESC"), sa.text("audit_id DESC"))

# The only change allowed: STARTED -> a final outcome, nothing else touched.
_GUARD = """
CREATE FUNCTION audit_log_unchangeable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF OLD.outcome = 'STARTED' AND NEW.outcome <> 'STARTED'
           AND (NEW.audit_id, NEW.call_id, NEW.occurred_at, NEW.caller, NEW.credential,
                NEW.rpc, NEW.tenant_id, NEW.request)
               IS NOT DISTINCT FROM
               (OLD.audit_id, OLD.call_id, OLD.occurred_at, OLD.caller, OLD.credential,
                OLD.rpc, OLD.tenant_id, OLD.request) THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit_log rows cannot be changed (%): only a STARTED outcome is '
        'settled, once', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("audit_id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("call_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("caller", sa.Text(), nullable=False),
        sa.Column("credential", sa.Text(), nullable=False),
        sa.Column("rpc", sa.Text(), nullable=False),
        sa.Column("tenant_id", sa.Text(), server_default="", nullable=False),
        sa.Column("request", postgresql.JSONB(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("audit_id", name="pk_audit_log"),
        sa.UniqueConstraint("call_id", name="uq_audit_log_call_id"),
        sa.CheckConstraint("outcome ~ '^[A-Z_]{2,32}$'", name="ck_audit_log_outcome"),
        sa.CheckConstraint("char_length(message) <= 1000", name="ck_audit_log_message"),
        sa.CheckConstraint(
            "jsonb_typeof(request) = 'object' AND octet_length(request::text) <= 16384",
            name="ck_audit_log_request",
        ),
    )
    op.create_index("ix_audit_log_newest", "audit_log", list(_NEWEST))
    for column in ("caller", "tenant_id", "rpc"):
        op.create_index(f"ix_audit_log_{column}", "audit_log", [column, *_NEWEST])
    op.execute(_GUARD)
    op.execute(
        "CREATE TRIGGER audit_log_rows_unchangeable BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_unchangeable()"
    )
    op.execute(
        "CREATE TRIGGER audit_log_table_unchangeable BEFORE TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_unchangeable()"
    )


def downgrade() -> None:
    op.drop_table("audit_log")  # its indexes and triggers with it
    op.execute("DROP FUNCTION audit_log_unchangeable()")
