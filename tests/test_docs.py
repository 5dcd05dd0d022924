"""README stays in step with the code: every setting and command is documented."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from pointsd.service.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@pytest.mark.parametrize("name", [Settings.env_name(f.name) for f in fields(Settings)])
def test_every_environment_variable_is_in_readme(name: str) -> None:
    assert f"| `{name}` |" in README


@pytest.mark.parametrize(
    "command",
    ["serve", "flush", "migrate", "reconcile", "rebuild", "winners", "rules check", "health"],
)
def test_every_command_is_in_readme(command: str) -> None:
    assert f"`pointsd {command}" in README
