"""Log set-up: POINTS_LOG_FORMAT=text (default) or json (one object a line),
and the request id every log line of an RPC carries.

The id comes from the caller's `x-request-id` metadata (at most 64 letters,
digits, ._:-; anything else is replaced by a generated id), lives in a
ContextVar for the duration of the call (pointsd.service.rpc sets it), and is
returned to the caller as trailing metadata.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = [
    "FORMATS",
    "REQUEST_ID",
    "REQUEST_ID_KEY",
    "JsonFormatter",
    "RequestIdFilter",
    "TextFormatter",
    "new_request_id",
    "request_id_of",
    "setup_logging",
]

FORMATS = ("text", "json")
REQUEST_ID_KEY = "x-request-id"
REQUEST_ID_MAX = 64
# "" outside an RPC: log lines then carry no request id.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# Loggers that are chatty at INFO: pgserver logs every command it runs.
_QUIET = ("pgserver", "alembic")


def new_request_id() -> str:
    return os.urandom(8).hex()


# Letters, digits and . _ : - only: a space or "=" would let a caller forge
# fields in text log lines.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]+")


def _acceptable(value: str) -> bool:
    return len(value) <= REQUEST_ID_MAX and _REQUEST_ID.fullmatch(value) is not None


def request_id_of(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The caller's x-request-id if it is acceptable, else a new one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            if isinstance(value, str) and _acceptable(value):
                return value
            break
    return new_request_id()


class RequestIdFilter(logging.Filter):
    """Puts the current request id (or "") on every record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """The classic line, with `request_id=…` appended inside an RPC."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", "")
        if not request_id:
            return line
        # After the first line: a traceback keeps its own lines below.
        first, newline, rest = line.partition("\n")
        return f"{first} request_id={request_id}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO-8601), level, logger,
    message, and request_id / exception when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "")
        if request_id:
            out["request_id"] = request_id
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str, fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Log to `stream` (stderr) in `fmt` at `level`, replacing the root
    logger's handlers; returns the handler."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # On the handler, not a logger: records of every logger pass through it.
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler
