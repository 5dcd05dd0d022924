"""Generate the Python protobuf/gRPC modules of `protos/` for server and client.

One protoc run; two copies: the server package `pointsd.service.api` and the
client distribution's `pointsd_client` (client/), each with its own imports.

    python -m scripts.gen_protos           # write both trees (see TARGETS)
    python -m scripts.gen_protos --check   # exit 1 if a committed file differs

The generated code is committed so a clone runs without a build step; the test
suite runs `--check`, so a `.proto` edit without regeneration fails CI.
grpcio-tools is pinned in pyproject.toml because its output differs by version.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "service" / "pointsd" / "service" / "api"
CLIENT_ROOT = ROOT / "client" / "pointsd_client"
PROTOS = ["points/v1/points.proto"]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


@dataclass(frozen=True)
class Target:
    """Where one copy of the generated modules lives and what they import as.

    protoc writes `points/v1/points_pb2.py` with absolute imports rooted at the
    proto path (`from points.v1 import points_pb2`); each copy moves the files
    under `root`, minus the leading proto folder `strip`, and rewrites those
    imports to the package they land in."""

    root: Path
    package: str
    strip: str = ""

    def place(self, rel: PurePosixPath) -> Path:
        return self.root / (rel.relative_to(self.strip) if self.strip else rel)

    def module(self, proto_dir: PurePosixPath) -> str:
        inner = proto_dir.relative_to(self.strip) if self.strip else proto_dir
        return ".".join([self.package, *inner.parts])

    def render(self, text: str) -> str:
        for proto in PROTOS:
            folder = PurePosixPath(proto).parent
            dotted = ".".join(folder.parts)
            text = text.replace(f"from {dotted} import", f"from {self.module(folder)} import")
        return text

    def packages(self, files: list[PurePosixPath]) -> list[Path]:
        """Every package folder from the root down to each generated file."""
        found = {self.root}
        for rel in files:
            folder = self.place(rel).parent
            while folder != self.root and self.root in folder.parents:
                found.add(folder)
                folder = folder.parent
        return sorted(found)


TARGETS = (
    # The server: pointsd.service.api.points.v1.
    Target(OUT_ROOT, "pointsd.service.api"),
    # The client distribution (client/): pointsd_client.v1, a regular package
    # of its own so it never meets the server's `pointsd` namespace.
    Target(CLIENT_ROOT, "pointsd_client", strip="points"),
)


def _generate(out: Path) -> dict[PurePosixPath, str]:
    """One protoc run: the generated files by path relative to `out`."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(PROTO_ROOT / p) for p in PROTOS],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    files = sorted(p for p in out.rglob("*") if p.name.endswith(GENERATED_SUFFIXES))
    return {PurePosixPath(p.relative_to(out).as_posix()): p.read_text() for p in files}


def _stale(target: Target, generated: dict[PurePosixPath, str]) -> list[str]:
    stale = []
    for rel, text in generated.items():
        path = target.place(rel)
        if not path.exists() or path.read_text() != target.render(text):
            stale.append(str(path.relative_to(ROOT)))
    for pkg in target.packages(list(generated)):
        if not (pkg / "__init__.py").exists():
            stale.append(str((pkg / "__init__.py").relative_to(ROOT)))
    return stale


def _write(target: Target, generated: dict[PurePosixPath, str]) -> None:
    for rel, text in generated.items():
        path = target.place(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(target.render(text))
    for pkg in target.packages(list(generated)):
        init = pkg / "__init__.py"
        if not init.exists():  # never overwritten: the client's own is written by hand
            init.write_text("")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    ns = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generated = _generate(Path(tmp))
    if ns.check:
        stale = [path for target in TARGETS for path in _stale(target, generated)]
        if stale:
            print("generated code is stale, run `python -m scripts.gen_protos`:", *stale)
            return 1
        return 0
    for target in TARGETS:
        _write(target, generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
