"""Layer rules (docs/architecture.md), read from the import statements of
every module: a layer that imports what it must not fails here, whether the
import is at the top, inside a function or under TYPE_CHECKING."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.procs import ROOT

_ROOTS = (ROOT / "service", ROOT / "storage")
_DRIVERS = ("redis", "sqlalchemy", "psycopg", "alembic", "hiredis")


def _modules() -> Iterator[tuple[str, Path]]:
    for root in _ROOTS:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            if name.startswith("pointsd.service.api") or "migrations" in parts:
                continue  # generated code; alembic's own layout
            yield name, path


MODULES = dict(_modules())


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # `from pkg import sub` may import a submodule.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m}


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _within(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _violations(layer: str, allowed: set[str] | None, forbidden: tuple[str, ...]) -> list[str]:
    """Modules of `layer` that import a forbidden prefix, or a project module
    outside `allowed` (None: any)."""
    out = []
    for name, imports in IMPORTS.items():
        if not _within(name, layer):
            continue
        for imported in sorted(imports):
            if _within(imported, *forbidden) or (
                allowed is not None
                and _within(imported, "pointsd")
                and not _within(imported, *allowed)
            ):
                out.append(f"{name} imports {imported}")
    return sorted(set(out))


def test_the_modules_are_found() -> None:
    assert "pointsd.storage.redis.codec" in MODULES
    assert "pointsd.service.rules.mechanics.caps" in MODULES
    assert "from pointsd.service.domain import" in MODULES["pointsd.storage.keys"].read_text()


def test_storage_imports_nothing_of_the_service_but_the_domain_types() -> None:
    assert (
        _violations("pointsd.storage", {"pointsd.storage", "pointsd.service.domain"}, ("grpc",))
        == []
    )


def test_rules_are_pure() -> None:
    assert (
        _violations(
            "pointsd.service.rules",
            {"pointsd.service.rules", "pointsd.service.domain"},
            ("grpc", "google.protobuf", "pointsd.storage", *_DRIVERS, "asyncio"),
        )
        == []
    )


def test_the_domain_types_depend_on_nothing() -> None:
    assert (
        _violations("pointsd.service.domain", {"pointsd.service.domain"}, ("grpc", *_DRIVERS)) == []
    )


def test_the_service_never_imports_a_driver() -> None:
    assert _violations("pointsd.service", None, _DRIVERS) == []


@pytest.mark.parametrize("module", ["pointsd.service.servicer", "pointsd.service.admin"])
def test_handlers_do_not_reach_the_stores(module: str) -> None:
    """Handlers validate, call and convert: reads go through queries, writes
    through the service's commands."""
    tree = ast.parse(MODULES[module].read_text("utf-8"))
    reached = [
        f"line {node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "stores"
    ]
    assert reached == []
    assert not any(_within(i, "pointsd.storage") for i in IMPORTS[module])


def test_nothing_imports_the_old_top_level_names() -> None:
    everything = dict(IMPORTS)
    for folder in ("tests", "scripts"):
        for path in sorted((ROOT / folder).glob("*.py")):
            everything[f"{folder}.{path.stem}"] = _imports(f"{folder}.{path.stem}", path)
    stale = sorted(
        f"{name} imports {i}"
        for name, imports in everything.items()
        for i in imports
        if _within(i, "service", "storage")
    )
    assert stale == []
