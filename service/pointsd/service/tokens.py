"""Page tokens: opaque, signed, bound to the query that issued them.

A token is base64url(JSON cursor + 16-byte HMAC-SHA256 over the list's name,
the query's parameters and the cursor). The query itself is not in the
token, so a token shows no ids beyond its own cursor, and one presented with
another query, edited, or made up fails the check: INVALID_ARGUMENT. The key
is shared by every process through Redis (storage/pointsd/storage/redis/secrets.py), and
each process re-reads it every few seconds (`refresh`): after a Redis data
loss the first process to look puts its own key back, so processes agree
again within seconds; a process that had to switch keys still accepts
tokens signed with its previous one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from pointsd.service.validation import InvalidField

__all__ = ["PageTokens"]

_MAC_BYTES = 16
# Far above any real cursor: refuse huge inputs before decoding them.
_TOKEN_CHARS_MAX = 2048


class PageTokens:
    def __init__(self, load_secret: Callable[[bytes], Awaitable[bytes]]) -> None:
        """`load_secret(held)`: the shared key, storing `held` if there is none."""
        self._load = load_secret
        self._secret = b""
        self._previous = b""

    async def start(self) -> None:
        self._secret = await self._load(b"")

    async def refresh(self) -> None:
        """Follow the shared key (put this process's back if it is gone)."""
        secret = await self._load(self._secret)
        if secret != self._secret:
            self._previous, self._secret = self._secret, secret

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

        def signed() -> bool:
            return any(
                hmac.compare_digest(mac, self._mac(key, kind, query, body))
                for key in (self._secret, self._previous)
                if key
            )

        if not signed():
            # Another process may have moved the shared key since we last
            # looked: look once more before refusing.
            await self.refresh()
            if not signed():
                raise refused
        try:
            cursor = json.loads(body)
        except ValueError:
            raise refused from None
        if not isinstance(cursor, dict):
            raise refused
        return cursor
