"""Tokens for the scripts' and tests' own calls: one all-roles, all-tenants
token per process and database (`service_token`), and channels that send it
with every call (`channel`, `aio_channel`). Health checks need none."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import grpc
from sqlalchemy import create_engine, text

from pointsd.service.auth import ROLES, hash_secret, new_token
from pointsd.storage.postgres.db import sqlalchemy_url

__all__ = ["aio_channel", "bearer", "channel", "service_token"]


@functools.cache
def service_token(database_url: str, name: str = "scripts") -> str:
    """A fresh token for every role and tenant, stored (hashed) in the
    database's api_tokens; the server sees it within its refresh interval
    (POINTS_AUTH_REFRESH_S) after this returns."""
    token, token_id, secret = new_token()
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO api_tokens (token_id, name, roles, tenants, secret_hash, "
                    "created_at) VALUES (:id, :name, :roles, NULL, :hash, :now)"
                ),
                {"id": token_id, "name": name, "roles": list(ROLES),
                 "hash": hash_secret(secret), "now": datetime.now(UTC)},
            )  # fmt: skip
    finally:
        engine.dispose()
    return token


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _with_token(metadata: Any, token: str) -> list[tuple[str, str | bytes]]:
    return [*(metadata or ()), ("authorization", f"Bearer {token}")]


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _SyncBearer(
    grpc.UnaryUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self.token = token

    def _details(self, d: Any) -> _Details:
        metadata = _with_token(d.metadata, self.token)
        compression = getattr(d, "compression", None)
        return _Details(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready, compression)

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, requests: Any
    ) -> Any:
        return continuation(self._details(details), requests)


def channel(target: str, token: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A plaintext channel whose every call carries `token`."""
    return grpc.intercept_channel(grpc.insecure_channel(target, options), _SyncBearer(token))


class _WithToken:
    """A multi-callable that adds the token to the call's metadata."""

    def __init__(self, inner: Any, token: str) -> None:
        self._inner, self._token = inner, token

    def __call__(self, *args: Any, metadata: Any = None, **kwargs: Any) -> Any:
        return self._inner(*args, metadata=_with_token(metadata, self._token), **kwargs)


class _AioTokenChannel(grpc.aio.Channel):
    """An asyncio channel whose every call carries a token. Not an
    interceptor: grpc.aio's stream-stream interceptors fail streams whose
    requests come from an iterator ("Internal error from Core")."""

    def __init__(self, inner: grpc.aio.Channel, token: str) -> None:
        self._inner, self._token = inner, token

    async def __aenter__(self) -> _AioTokenChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._inner.close()

    async def close(self, grace: float | None = None) -> None:
        await self._inner.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self._inner.get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._inner.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._inner.channel_ready()

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _WithToken(self._inner.unary_unary(*args, **kwargs), self._token)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _WithToken(self._inner.unary_stream(*args, **kwargs), self._token)

    def stream_unary(self, *args: Any, **kwargs: Any) -> Any:
        return _WithToken(self._inner.stream_unary(*args, **kwargs), self._token)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        return _WithToken(self._inner.stream_stream(*args, **kwargs), self._token)


def aio_channel(
    target: str, token: str, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """An asyncio plaintext channel whose every call carries `token`."""
    return _AioTokenChannel(grpc.aio.insecure_channel(target, options), token)
