"""The build. Metadata, packages and data are pyproject.toml's; this file
only adds the compiled hot path.

With POINTS_COMPILE=1 the modules in pyproject.toml's
[tool.pointsd].compiled are compiled with mypyc into C extensions that ship
in the wheel beside their sources (the image is built this way: Dockerfile).
Unset or 0, the wheel is pure Python and behaves the same, only slower; the
editable install of scripts/install is always pure Python, so an edited
module never hides behind a stale extension. docs/architecture.md
("Compiled modules") says which modules and why.
"""

from __future__ import annotations

import os
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    """The source paths pyproject.toml lists for mypyc, globs expanded."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        listed: list[str] = tomllib.load(f)["tool"]["pointsd"]["compiled"]
    return [str(p.relative_to(ROOT)) for entry in listed for p in sorted(ROOT.glob(entry))]


# The setup.py commands that build extensions; pip's metadata pass
# (dist_info, egg_info) must not pay for a compile it throws away.
_BUILDING = {"bdist_wheel", "build", "build_ext", "editable_wheel", "install"}


def ext_modules() -> list[Any]:
    flag = os.environ.get("POINTS_COMPILE", "0").strip()
    if flag == "0" or not flag:
        return []
    if flag != "1":
        sys.exit(f"POINTS_COMPILE must be 0 or 1, not {flag[:20]!r}")
    if not _BUILDING & set(sys.argv[1:]):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        sys.exit(
            "POINTS_COMPILE=1 needs mypy in the build environment: "
            "pip install mypy, then build with --no-build-isolation"
        )
    # opt_level 3 is mypyc's default; one C file per module (multi_file) so
    # the compiler runs on every core (build_ext below); the C files go
    # under build/ (ignored by git).
    return mypycify(compiled_modules(), opt_level="3", multi_file=True, target_dir="build/mypyc")


class ParallelBuildExt(build_ext):
    """build_ext, compiling the C files of one extension on every core:
    mypyc puts the whole hot path in one extension of ~40 files, which
    setuptools compiles one after another (half the build on 2 cores)."""

    def build_extension(self, ext: Any) -> None:
        compiler = self.compiler
        serial = compiler.compile

        def compile_in_parallel(sources: list[str], *args: Any, **kwargs: Any) -> list[str]:
            if len(sources) < 2:
                return list(serial(sources, *args, **kwargs))
            with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
                parts = pool.map(lambda src: serial([src], *args, **kwargs), sources)
                return [obj for part in parts for obj in part]

        compiler.compile = compile_in_parallel
        try:
            super().build_extension(ext)
        finally:
            compiler.compile = serial


setup(ext_modules=ext_modules(), cmdclass={"build_ext": ParallelBuildExt})
