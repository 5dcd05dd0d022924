"""Background chores that repeat until a stop event (winners, redemption
recovery): one failing pass is logged, never the end of the loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pointsd.storage.errors import StorageError

__all__ = ["every"]


async def every(
    interval_s: float,
    stop: asyncio.Event,
    work: Callable[[], Awaitable[Any]],
    log: logging.Logger,
    what: str,
) -> None:
    while not stop.is_set():
        try:
            await work()
        except StorageError as exc:
            log.warning("%s failed, retrying later: %s", what, exc)
        except Exception:
            log.exception("%s failed unexpectedly; retrying later", what)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
