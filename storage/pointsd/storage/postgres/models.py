"""SQLAlchemy models of the durable store. Schema changes go through Alembic
migrations in `storage/pointsd/storage/postgres/migrations/`; see INVARIANTS.md beside this
file for what each column promises."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    MetaData,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "ApiToken",
    "Base",
    "FarmingFinding",
    "FarmingFlag",
    "LedgerEntry",
    "Winner",
    "WinnerPeriod",
    "metadata",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Base(DeclarativeBase):
    metadata = metadata


_THANKS_CARDS = "action = 'thanks_card' AND kind = 'award' AND role = 't'"
_THANKS_INDEXES: dict[str, tuple[Any, ...]] = {
    "ix_ledger_entries_thanks_feed": (),
    "ix_ledger_entries_thanks_department": ("department_id",),
    "ix_ledger_entries_thanks_target_department": (
        text("(attributes ->> 'target_department_id')"),
    ),
    "ix_ledger_entries_thanks_receiver": ("user_id",),
    "ix_ledger_entries_thanks_sender": ("counterpart_id",),
}


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("tenant_id", "entry_key"),
        # Bonus rows may be zero-point milestones (migration 0005).
        CheckConstraint("points <> 0 OR kind = 'bonus'", name="points_nonzero"),
        Index(
            "ix_ledger_entries_user_history",
            "tenant_id",
            "user_id",
            text("occurred_at DESC"),
            text("id DESC"),
        ),
        # Held awards of flagged users (migration 0010, docs/farming.md).
        CheckConstraint("state IN ('paid', 'held')", name="state"),
        # The farming pass's week of award rows (migration 0010).
        Index("ix_ledger_entries_farming", "tenant_id", "occurred_at",
              postgresql_where=text("kind = 'award'")),
        # The thanks feed's partial indexes (migration 0007, ListThanks).
        *(
            Index(name, "tenant_id", *columns, text("occurred_at DESC"), text("id DESC"),
                  postgresql_where=text(_THANKS_CARDS))
            for name, columns in _THANKS_INDEXES.items()
        ),
    )  # fmt: skip

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    entry_key: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text)
    points: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(Text, server_default="")
    event_id: Mapped[str] = mapped_column(Text, server_default="")
    role: Mapped[str] = mapped_column(Text, server_default="")
    counterpart_id: Mapped[str] = mapped_column(Text, server_default="")
    group_id: Mapped[str] = mapped_column(Text, server_default="")
    department_id: Mapped[str] = mapped_column(Text, server_default="")
    quantity: Mapped[int] = mapped_column(BigInteger, server_default="0")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    reason: Mapped[str] = mapped_column(Text, server_default="")
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    flushed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    state: Mapped[str] = mapped_column(Text, server_default="paid")
    flag_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class WinnerPeriod(Base):
    """A closed period whose winners are recorded: the row is the claim that
    makes recording happen exactly once, whoever gets there first."""

    __tablename__ = "winner_periods"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    board: Mapped[str] = mapped_column(Text, primary_key=True)
    period_kind: Mapped[str] = mapped_column(Text, primary_key=True)
    period_key: Mapped[str] = mapped_column(Text, primary_key=True)
    # "t" (tenant), "d:<department>" or "g:<group>"
    scope: Mapped[str] = mapped_column(Text, primary_key=True)
    recorded_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class Winner(Base):
    __tablename__ = "winners"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "board", "period_kind", "period_key", "scope"],
            [
                "winner_periods.tenant_id",
                "winner_periods.board",
                "winner_periods.period_kind",
                "winner_periods.period_key",
                "winner_periods.scope",
            ],
        ),
    )

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    board: Mapped[str] = mapped_column(Text, primary_key=True)
    period_kind: Mapped[str] = mapped_column(Text, primary_key=True)
    period_key: Mapped[str] = mapped_column(Text, primary_key=True)
    scope: Mapped[str] = mapped_column(Text, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    rank: Mapped[int] = mapped_column(Integer)
    member_id: Mapped[str] = mapped_column(Text)
    score: Mapped[int] = mapped_column(BigInteger)


class ApiToken(Base):
    """An API token (migration 0008): the caller it stands for and a hash of
    its secret, never the secret; see INVARIANTS.md."""

    __tablename__ = "api_tokens"
    __table_args__ = (
        CheckConstraint(
            "cardinality(roles) > 0 AND "
            "roles <@ ARRAY['ingest', 'read', 'redeem', 'admin']::text[]",
            name="roles",
        ),
        CheckConstraint("tenants IS NULL OR cardinality(tenants) > 0", name="tenants"),
        CheckConstraint("secret_hash LIKE 'scrypt$%'", name="hashed"),
        Index("ix_api_tokens_updated_at", "updated_at"),
    )

    token_id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    roles: Mapped[list[str]] = mapped_column(ARRAY(Text))
    tenants: Mapped[list[str] | None] = mapped_column(ARRAY(Text), nullable=True)
    secret_hash: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    replaced_by: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("clock_timestamp()")
    )


class FarmingFlag(Base):
    """A hold on one user's awards for review (migration 0010)."""

    __tablename__ = "farming_flags"
    __table_args__ = (
        CheckConstraint("state IN ('open', 'released', 'voided')", name="state"),
        CheckConstraint("(state = 'open') = (decided_at IS NULL)", name="decided"),
        CheckConstraint("char_length(note) <= 1000", name="note"),
        Index("ix_farming_flags_open_user", "tenant_id", "user_id", unique=True,
              postgresql_where=text("state = 'open'")),
        Index("ix_farming_flags_newest", "tenant_id", text("flag_id DESC")),
        Index("ix_farming_flags_unsettled", "flag_id", postgresql_where=text("settled_at IS NULL")),
    )  # fmt: skip

    flag_id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    user_id: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text, server_default="open")
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    decided_by: Mapped[str] = mapped_column(Text, server_default="")
    note: Mapped[str] = mapped_column(Text, server_default="")
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    settled_points: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class FarmingFinding(Base):
    """One signal about one user in one period, ever (migration 0010)."""

    __tablename__ = "farming_findings"
    __table_args__ = (
        CheckConstraint("signal IN ('reciprocity', 'ring', 'rate')", name="signal"),
        Index("ix_farming_findings_flag_id", "flag_id"),
    )

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text, primary_key=True)
    signal: Mapped[str] = mapped_column(Text, primary_key=True)
    period_key: Mapped[str] = mapped_column(Text, primary_key=True)
    flag_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("farming_flags.flag_id", name="fk_farming_findings_flag_id")
    )
    counterparts: Mapped[list[str]] = mapped_column(ARRAY(Text))
    evidence: Mapped[str] = mapped_column(Text)
    found_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
