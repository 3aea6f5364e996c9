"""Shared fixture paths and helpers for the pure protocol tests (no event loop, no network)."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hj212gw.protocol.framing import encode_frame

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
FIRST = FIXTURES / "packets/good/hj212-2017-std/1062-standard-example.hj212"
# The standard's own example frame first, then every other good fixture.
GOOD = [FIRST, *sorted(p for p in FIXTURES.glob("packets/good/**/*.hj212") if p != FIRST)]
BAD = sorted(FIXTURES.glob("packets/bad/*.hj212"))
SM4 = sorted(FIXTURES.glob("packets/sm4/*.hj212"))
T0 = datetime(2024, 3, 15, 2, 0, 0, tzinfo=UTC)  # 10:00 in Asia/Shanghai
MN = "010000A8900016F000169DC0"  # the MN of the hj212-2017-std fixtures


def expected(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    return data


def fixture_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def std(name: str) -> bytes:
    """The wire bytes of a fixture of the standard's examples (hj212-2017-std/<name>.hj212)."""
    return (FIRST.parent / f"{name}.hj212").read_bytes()


def frame(segment: str) -> bytes:
    return encode_frame(segment.encode())
