"""Small builders and probes used across the test suite."""

from __future__ import annotations

import sys
import types
import uuid
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import redis as sync_redis
from google.protobuf.timestamp_pb2 import Timestamp

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.clock import child_clock_env
from scripts.procs import pointsd_env, write_rules
from tests import clock as test_clock


def is_compiled(obj: type | types.ModuleType) -> bool:
    """Whether a class or module runs compiled (mypyc: the image's wheel,
    scripts/compile) rather than from its source."""
    module = obj if isinstance(obj, types.ModuleType) else sys.modules[obj.__module__]
    return (module.__file__ or "").endswith(tuple(EXTENSION_SUFFIXES))


def now_ms() -> int:
    """The current test's clock (tests/clock.py), never the system's."""
    return test_clock.now_ms()


def child_env(
    redis_url: str, database_url: str, rules: Path, data_dir: Path, **extra: str
) -> dict[str, str]:
    """A pointsd child's environment whose service clock is the test's."""
    return pointsd_env(
        redis_url, database_url, rules, data_dir,
        **child_clock_env(test_clock.current()), **extra,
    )  # fmt: skip


def rules_file(path: Path, tenants: dict[str, dict[str, Any]]) -> Path:
    """A rule file for a child; tenants live in the test's zone unless named."""
    return write_rules(path, tenants, test_clock.zone().key)


def ts(ms: int) -> Timestamp:
    t = Timestamp()
    t.FromMilliseconds(ms)
    return t


def ev(
    tenant: str,
    user: str,
    action: str,
    *,
    event_id: str | None = None,
    at_ms: int | None = None,
    **fields: Any,
) -> pb.ActivityEvent:
    """An ActivityEvent; occurred_at defaults to now, event_id to a fresh one."""
    msg = pb.ActivityEvent(
        tenant_id=tenant,
        event_id=event_id or uuid.uuid4().hex,
        user_id=user,
        action=action,
        occurred_at=ts(at_ms if at_ms is not None else now_ms()),
        **fields,
    )
    return msg


def tenant_keys(r: sync_redis.Redis, tenant: str, prefix: str = "pts") -> list[bytes]:
    """The tenant's Redis keys that hold state; the (empty) outbox streams the
    flusher creates at start do not count."""
    keys = sorted(r.scan_iter(match=f"{prefix}:{{{tenant}:*", count=1000))
    return [k for k in keys if not (k.endswith(b":outbox") and r.xlen(k) == 0)]


def ledger_sum(sql: Any, tenant: str, user: str | None = None) -> int:
    if user is None:
        rows = sql(
            "SELECT COALESCE(SUM(points),0) FROM ledger_entries WHERE tenant_id=:t", t=tenant
        )
    else:
        rows = sql(
            "SELECT COALESCE(SUM(points),0) FROM ledger_entries WHERE tenant_id=:t AND user_id=:u",
            t=tenant,
            u=user,
        )
    return int(rows[0][0])


def ledger_count(sql: Any, tenant: str) -> int:
    return int(sql("SELECT COUNT(*) FROM ledger_entries WHERE tenant_id=:t", t=tenant)[0][0])
