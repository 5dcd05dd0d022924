"""Generate the Python protobuf/gRPC modules from `protos/` into `pointsd.service.api`.

    python -m scripts.gen_protos           # write service/pointsd/service/api/points/v1/*
    python -m scripts.gen_protos --check   # exit 1 if the committed files differ

The generated code is committed so a clone runs without a build step; the test
suite runs `--check`, so a `.proto` edit without regeneration fails CI.
grpcio-tools is pinned in pyproject.toml because its output differs by version.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_ROOT = ROOT / "service" / "pointsd" / "service" / "api"
PROTOS = ["points/v1/points.proto"]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generate(out: Path) -> list[Path]:
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
    for path in files:
        text = path.read_text()
        # protoc writes absolute imports rooted at the proto path ("from points.v1
        # import points_pb2"); the modules live inside the service package.
        text = text.replace("from points.v1 import", "from pointsd.service.api.points.v1 import")
        path.write_text(text)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    ns = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        files = _generate(tmp_path)
        stale: list[str] = []
        for path in files:
            rel = path.relative_to(tmp_path)
            target = OUT_ROOT / rel
            if ns.check:
                if not target.exists() or target.read_text() != path.read_text():
                    stale.append(str(target.relative_to(ROOT)))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(path.read_text())
        if stale:
            print("generated code is stale, run `python -m scripts.gen_protos`:", *stale)
            return 1
    if not ns.check:
        for pkg in (OUT_ROOT, OUT_ROOT / "points", OUT_ROOT / "points" / "v1"):
            (pkg / "__init__.py").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
