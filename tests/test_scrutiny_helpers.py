"""Shared helpers for the Scrutiny tests (an awaitable recorder of events and value updates), and
their own test.  Other test modules import them from here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from katclient.devices.scrutiny import ScrutinyClient, WatchableValue


class Recorder:
    """Collects items from a synchronous callback; lets a test await one matching a predicate."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def __call__(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    def extend(self, items: Sequence[Any]) -> None:
        self.items.extend(items)
        self._changed.set()

    def count(self, predicate: Callable[[Any], bool]) -> int:
        return sum(1 for item in self.items if predicate(item))

    async def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 5.0, start: int = 0) -> Any:
        """The first item (from index ``start``) matching ``predicate``, waiting up to ``timeout`` s."""

        async def scan() -> Any:
            index = start
            while True:
                while index < len(self.items):
                    item = self.items[index]
                    index += 1
                    if predicate(item):
                        return item
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(scan(), timeout)

    async def wait_count(self, predicate: Callable[[Any], bool], n: int, timeout: float = 5.0) -> None:
        """Wait until ``n`` items match."""

        async def scan() -> None:
            while self.count(predicate) < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(scan(), timeout)


def record(client: ScrutinyClient) -> tuple[Recorder, Recorder]:
    """``(events, values)`` recorders attached to ``client``."""
    events = Recorder()
    values = Recorder()
    client.add_event_callback(events)

    def on_values(batch: Sequence[WatchableValue]) -> None:
        values.extend(batch)

    client.add_value_callback(on_values)
    return events, values


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition (for state with no callback, e.g. a server's client count)."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def test_recorder_waits_for_later_items() -> None:
    rec = Recorder()
    rec(1)
    asyncio.get_running_loop().call_soon(rec.extend, [2, 3])
    assert await rec.wait_for(lambda x: x > 2) == 3
    await rec.wait_count(lambda x: x > 0, 3)
    flag: list[int] = []
    asyncio.get_running_loop().call_soon(flag.append, 1)
    await wait_until(lambda: bool(flag))
