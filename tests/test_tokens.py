"""Page tokens: signed, bound to their query, shared by every process."""

from __future__ import annotations

import uuid

import grpc
import pytest

from pointsd.service.api.points.v1 import points_pb2 as pb
from pointsd.service.api.points.v1 import points_pb2_grpc as pb_grpc
from pointsd.service.tokens import PageTokens
from pointsd.service.validation import InvalidField
from tests.conftest import ApiFactory


async def test_tokens_are_bound_to_their_query_and_survive_a_new_key() -> None:
    stored: list[bytes] = [b"k1"]  # the shared key, as Redis holds it

    async def load(held: bytes) -> bytes:
        if not stored:  # SET NX: the first asker's key
            stored.append(held or b"fresh")
        return stored[0]

    tokens = PageTokens(load)
    await tokens.start()
    token = tokens.encode("ListThings", ("t", "u"), {"at": 5})
    assert await tokens.decode("ListThings", ("t", "u"), token) == {"at": 5}
    for kind, query in [("ListThings", ("t", "v")), ("ListOther", ("t", "u"))]:
        with pytest.raises(InvalidField):
            await tokens.decode(kind, query, token)
    # Redis lost the key and a new process started first: it made a new one.
    stored.clear()
    newcomer = PageTokens(load)
    await newcomer.start()
    with pytest.raises(InvalidField):
        await newcomer.decode("ListThings", ("t", "u"), token)
    # The older process follows on its next refresh and still accepts its own
    # earlier tokens; both now sign alike.
    await tokens.refresh()
    assert await tokens.decode("ListThings", ("t", "u"), token) == {"at": 5}
    again = tokens.encode("ListThings", ("t", "u"), {"at": 7})
    assert await newcomer.decode("ListThings", ("t", "u"), again) == {"at": 7}
    # Had the older process looked first, it would have put its key back.
    stored.clear()
    await tokens.refresh()
    assert stored == [b"fresh"]
    for junk in ["", "!", "A" * 5000, "e30"]:
        with pytest.raises(InvalidField):
            await tokens.decode("ListThings", ("t", "u"), junk)


async def test_a_token_from_one_process_pages_on_another(make_api: ApiFactory, tenant: str) -> None:
    first, second = await make_api([tenant]), await make_api([tenant])
    admin = pb_grpc.AdminServiceStub(first.channel)
    await admin.CreateItem(
        pb.CreateItemRequest(
            item=pb.Item(
                tenant_id=tenant,
                item_id="pen",
                name="Pen",
                kind=pb.PHYSICAL,
                cost=1,
                enabled=True,
            )
        )
    )
    await admin.AdjustPoints(
        pb.AdjustPointsRequest(
            tenant_id=tenant, user_id="ann", points=10, reason="seed", idempotency_key="s"
        )
    )
    for _ in range(3):
        await first.stub.Redeem(
            pb.RedeemRequest(
                tenant_id=tenant, user_id="ann", item_id="pen", request_id=uuid.uuid4().hex
            )
        )
    request = pb.ListRedemptionsRequest(tenant_id=tenant, user_id="ann", page_size=2)
    page = await first.stub.ListRedemptions(request)
    request.page_token = page.next_page_token
    rest = await second.stub.ListRedemptions(request)
    ids = [r.redemption_id for r in [*page.redemptions, *rest.redemptions]]
    assert len(ids) == len(set(ids)) == 3 and not rest.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await second.stub.ListRedemptions(
            pb.ListRedemptionsRequest(
                tenant_id=tenant, user_id="bob", page_token=page.next_page_token
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
