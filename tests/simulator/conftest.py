from collections.abc import AsyncIterator

import pytest

from tests.simulator.receiver import ReferenceReceiver


@pytest.fixture
async def receiver() -> AsyncIterator[ReferenceReceiver]:
    server = ReferenceReceiver()
    await server.start()
    yield server
    await server.close()
