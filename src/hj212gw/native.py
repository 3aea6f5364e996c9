"""Which modules run compiled, and the switch back to their Python sources.

The modules every packet passes through (framing, CRC, segment and CP parsing, the session, the
row encoders, the connection path, the monitor's trackers) are compiled with mypyc when the
package is built (setup.py): the same source, as C extensions next to it, about a third less CPU
per packet. The `.py` files stay the definition; tests/protocol/test_native.py holds both forms
to the same results.

The compiled form is skipped, and every listed module imported from its `.py` instead, when:
- `HJ212GW_PURE_PYTHON=1` is set (for a profiler that should see inside these modules, or to rule
  the compiled form out when chasing a bug);
- a listed source no longer matches what was compiled (an edited checkout of an editable install):
  running stale code would be worse than running slower code, so the sources run and one line on
  stderr says how to rebuild;
- an extension is left from an earlier build for a module no longer listed (setup.py removes
  such files when it builds).
All or nothing: compiled modules call each other directly, so a mix would run old code.

Imports nothing of hj212gw: `hj212gw/__init__.py` calls `select()` before any other module loads.
"""

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

__all__ = ["COMPILED_MODULES", "MANIFEST", "PURE_ENV", "extension_files", "mode", "select", "source_digest"]

COMPILED_MODULES: Final = (
    "hj212gw.protocol.builders",
    "hj212gw.protocol.cp",
    "hj212gw.protocol.crc",
    "hj212gw.protocol.decoder",
    "hj212gw.protocol.events",
    "hj212gw.protocol.framing",
    "hj212gw.protocol.limits",
    "hj212gw.protocol.models",
    "hj212gw.protocol.segment",
    "hj212gw.protocol.session",
    "hj212gw.protocol.split",
    "hj212gw.storage.pgcopy",
    "hj212gw.ingest.layout",
    "hj212gw.ingest.rows",
    "hj212gw.ingest.intake",
    "hj212gw.monitor.cadence",
    "hj212gw.monitor.devices",
    "hj212gw.monitor.gaps",
    "hj212gw.monitor.grid",
    "hj212gw.monitor.hub",
    "hj212gw.monitor.series",
    "hj212gw.monitor.state",
    "hj212gw.server.admission",
    "hj212gw.server.bindings",
    "hj212gw.server.connection",
    "hj212gw.server.flow",
    "hj212gw.server.registry",
)
MANIFEST: Final = "native_sources.json"  # module -> SHA-256 of the source compiled (setup.py)
PURE_ENV: Final = "HJ212GW_PURE_PYTHON"
_PACKAGE_DIR: Final = Path(__file__).resolve().parent
_mode = "pure: not compiled"


def mode() -> str:
    """`compiled`, or `pure: <why>` (not compiled, HJ212GW_PURE_PYTHON, or stale sources)."""
    return _mode


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source(module: str) -> Path:
    return _PACKAGE_DIR.joinpath(*module.split(".")[1:]).with_suffix(".py")


def extension_files() -> dict[str, list[Path]]:
    """Every module of the package with an extension file beside its source, and those files
    (setup.py removes the ones of modules no longer listed)."""
    found: dict[str, list[Path]] = {}
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        for path in _PACKAGE_DIR.rglob(f"*{suffix}"):
            source = path.with_name(path.name[: -len(suffix)] + ".py")
            if source.exists():
                module = ".".join(("hj212gw", *source.relative_to(_PACKAGE_DIR).with_suffix("").parts))
                found.setdefault(module, []).append(path)
    return found


def _stale(modules: Sequence[str], extensions: Collection[str]) -> list[str]:
    """Listed modules without an extension or whose source changed since it was compiled, then
    extensions left from an earlier build for modules no longer listed (they would call into a
    different build)."""
    try:
        built = json.loads((_PACKAGE_DIR / MANIFEST).read_text())
    except (OSError, ValueError):
        return list(modules)
    changed = [m for m in modules if m not in extensions or built.get(m) != source_digest(_source(m))]
    return changed + sorted(set(extensions) - set(modules))


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Imports the given modules from their `.py`, ahead of the extension next to it."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = frozenset(modules)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, _source(fullname))


def select() -> None:
    """Decide once, before any listed module is imported, which form this process runs."""
    global _mode
    extensions = extension_files()
    if not extensions:
        _mode = "pure: not compiled"
        return
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        _mode = f"pure: {PURE_ENV} is set"
    elif stale := _stale(COMPILED_MODULES, extensions):
        _mode = f"pure: sources changed since compiled ({', '.join(stale)})"
        print(
            f"hj212gw.native: the compiled modules do not match their sources (first: {stale[0]}); "
            f"running the Python sources (slower). Rebuild with `pip install -e .` (or set {PURE_ENV}=1 "
            "to say so).",
            file=sys.stderr,
        )
    else:
        _mode = "compiled"
        return
    if not any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder((*COMPILED_MODULES, *extensions)))
