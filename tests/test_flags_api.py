"""Farming flags through the API (issue 12, "Farming held for review"), on
real Redis and PostgreSQL through a real gRPC server: ListFlags with its
evidence, filters and signed pages; ReleaseFlag and VoidFlag deciding once
(NOT_FOUND, FAILED_PRECONDITION for the other decision, a repeat answering
the same flag), each call with its audit row; only an admin of the tenant
may call them; and end to end, a held user's awards in Balance.held, not
spendable, paid exactly once by a release or cancelled by a void, with the
ledger showing held rows and their RELEASE or VOID settlement and
reconcile clean.

Flags are made as the farming pass makes them (the flag store's `record`,
then the hold in Redis), so these tests do not depend on the signals'
thresholds or on the day they run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from pointsd.service.auth import issue_token
from pointsd.service.domain import StoreCode
from pointsd.service.ops import reconcile
from pointsd.service.rules.farming import Finding, Signal
from scripts.tokens import bearer
from tests.conftest import Api, ApiFactory, Servers, new_tenant
from tests.helpers import ev

Sql = Callable[..., list[Any]]
NOTE = "checked with the team lead"


def admin(api: Api) -> pb_grpc.AdminServiceStub:
    return pb_grpc.AdminServiceStub(api.channel)


async def failure(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


async def flag(
    api: Api,
    user: str,
    *,
    tenant: str = "",
    findings: Sequence[tuple[Signal, str, tuple[str, ...]]] = (
        (Signal.RECIPROCITY, "2026-W49", ("bob",)),
    ),
) -> int:
    """Flag `user` and hold their awards, as the farming pass does: the
    flag's id."""
    app, tenant = api.app, tenant or api.tenant
    found = [
        Finding(user, signal, period, counterparts, f"{signal} of {user} in {period}")
        for signal, period, counterparts in findings
    ]
    gained = await app.stores.farming.record(tenant, found, app.clock())
    assert [u for _, u in gained] == [user]
    flag_id = gained[0][0]
    held = await app.stores.holds.hold(tenant, user, flag_id)
    assert (held.code, held.points) == (StoreCode.APPLIED, flag_id)
    return flag_id


def resolve(api: Api, flag_id: int, note: str = NOTE, **extra: Any) -> pb.ResolveFlagRequest:
    return pb.ResolveFlagRequest(
        tenant_id=extra.pop("tenant_id", api.tenant), flag_id=flag_id, note=note, **extra
    )


async def balance(api: Api, user: str) -> pb.Balance:
    return await api.stub.GetBalance(pb.GetBalanceRequest(tenant_id=api.tenant, user_id=user))


async def ledger(api: Api, user: str) -> list[pb.LedgerEntry]:
    assert await api.app.flusher.drain(30)
    page = await api.stub.ListLedger(
        pb.ListLedgerRequest(tenant_id=api.tenant, user_id=user, page_size=500)
    )
    return list(page.entries)


def audit_rows(sql: Sql, tenant: str) -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in sql(
            "SELECT rpc, outcome FROM audit_log WHERE tenant_id = :t ORDER BY audit_id", t=tenant
        )
    ]


# -- ListFlags -------------------------------------------------------------------------


