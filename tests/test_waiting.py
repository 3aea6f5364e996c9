"""hj212gw.waiting: a timed wait for an event that never swallows a cancellation."""

import ast
import asyncio
from pathlib import Path

import pytest

from hj212gw.waiting import wait_set

SOURCES = Path(__file__).resolve().parent.parent / "src" / "hj212gw"


async def test_an_event_set_in_time_is_reported_set() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_soon(event.set)
    assert await wait_set(event, 5.0) is True


async def test_an_event_not_set_in_time_is_reported_unset() -> None:
    assert await wait_set(asyncio.Event(), 0.01) is False


async def test_a_cancel_in_the_same_turn_as_the_event_ends_the_waiting_loop() -> None:
    """The race of a supervised loop's stop: its wake-up event is set, and before the task runs
    again it is cancelled. `asyncio.wait_for` on Python 3.11 returned the event's result and the
    loop went round again, waiting for a wake-up that never came."""
    event = asyncio.Event()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            event.clear()
            rounds += 1
            await wait_set(event, 5.0)

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # the loop waits for its event
    assert rounds == 1
    event.set()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1.0)
    assert done == {task}
    assert task.cancelled()
    assert rounds == 1


async def test_a_cancel_while_waiting_propagates() -> None:
    task = asyncio.create_task(wait_set(asyncio.Event(), 5.0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _wait_for_calls(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "wait_for"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "asyncio"
    ]


def test_no_module_of_the_package_calls_asyncio_wait_for() -> None:
    """On Python 3.11 it may lose a cancellation (hj212gw.waiting): use wait_set or asyncio.timeout."""
    found = {str(p.relative_to(SOURCES)): lines for p in sorted(SOURCES.rglob("*.py")) if (lines := _wait_for_calls(p))}
    assert found == {}
