"""Build step beyond pyproject.toml: the per-packet modules compiled with mypyc.

The list is hj212gw.native.COMPILED_MODULES; the SHA-256 of each source compiled goes to
src/hj212gw/native_sources.json, which the package checks at import (a changed source runs as
Python until it is rebuilt). Needs a C compiler. `HJ212GW_PURE_PYTHON=1` at build time skips the
compilation: the package then runs as plain Python, about a third slower per packet.
"""

import json
import os
import runpy
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "src" / "hj212gw"
GROUP = "hj212gw_native"  # the shared library of the compiled modules, beside the package


def _ext_modules() -> list[object]:
    manifest = PACKAGE / "native_sources.json"
    native = runpy.run_path(str(PACKAGE / "native.py"))
    pure = os.environ.get("HJ212GW_PURE_PYTHON", "") not in ("", "0")
    modules: tuple[str, ...] = () if pure else native["COMPILED_MODULES"]
    for module, paths in native["extension_files"]().items():
        if module not in modules:  # from an earlier build
            for path in paths:
                path.unlink()
    if pure:
        manifest.unlink(missing_ok=True)
        for path in PACKAGE.parent.glob(f"{GROUP}__mypyc.*"):
            path.unlink()
        return []
    from mypyc.build import mypycify

    sources = {m: PACKAGE.joinpath(*m.split(".")[1:]).with_suffix(".py") for m in modules}
    manifest.write_text(json.dumps({m: native["source_digest"](p) for m, p in sources.items()}, indent=1) + "\n")
    os.chdir(ROOT)  # mypyc reads [tool.mypy] from pyproject.toml and names modules from src/
    # The same build whatever the environment holds: third-party packages are not read (their
    # types are Any, also when installed), and modules outside the list are followed silently.
    flags = ["--no-site-packages", "--follow-imports=silent", "--no-warn-unused-ignores"]
    paths = [str(p.relative_to(ROOT)) for p in sources.values()]
    return mypycify([*flags, *paths], group_name=GROUP, opt_level="3")


setup(ext_modules=_ext_modules())
