"""`clean_env`: run in an empty directory with no HJ212GW_CONFIG or HJ212GW_DATABASE_URL set."""

from pathlib import Path

import pytest


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HJ212GW_CONFIG", raising=False)
    monkeypatch.delenv("HJ212GW_DATABASE_URL", raising=False)
