"""Validation helpers shared by the loader and the mechanics: every problem is
collected with its path in the document, so an operator sees them all."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["ACTION_RE", "ATTRIBUTE_RE", "ID_RE", "Checker", "RuleError", "one_line"]

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
ACTION_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ATTRIBUTE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class RuleError(ValueError):
    """The rule document is invalid; `problems` lists every "path: what" found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid rules:\n  " + "\n  ".join(problems))


class Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, value: Any, path: str) -> Mapping[str, Any] | None:
        if not isinstance(value, Mapping):
            self.fail(path, f"must be a mapping, got {type(value).__name__}")
            return None
        return value

    def unknown(self, value: Mapping[str, Any], allowed: set[str], path: str) -> None:
        for key in value:
            if key not in allowed:
                self.fail(f"{path}.{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")

    def integer(self, value: Any, path: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer, got {value!r}")
            return lo
        if not lo <= value <= hi:
            self.fail(path, f"must be between {lo} and {hi}, got {value}")
            return lo
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, got {value!r}")
            return False
        return value

    def choices(
        self, raw: Any, path: str, allowed: Mapping[str, Any], default: list[str]
    ) -> list[Any]:
        """A non-empty list of names from `allowed`, read as their values."""
        values = default if raw is None else raw
        if not isinstance(values, list) or not values:
            self.fail(path, f"must be a non-empty list of {', '.join(allowed)}")
            return []
        out = []
        for v in values:
            if v not in allowed:
                self.fail(path, f"{v!r} is not one of {', '.join(allowed)}")
            elif allowed[v] not in out:
                out.append(allowed[v])
        return out


def one_line(text: Any, max_chars: int = 200) -> bool:
    """A description: one line of at most `max_chars` characters."""
    return (
        isinstance(text, str)
        and len(text) <= max_chars
        and not any(ord(ch) < 32 or ord(ch) == 127 for ch in text)
    )