async def test_list_flags_shows_the_evidence_filters_and_pages(api: Api, sql: Sql) -> None:
    stub, t = admin(api), api.tenant
    ann = await flag(
        api,
        "ann",
        findings=[
            (Signal.RECIPROCITY, "2026-W49", ("bob",)),
            (Signal.RATE, "2026-12-07T10", ()),
        ],
    )
    bob = await flag(api, "bob", findings=[(Signal.RING, "2026-W49", ("ann", "cid", "dan"))])
    cid = await flag(api, "cid")
    voided = await stub.VoidFlag(resolve(api, bob))
    assert voided.state == pb.FLAG_VOIDED

    every = await stub.ListFlags(pb.ListFlagsRequest(tenant_id=t))
    assert [f.flag_id for f in every.flags] == [cid, bob, ann]  # newest first
    assert every.next_page_token == ""
    first = every.flags[2]
    assert (first.tenant_id, first.user_id, first.state) == (t, "ann", pb.FLAG_OPEN)
    assert {(f.signal, f.period_key, tuple(f.counterparts)) for f in first.findings} == {
        ("reciprocity", "2026-W49", ("bob",)),
        ("rate", "2026-12-07T10", ()),
    }
    assert all(f.evidence.endswith("of ann in " + f.period_key) for f in first.findings)
    assert first.HasField("opened_at") and all(f.HasField("found_at") for f in first.findings)
    assert not first.HasField("decided_at") and not first.settled and first.held_points == 0
    assert (first.decided_by, first.note) == ("", "")
    ring = every.flags[1]
    assert ring.state == pb.FLAG_VOIDED and ring.settled and ring.HasField("decided_at")
    assert (ring.decided_by, ring.note) == ("tests", NOTE)
    assert list(ring.findings[0].counterparts) == ["ann", "cid", "dan"]

    async def ids(**filters: Any) -> list[int]:
        found = await stub.ListFlags(pb.ListFlagsRequest(tenant_id=t, **filters))
        return [f.flag_id for f in found.flags]

    assert await ids(state=pb.FLAG_OPEN) == [cid, ann]
    assert await ids(state=pb.FLAG_VOIDED) == [bob]
    assert await ids(state=pb.FLAG_RELEASED) == []
    assert await ids(user_id="ann") == [ann]
    assert await ids(user_id="ann", state=pb.FLAG_VOIDED) == []
    assert await ids(user_id="nobody") == []

    pages, token = [], ""
    while True:
        page = await stub.ListFlags(pb.ListFlagsRequest(tenant_id=t, page_size=1, page_token=token))
        pages.append([f.flag_id for f in page.flags])
        token = page.next_page_token
        if not token:
            break
    assert pages == [[cid], [bob], [ann]]
    # Reads are not audited: the trail holds the one decision.
    assert audit_rows(sql, t) == [("VoidFlag", "OK")]


async def test_list_flags_refuses_what_it_cannot_answer(make_api: ApiFactory) -> None:
    api = await make_api([new_tenant(), new_tenant()])
    t, other = api.tenant, *(x for x in api.tenants if x != api.tenant)
    stub = admin(api)
    await flag(api, "ann")
    await flag(api, "bob")
    page = await stub.ListFlags(pb.ListFlagsRequest(tenant_id=t, page_size=1))
    assert page.next_page_token
    for bad, field in [
        (pb.ListFlagsRequest(tenant_id=""), "tenant_id"),
        (pb.ListFlagsRequest(tenant_id="no-such-tenant"), "tenant_id"),
        (pb.ListFlagsRequest(tenant_id=t, user_id="a{b}"), "user_id"),
        (pb.ListFlagsRequest(tenant_id=t, user_id="u" * 200), "user_id"),
        (pb.ListFlagsRequest(tenant_id=t, page_size=501), "page_size"),
        (pb.ListFlagsRequest(tenant_id=t, page_size=-1), "page_size"),
        (pb.ListFlagsRequest(tenant_id=t, state=9), "state"),  # type: ignore[arg-type]
        (pb.ListFlagsRequest(tenant_id=t, page_token="not-a-token"), "page_token"),
        (pb.ListFlagsRequest(tenant_id=t, page_token="x" * 5000), "page_token"),
        # A token is bound to the filters and the tenant it was issued for.
        (
            pb.ListFlagsRequest(tenant_id=t, state=pb.FLAG_OPEN, page_token=page.next_page_token),
            "page_token",
        ),
        (
            pb.ListFlagsRequest(tenant_id=t, user_id="ann", page_token=page.next_page_token),
            "page_token",
        ),
        (pb.ListFlagsRequest(tenant_id=other, page_token=page.next_page_token), "page_token"),
    ]:
        code, message = await failure(stub.ListFlags(bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (bad, code, message)
        assert message.startswith(f"{field}:"), (bad, message)
        assert len(message) < 300, message
    # The token still works with its own query.
    rest = await stub.ListFlags(
        pb.ListFlagsRequest(tenant_id=t, page_size=1, page_token=page.next_page_token)
    )
    assert [f.user_id for f in rest.flags] == ["ann"]


# -- ReleaseFlag and VoidFlag ----------------------------------------------------------


async def test_a_flag_is_decided_once_and_every_call_is_audited(
    make_api: ApiFactory, sql: Sql
) -> None:
    api = await make_api([new_tenant(), new_tenant()])
    t, other = api.tenant, *(x for x in api.tenants if x != api.tenant)
    stub = admin(api)
    ann, bob = await flag(api, "ann"), await flag(api, "bob")
    foreign = await flag(api, "ann", tenant=other)

    released = await stub.ReleaseFlag(resolve(api, ann))
    assert (released.flag_id, released.user_id, released.state) == (ann, "ann", pb.FLAG_RELEASED)
    assert released.settled and released.held_points == 0  # nothing was held yet
    assert (released.decided_by, released.note) == ("tests", NOTE)
    # A repeat (a retry, a second operator) answers the same decision.
    again = await stub.ReleaseFlag(resolve(api, ann, "clicked twice"))
    assert again.state == pb.FLAG_RELEASED and again.decided_at == released.decided_at
    assert again.note == NOTE
    code, message = await failure(stub.VoidFlag(resolve(api, ann)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"flag {ann} was released by 'tests'" in message

    assert (await stub.VoidFlag(resolve(api, bob))).state == pb.FLAG_VOIDED
    assert (await stub.VoidFlag(resolve(api, bob))).state == pb.FLAG_VOIDED
    code, message = await failure(stub.ReleaseFlag(resolve(api, bob)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "was voided" in message

    # Unknown ids, and another tenant's flag named under this tenant.
    for missing in (2**62, foreign):
        code, message = await failure(stub.ReleaseFlag(resolve(api, missing)))
        assert code == grpc.StatusCode.NOT_FOUND, message
        assert message == f"flag_id: tenant {t!r} has no flag {missing}"
    assert (await api.app.stores.farming.get(other, foreign)).state == "open"  # type: ignore[union-attr]

    for bad, field in [
        (resolve(api, 0), "flag_id"),
        (resolve(api, -5), "flag_id"),
        (resolve(api, ann, ""), "note"),
        (resolve(api, ann, "   "), "note"),
        (resolve(api, ann, "n" * 1001), "note"),
        (resolve(api, ann, "bad\x07bell"), "note"),
    ]:
        code, message = await failure(stub.VoidFlag(bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (bad, message)
        assert message.startswith(f"{field}:"), message
    # Line breaks are fine in a note, and 1,000 characters are.
    assert (await stub.ReleaseFlag(resolve(api, ann, "a\nb"))).state == pb.FLAG_RELEASED
    assert (await stub.ReleaseFlag(resolve(api, ann, "n" * 1000))).state == pb.FLAG_RELEASED

    assert audit_rows(sql, t) == [
        ("ReleaseFlag", "OK"),
        ("ReleaseFlag", "OK"),
        ("VoidFlag", "FAILED_PRECONDITION"),
        ("VoidFlag", "OK"),
        ("VoidFlag", "OK"),
        ("ReleaseFlag", "FAILED_PRECONDITION"),
        ("ReleaseFlag", "NOT_FOUND"),
        ("ReleaseFlag", "NOT_FOUND"),
        *[("VoidFlag", "INVALID_ARGUMENT")] * 6,
        ("ReleaseFlag", "OK"),
        ("ReleaseFlag", "OK"),
    ]
    note, by = sql(
        "SELECT request->>'note', caller FROM audit_log WHERE tenant_id = :t ORDER BY audit_id "
        "LIMIT 1",
        t=t,
    )[0]
    assert (note, by) == (NOTE, "tests")
    assert audit_rows(sql, other) == []


@pytest.fixture
def token_names(servers: Servers) -> Iterator[str]:
    """A prefix for this test's token names; its tokens are deleted after it."""
    prefix = f"flagsapi-{uuid.uuid4().hex[:8]}"
    yield prefix
    from sqlalchemy import create_engine, text

    from pointsd.storage.postgres import sqlalchemy_url

    engine = create_engine(sqlalchemy_url(servers.database_url))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM api_tokens WHERE name LIKE :n"), {"n": f"{prefix}%"})
    engine.dispose()


async def test_only_an_admin_of_the_tenant_lists_and_decides(
    make_api: ApiFactory, token_names: str, sql: Sql
) -> None:
    api = await make_api([new_tenant(), new_tenant()])
    t, other = api.tenant, *(x for x in api.tenants if x != api.tenant)
    ann = await flag(api, "ann")
    now = datetime.fromtimestamp(api.app.clock() / 1000, UTC)

    async def token(roles: list[str], tenants: list[str] | None) -> str:
        made, _ = await issue_token(
            api.app.stores.tokens, name=f"{token_names}-{uuid.uuid4().hex[:6]}", roles=roles,
            tenants=tenants, now=now,
        )  # fmt: skip
        return made

    refused = {
        "read": await token(["read"], [t]),
        "ingest": await token(["ingest"], [t]),
        "redeem and read": await token(["redeem", "read"], None),
        "admin of another tenant": await token(["admin"], [other]),
    }
    right = await token(["admin"], [t])
    assert api.app.gate.authenticator is not None
    await api.app.gate.authenticator.refresh()

    channel = grpc.aio.insecure_channel(api.target)
    try:
        stub = pb_grpc.AdminServiceStub(channel)
        calls = {
            "ListFlags": lambda md: stub.ListFlags(pb.ListFlagsRequest(tenant_id=t), metadata=md),
            "ReleaseFlag": lambda md: stub.ReleaseFlag(resolve(api, ann), metadata=md),
            "VoidFlag": lambda md: stub.VoidFlag(resolve(api, ann), metadata=md),
        }
        for case, secret in refused.items():
            for rpc, call in calls.items():
                code, message = await failure(call(bearer(secret)))
                assert code == grpc.StatusCode.PERMISSION_DENIED, (case, rpc, message)
                expected = "may not act on tenant" if "another" in case else "lacks role 'admin'"
                assert expected in message, (case, rpc, message)
        # Refused callers leave no trace: the flag is open, the trail empty.
        assert (await api.app.stores.farming.get(t, ann)).state == "open"  # type: ignore[union-attr]
        assert audit_rows(sql, t) == []

        listed = await calls["ListFlags"](bearer(right))
        assert [f.flag_id for f in listed.flags] == [ann]
        assert (await calls["VoidFlag"](bearer(right))).state == pb.FLAG_VOIDED
        assert audit_rows(sql, t) == [("VoidFlag", "OK")]
    finally:
        await channel.close()


# -- end to end: held, then released or voided ---------------------------------------------


async def test_held_awards_are_not_spendable_and_a_release_pays_them_once(api: Api) -> None:
    stub, t = admin(api), api.tenant
    await stub.AdjustPoints(pb.AdjustPointsRequest(
        tenant_id=t, user_id="ann", points=10, reason="seed", idempotency_key="seed",
    ))  # fmt: skip
    await stub.CreateItem(pb.CreateItemRequest(item=pb.Item(
        tenant_id=t, item_id="mug", name="Mug", kind=pb.PHYSICAL, cost=12, enabled=True,
    )))  # fmt: skip
    flag_id = await flag(api, "ann")

    login = await api.stub.RecordActivity(ev(t, "ann", "login"))
    assert (login.outcome, login.points) == (pb.AWARDED, 5)
    assert "held for review" in login.credits[0].reason
    for _ in range(3):
        await api.stub.RecordActivity(ev(t, "ann", "message.text"))
    held = await balance(api, "ann")
    assert (held.available, held.held, held.lifetime_earned, held.spent) == (10, 11, 10, 0)
    # A replay of a held event says so again, and holds nothing more.
    again = await api.stub.RecordActivity(ev(t, "ann", "login", event_id=login.event_id))
    assert again.outcome == pb.DUPLICATE and "held for review" in again.credits[0].reason
    assert (await balance(api, "ann")).held == 11
    # 21 points in all, yet only the 10 paid ones can be spent.
    code, message = await failure(api.stub.Redeem(
        pb.RedeemRequest(tenant_id=t, user_id="ann", item_id="mug", request_id="r1")
    ))  # fmt: skip
    assert code == grpc.StatusCode.FAILED_PRECONDITION, message
    assert (await balance(api, "ann")).available == 10
    listed = await stub.ListFlags(pb.ListFlagsRequest(tenant_id=t, state=pb.FLAG_OPEN))
    assert [(f.flag_id, f.held_points) for f in listed.flags] == [(flag_id, 11)]

    released = await stub.ReleaseFlag(resolve(api, flag_id))
    assert (released.state, released.settled, released.held_points) == (pb.FLAG_RELEASED, True, 11)
    paid = await balance(api, "ann")
    assert (paid.available, paid.held, paid.lifetime_earned) == (21, 0, 21)
    # A second release pays nothing more, and says what the first one moved.
    assert (await stub.ReleaseFlag(resolve(api, flag_id))).held_points == 11
    assert (await balance(api, "ann")).available == 21
    listed = await stub.ListFlags(pb.ListFlagsRequest(tenant_id=t))
    assert [(f.state, f.held_points) for f in listed.flags] == [(pb.FLAG_RELEASED, 11)]
    # Paid points are spendable, and the user's next awards are paid at once.
    await api.stub.Redeem(
        pb.RedeemRequest(tenant_id=t, user_id="ann", item_id="mug", request_id="r2")
    )
    await api.stub.RecordActivity(ev(t, "ann", "message.text"))
    after = await balance(api, "ann")
    assert (after.available, after.held, after.spent) == (11, 0, 12)

    entries = await ledger(api, "ann")
    rows = {(e.kind, e.points, e.held, e.flag_id) for e in entries}
    assert (pb.AWARD, 5, True, flag_id) in rows  # the held login
    assert sum(1 for e in entries if e.held and e.kind == pb.AWARD) == 4
    settlement = {e.entry_id: (e.kind, e.points, e.held, e.flag_id) for e in entries
                  if e.kind == pb.RELEASE}  # fmt: skip
    assert settlement == {
        f"flag:{flag_id}:release:held": (pb.RELEASE, -11, True, flag_id),
        f"flag:{flag_id}:release": (pb.RELEASE, 11, False, flag_id),
    }
    assert sum(e.points for e in entries if not e.held) == after.available
    assert sum(e.points for e in entries if e.held) == after.held == 0
    assert all(e.flag_id == 0 for e in entries if e.kind in (pb.SPEND, pb.ADJUSTMENT))
    assert (await reconcile(api.app)).clean


async def test_a_void_cancels_the_held_awards_and_pays_nothing(api: Api) -> None:
    stub, t = admin(api), api.tenant
    flag_id = await flag(api, "ann")
    await api.stub.RecordActivity(ev(t, "ann", "login"))
    await api.stub.RecordActivity(ev(t, "bob", "login"))  # not flagged: paid
    held = await balance(api, "ann")
    assert (held.available, held.held, held.lifetime_earned) == (0, 5, 0)
    bob = await balance(api, "bob")
    assert (bob.available, bob.held) == (5, 0)

    voided = await stub.VoidFlag(resolve(api, flag_id, "a ring of likes with bob"))
    assert (voided.state, voided.settled, voided.held_points) == (pb.FLAG_VOIDED, True, 5)
    gone = await balance(api, "ann")
    assert (gone.available, gone.held, gone.lifetime_earned) == (0, 0, 0)
    assert (await stub.VoidFlag(resolve(api, flag_id))).held_points == 5
    assert (await balance(api, "ann")).held == 0
    # The flag decided, the user's next awards are paid again.
    await api.stub.RecordActivity(ev(t, "ann", "message.text"))
    assert (await balance(api, "ann")).available == 2

    entries = await ledger(api, "ann")
    assert {(e.entry_id, e.kind, e.points, e.held) for e in entries if e.kind == pb.VOID} == {
        (f"flag:{flag_id}:void:held", pb.VOID, -5, True)
    }
    assert [(e.points, e.held, e.flag_id) for e in entries if e.kind == pb.AWARD] == [
        (2, False, 0),
        (5, True, flag_id),
    ]
    assert (await reconcile(api.app)).clean
