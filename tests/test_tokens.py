"""Page tokens: signed, bound to their query, shared by every process."""

from __future__ import annotations

import uuid

import grpc
import pytest

from service.api.points.v1 import points_pb2 as pb
from service.api.points.v1 import points_pb2_grpc as pb_grpc
from service.tokens import PageTokens
from service.validation import InvalidField
from tests.conftest import ApiFactory


async def test_tokens_are_bound_to_their_query_and_survive_a_new_key() -> None:
    keys = [b"k1"]

    async def load() -> bytes:
        return keys[-1]

    tokens = PageTokens(load)
    await tokens.start()
    token = tokens.encode("ListThings", ("t", "u"), {"at": 5})
    assert await tokens.decode("ListThings", ("t", "u"), token) == {"at": 5}
    for kind, query in [("ListThings", ("t", "v")), ("ListOther", ("t", "u"))]:
        with pytest.raises(InvalidField):
            await tokens.decode(kind, query, token)
    # The shared key changed (Redis lost it): a process that started since
    # refuses old tokens; an older process adopts the new key when it meets a
    # token signed with it, and signs with it from then on.
    keys.append(b"k2")
    other = PageTokens(load)
    await other.start()
    with pytest.raises(InvalidField):
        await other.decode("ListThings", ("t", "u"), token)
    fresh = other.encode("ListThings", ("t", "u"), {"at": 6})
    assert await tokens.decode("ListThings", ("t", "u"), fresh) == {"at": 6}
    with pytest.raises(InvalidField):
        await tokens.decode("ListThings", ("t", "u"), token)
    again = tokens.encode("ListThings", ("t", "u"), {"at": 7})
    assert await other.decode("ListThings", ("t", "u"), again) == {"at": 7}
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
