"""Fixtures of the hostile tests."""

from collections.abc import AsyncIterator

import pytest

from hj212gw.cli import serve
from hj212gw.cli.serve import Running
from tests.integration.das import settings_for


@pytest.fixture
async def running(pg_dsn: str, schema: str) -> AsyncIterator[Running]:
    """A whole gateway (listener, writers, admin HTTP) on the test's schema."""
    started = await serve.start(settings_for(pg_dsn, schema))
    yield started
    await started.stop()
