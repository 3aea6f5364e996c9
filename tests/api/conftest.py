"""The `api` fixture: the admin application on a test server over the test schema."""

from collections.abc import AsyncIterator

import pytest

from hj212gw.storage.db import Database
from tests.api.harness import Harness, make_harness


@pytest.fixture
async def api(db: Database) -> AsyncIterator[Harness]:
    harness = make_harness(db)
    async with harness.client:
        yield harness
