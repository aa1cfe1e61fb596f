"""The event classes, flags and bounded queue of the blocking client (no I/O)."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from katclient.client.events import (
    EventQueue,
    Events,
    ModelChangedEvent,
    SensorUpdateEvent,
    StateChangedEvent,
)
from katclient.client.inspecting import Changes, ModelChanges
from katclient.client.state import CONNECTED, DISCONNECTED
from katclient.errors import InvalidUsage, KatclientError
from katclient.protocol import Reading, Status

EVENT_CLASSES = [
    Events.ConnectedEvent,
    Events.DisconnectedEvent,
    Events.SyncedEvent,
    Events.NotSyncedEvent,
    Events.ModelChangedEvent,
    Events.SensorUpdateEvent,
    Events.StateChangedEvent,
    Events.RequestCompletedEvent,
]


def connected(i: int = 0) -> Events.ConnectedEvent:
    return Events.ConnectedEvent(float(i), "127.0.0.1", 7000 + i)


def test_flags_are_distinct_bits_and_listen_all_covers_them() -> None:
    flags = [cls.flag for cls in EVENT_CLASSES]
    assert len(set(flags)) == len(flags)
    for flag in flags:
        assert flag > 0 and flag & (flag - 1) == 0
        assert Events.LISTEN_ALL & flag
    assert Events.LISTEN_CONNECTED == Events.ConnectedEvent.flag
    assert Events.LISTEN_SENSOR_UPDATE == Events.SensorUpdateEvent.flag
    assert Events.LISTEN_NONE == 0


def test_events_are_immutable_and_slotted() -> None:
    event = SensorUpdateEvent(1.0, "counter", Reading(1.0, Status.NOMINAL, 3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.name = "other"  # type: ignore[misc]
    assert not hasattr(event, "__dict__")
    changes = ModelChanges(sensors=Changes(added=frozenset({"a"})))
    assert ModelChangedEvent(2.0, changes).changes.sensors.added == {"a"}
    assert StateChangedEvent(3.0, DISCONNECTED, CONNECTED).state.connected


def test_queue_filters_by_enabled_flags() -> None:
    q = EventQueue(10)
    assert not q.put(connected())
    assert q.get(timeout=0) is None
    q.listen(Events.LISTEN_CONNECTED | Events.LISTEN_SYNCED)
    assert q.put(connected(1))
    assert not q.put(Events.DisconnectedEvent(2.0, "h", 1, "gone"))
    q.listen(0, Events.LISTEN_CONNECTED)
    assert not q.put(connected(3))
    assert q.put(Events.SyncedEvent(4.0, "h", 1))
    assert [q.get(0), q.get(0), q.get(0)] == [connected(1), Events.SyncedEvent(4.0, "h", 1), None]


def test_full_queue_drops_the_oldest_and_counts() -> None:
    q = EventQueue(3, Events.LISTEN_ALL)
    for i in range(5):
        q.put(connected(i))
    assert q.dropped == 2
    assert len(q) == 3
    assert [q.get(0) for _ in range(3)] == [connected(2), connected(3), connected(4)]
    assert not q.pending()


def test_clear_returns_count_and_does_not_count_as_dropped() -> None:
    q = EventQueue(5, Events.LISTEN_ALL)
    q.put(connected(1))
    q.put(connected(2))
    assert q.clear() == 2
    assert q.dropped == 0 and q.get(0) is None


def test_get_blocks_until_another_thread_puts() -> None:
    q = EventQueue(5, Events.LISTEN_ALL)
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.append(q.get(timeout=30)))
    reader.start()
    q.put(connected(7))
    reader.join(30)
    assert got == [connected(7)]


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True, None])
def test_bad_flags_are_invalid_usage(bad: object) -> None:
    q = EventQueue(5)
    with pytest.raises(InvalidUsage):
        q.listen(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidUsage):
        EventQueue(5, bad)  # type: ignore[arg-type]


def test_bad_sizes_and_timeouts_are_invalid_usage() -> None:
    with pytest.raises(InvalidUsage):
        EventQueue(0)
    with pytest.raises(InvalidUsage) as info:
        EventQueue(1).get(timeout=-1)
    assert isinstance(info.value, KatclientError) and isinstance(info.value, ValueError)
