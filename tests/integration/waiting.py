"""Polling helpers for what the gateway writes in the background (rows nobody acks, sightings)."""

import asyncio
from collections.abc import Awaitable, Callable


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 5.0) -> None:
    """Poll `check` until it is true (the rows of a packet nobody acks commit in the background)."""
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.02)


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll a cheap in-process condition (a metric) until it holds."""
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.02)
