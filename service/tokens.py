"""Page tokens: opaque, signed, bound to the query that issued them.

A token is base64url(JSON cursor + 16-byte HMAC-SHA256 over the list's name,
the query's parameters and the cursor). The query itself is not in the
token, so a token shows no ids beyond its own cursor, and one presented with
another query, edited, or made up fails the check: INVALID_ARGUMENT. The key
is shared by every process through Redis (storage/redis/secrets.py); after a
Redis data loss it is new, and older tokens are refused the same way
(callers start again from the first page).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from service.validation import InvalidField

__all__ = ["PageTokens"]

_MAC_BYTES = 16
# Far above any real cursor: refuse huge inputs before decoding them.
_TOKEN_CHARS_MAX = 2048


class PageTokens:
    def __init__(self, load_secret: Callable[[], Awaitable[bytes]]) -> None:
        self._load = load_secret
        self._secret = b""

    async def start(self) -> None:
        self._secret = await self._load()

    def _mac(self, secret: bytes, kind: str, query: tuple[str, ...], body: bytes) -> bytes:
        msg = "\x00".join((kind, *query)).encode() + b"\x00" + body
        return hmac.new(secret, msg, hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, kind: str, query: tuple[str, ...], cursor: dict[str, Any]) -> str:
        body = json.dumps(cursor, separators=(",", ":")).encode()
        raw = body + self._mac(self._secret, kind, query, body)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    async def decode(self, kind: str, query: tuple[str, ...], token: str) -> dict[str, Any]:
        """The cursor of a token this service issued for this very query."""
        refused = InvalidField(
            "page_token", f"is not a token {kind} returned for this query; start without one"
        )
        if len(token) > _TOKEN_CHARS_MAX:
            raise refused
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            raise refused from None
        if len(raw) <= _MAC_BYTES:
            raise refused
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(self._secret, kind, query, body)):
            # The key may have changed under us (Redis lost its data and
            # another process made a new one): check once more with Redis's.
            secret = await self._load()
            if secret == self._secret or not hmac.compare_digest(
                mac, self._mac(secret, kind, query, body)
            ):
                raise refused
            self._secret = secret
        try:
            cursor = json.loads(body)
        except ValueError:
            raise refused from None
        if not isinstance(cursor, dict):
            raise refused
        return cursor
