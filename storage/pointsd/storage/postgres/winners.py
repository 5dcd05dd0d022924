"""Hall of fame: the top members of closed weeks and months, written once.

Recording a (tenant, board, period, scope) is one transaction: insert the
claim row ON CONFLICT DO NOTHING; only the transaction that inserted it
writes the winners. Two processes that see the same closed period at the
same time therefore record it exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exc as saexc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from pointsd.storage.postgres.db import pg_errors

__all__ = ["HallOfFame", "WinnerRow", "WinnersRecord"]


@dataclass(frozen=True, slots=True)
class WinnerRow:
    rank: int
    member_id: str
    score: int


@dataclass(frozen=True, slots=True)
class WinnersRecord:
    board: str
    period_kind: str
    period_key: str
    scope: str
    recorded_at: datetime
    winners: list[WinnerRow]


_CLAIM = text(
    "INSERT INTO winner_periods (tenant_id, board, period_kind, period_key, scope) "
    "VALUES (:t, :b, :k, :p, :s) ON CONFLICT DO NOTHING RETURNING 1"
)
_INSERT = text(
    "INSERT INTO winners (tenant_id, board, period_kind, period_key, scope, position, rank, "
    "member_id, score) VALUES (:t, :b, :k, :p, :s, :position, :rank, :member_id, :score)"
)
_RECORDED = text(
    "SELECT scope FROM winner_periods WHERE tenant_id = :t AND board = :b AND period_kind = :k "
    "AND period_key = :p"
)
_LIST = text(
    "SELECT period_key, recorded_at FROM winner_periods WHERE tenant_id = :t AND board = :b "
    "AND period_kind = :k AND scope = :s AND (:only = '' OR period_key = :only) "
    "AND (:before = '' OR period_key < :before) ORDER BY period_key DESC LIMIT :n"
)
_ROWS = text(
    "SELECT period_key, rank, member_id, score FROM winners WHERE tenant_id = :t AND board = :b "
    "AND period_kind = :k AND scope = :s AND period_key = ANY(:keys) ORDER BY period_key, position"
)


class HallOfFame:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def recorded_scopes(self, tenant_id: str, board: str, kind: str, key: str) -> set[str]:
        try:
            async with self.engine.connect() as conn:
                rows = await conn.execute(
                    _RECORDED, {"t": tenant_id, "b": board, "k": kind, "p": key}
                )
                return {str(r[0]) for r in rows}
        except (saexc.SQLAlchemyError, OSError) as exc:
            raise pg_errors(exc) from exc

    async def record(
        self,
        tenant_id: str,
        board: str,
        kind: str,
        key: str,
        scope: str,
        winners: Sequence[WinnerRow],
    ) -> bool:
        """Record once; True if this call did it, False if it was done before."""
        ident = {"t": tenant_id, "b": board, "k": kind, "p": key, "s": scope}
        try:
            async with self.engine.begin() as conn:
                claimed = (await conn.execute(_CLAIM, ident)).first()
                if claimed is None:
                    return False
                if winners:
                    await conn.execute(
                        _INSERT,
                        [
                            {
                                **ident,
                                "position": i,
                                "rank": w.rank,
                                "member_id": w.member_id,
                                "score": w.score,
                            }
                            for i, w in enumerate(winners)
                        ],
                    )
                return True
        except (saexc.SQLAlchemyError, OSError) as exc:
            raise pg_errors(exc) from exc

    async def list(
        self,
        tenant_id: str,
        board: str,
        kind: str,
        scope: str,
        *,
        only_key: str = "",
        before_key: str = "",
        limit: int = 10,
    ) -> list[WinnersRecord]:
        """Recorded periods, newest first, with their winners."""
        ident = {"t": tenant_id, "b": board, "k": kind, "s": scope}
        try:
            async with self.engine.connect() as conn:
                periods = (
                    await conn.execute(
                        _LIST, {**ident, "only": only_key, "before": before_key, "n": limit}
                    )
                ).all()
                keys = [str(p[0]) for p in periods]
                rows = (await conn.execute(_ROWS, {**ident, "keys": keys})).all() if keys else []
        except (saexc.SQLAlchemyError, OSError) as exc:
            raise pg_errors(exc) from exc
        by_key: dict[str, list[WinnerRow]] = {k: [] for k in keys}
        for key, rank, member, score in rows:
            by_key[str(key)].append(WinnerRow(int(rank), str(member), int(score)))
        return [
            WinnersRecord(board, kind, str(key), scope, recorded_at, by_key[str(key)])
            for key, recorded_at in periods
        ]
