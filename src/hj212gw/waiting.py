"""Waiting for an `asyncio.Event` with a timeout, without losing a cancellation.

On Python 3.11, `asyncio.wait_for(aw, timeout)` returns the result when `aw` completes in the
same turn as the waiting task is cancelled, and the cancellation is lost (CPython gh-86296; 3.12
rewrote `wait_for` on `asyncio.timeout`). A supervised loop that waited for its wake-up event that
way ran on after `Supervisor.stop` cancelled it whenever the event was set just then, and the stop
waited out its timeout and logged `task_stop_timeout`. Seen on every stop of a gateway sending
backfill fetches. `asyncio.timeout` lets the cancellation through, so every timed wait in the
package goes through it (tests/test_waiting.py also keeps `asyncio.wait_for` out of the sources).
"""

import asyncio


async def wait_set(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `event` is set, at most `timeout_s`; whether it is set. A cancellation always
    propagates, also one that comes in the same turn as the event."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        pass
    return event.is_set()
