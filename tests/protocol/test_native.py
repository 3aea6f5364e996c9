"""The compiled per-packet modules behave as their sources (hj212gw.native, setup.py)."""

import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hj212gw import native

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, *, root: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter; with `root`, hj212gw is the package under `root`."""
    environment = {k: v for k, v in os.environ.items() if k not in (native.PURE_ENV, "PYTHONPATH")} | env
    if root != ROOT:
        environment["PYTHONPATH"] = str(root)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=environment, capture_output=True, text=True, check=True, timeout=120
    )


def _run(code: str, **env: str) -> str:
    return _python(code, **env).stdout


def _corpus(**env: str) -> list[str]:
    return _run("from tests.protocol.native_corpus import main; main()", **env).splitlines()


@pytest.mark.skipif(native.mode() != "compiled", reason=f"this install runs its sources ({native.mode()})")
def test_compiled_and_source_give_the_same_events_and_rows() -> None:
    compiled = _corpus()
    source = _corpus(**{native.PURE_ENV: "1"})
    assert compiled[0] == "compiled"
    assert source[0] == f"pure: {native.PURE_ENV} is set"
    assert len(compiled) == len(source) > 5000
    different = [i for i, (a, b) in enumerate(zip(compiled, source, strict=True)) if i and a != b]
    assert not different, f"{len(different)} inputs differ, first: {compiled[different[0]][:500]}"
    stored = sum("PacketReceived" in line for line in compiled)
    refused = sum("FrameRejected" in line for line in compiled)
    assert stored > 1000 and refused > 1000  # the corpus reaches both sides


_WHERE = "import hj212gw.native as n, hj212gw.protocol.cp as cp; print(n.mode()); print(cp.__file__)"


@pytest.mark.skipif(native.mode() != "compiled", reason=f"this install runs its sources ({native.mode()})")
def test_the_switch_imports_every_listed_module_from_its_source() -> None:
    mode, where = _run(_WHERE, **{native.PURE_ENV: "1"}).splitlines()
    assert mode == f"pure: {native.PURE_ENV} is set"
    assert where.endswith("cp.py")
    imported = _run(
        "import importlib, json, hj212gw.native as n; "
        "print(json.dumps([importlib.import_module(m).__file__ for m in n.COMPILED_MODULES]))",
        **{native.PURE_ENV: "1"},
    )
    assert all(path.endswith(".py") for path in json.loads(imported))
    compiled = json.loads(
        _run(
            "import importlib, json, hj212gw.native as n; "
            "print(json.dumps([importlib.import_module(m).__file__ for m in n.COMPILED_MODULES]))"
        )
    )
    assert not any(path.endswith(".py") for path in compiled)


def _package_copy(root: Path) -> Path:
    """The package's `__init__` and `native` under `root`, and nothing else yet."""
    package = root / "hj212gw"
    source = Path(native.__file__).parent
    package.mkdir()
    (package / "__init__.py").write_text((source / "__init__.py").read_text())
    (package / "native.py").write_text((source / "native.py").read_text())
    return package


def _built_copy(root: Path) -> dict[str, Path]:
    """A copy of the package as a build leaves it: every listed module with an extension file
    beside its source (not loadable: only the sources may run) and a matching manifest."""
    package = _package_copy(root)
    listed = {m: package.joinpath(*m.split(".")[1:]).with_suffix(".py") for m in native.COMPILED_MODULES}
    for module, path in listed.items():
        _fake_extension(path, module)
    (package / native.MANIFEST).write_text(json.dumps({m: native.source_digest(p) for m, p in listed.items()}))
    return listed


def _fake_extension(path: Path, module: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "__init__.py").touch()
    path.write_text(f"WHO = {module!r}\n")
    path.with_suffix(importlib.machinery.EXTENSION_SUFFIXES[0]).write_bytes(b"not loadable")


def _import_from(root: Path, module: str) -> subprocess.CompletedProcess[str]:
    return _python(f"import hj212gw.native as n, {module} as m; print(n.mode()); print(m.WHO)", root=root)


def test_a_changed_source_runs_as_python_and_says_how_to_rebuild(tmp_path: Path) -> None:
    listed = _built_copy(tmp_path)
    listed["hj212gw.protocol.cp"].write_text("WHO = 'edited'\n")  # an edited checkout

    result = _import_from(tmp_path, "hj212gw.protocol.cp")
    mode, who = result.stdout.splitlines()
    assert mode == "pure: sources changed since compiled (hj212gw.protocol.cp)"
    assert who == "edited"  # the source ran, not the extension beside it
    assert "do not match their sources (first: hj212gw.protocol.cp)" in result.stderr
    assert "pip install -e ." in result.stderr


def test_an_extension_left_from_an_earlier_build_is_not_run(tmp_path: Path) -> None:
    """A module compiled once and no longer listed keeps its extension in an editable checkout
    (setup.py removes it at the next build): it would call into a group library that changed."""
    _built_copy(tmp_path)
    _fake_extension(tmp_path / "hj212gw" / "rules" / "packet.py", "hj212gw.rules.packet")

    result = _import_from(tmp_path, "hj212gw.rules.packet")
    mode, who = result.stdout.splitlines()
    assert mode == "pure: sources changed since compiled (hj212gw.rules.packet)"
    assert who == "hj212gw.rules.packet"  # from its source


def test_extensions_without_their_manifest_are_not_run(tmp_path: Path) -> None:
    """A build interrupted after compiling, or a manifest removed: nothing proves the extensions
    are of these sources, so the sources run."""
    _built_copy(tmp_path)
    (tmp_path / "hj212gw" / native.MANIFEST).unlink()

    result = _import_from(tmp_path, "hj212gw.protocol.cp")
    mode, who = result.stdout.splitlines()
    assert mode == f"pure: sources changed since compiled ({', '.join(native.COMPILED_MODULES)})"
    assert who == "hj212gw.protocol.cp"


def test_without_extensions_the_sources_run_and_nothing_is_said(tmp_path: Path) -> None:
    _package_copy(tmp_path)
    result = _python("import hj212gw.native as n; print(n.mode())", root=tmp_path)
    assert result.stdout.strip() == "pure: not compiled"
    assert result.stderr == ""
