"""Typed, immutable events of :class:`~katclient.client.blocking.BlockingClient`, and their queue.

Design after the Scrutiny SDK's event queue (seed 001, "Using events";
protocols/scrutiny.md section 2, "Events"): the user selects kinds of events with
``LISTEN_*`` bit flags (:class:`Events`), the client's I/O thread puts matching events
in a bounded queue, and any thread reads them with a blocking
:meth:`EventQueue.get` that returns ``None`` on timeout.  Differences from the SDK,
on purpose: the queue is larger (it also carries sensor updates), and when it is full
the *oldest* event is dropped, so a reader that falls behind still sees the latest
state; every drop is counted (:attr:`EventQueue.dropped`).

Every event is a frozen, slotted dataclass (STYLE.md habit 5) with the wall-clock
``timestamp`` (float seconds since the epoch) at which the client saw it happen.
This module does no I/O: it is plain data plus a thread-safe queue.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final

from katclient.client.inspecting import ModelChanges
from katclient.client.state import InspectingClientStateType
from katclient.protocol import InvalidUsage, Reading

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only (no cycle at run time)
    from katclient.client.blocking import PendingRequest

__all__ = [
    "EVENT_QUEUE_SIZE",
    "ClientEvent",
    "ConnectedEvent",
    "DisconnectedEvent",
    "SyncedEvent",
    "NotSyncedEvent",
    "ModelChangedEvent",
    "SensorUpdateEvent",
    "StateChangedEvent",
    "RequestCompletedEvent",
    "Events",
    "EventQueue",
]

#: Default capacity of the event queue.  The SDK keeps 100 events; katclient's queue
#: also carries sensor updates, so it holds ten times more before dropping the oldest.
EVENT_QUEUE_SIZE: Final = 1000


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """Base of every event.  :ivar timestamp: seconds since the epoch when it happened."""

    #: The ``LISTEN_*`` flag that selects this kind of event.
    flag: ClassVar[int] = 0

    timestamp: float


@dataclass(frozen=True, slots=True)
class ConnectedEvent(ClientEvent):
    """The TCP connection to the device is up (``LISTEN_CONNECTED``).

    :ivar host: the device's host; :ivar port: its TCP port.
    """

    flag: ClassVar[int] = 1

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class DisconnectedEvent(ClientEvent):
    """The connection ended (``LISTEN_DISCONNECTED``); the client reconnects unless disconnected.

    :ivar reason: why, e.g. ``"client disconnected"`` or the socket error's text.
    """

    flag: ClassVar[int] = 2

    host: str
    port: int
    reason: str


@dataclass(frozen=True, slots=True)
class SyncedEvent(ClientEvent):
    """The model is current: requests and sensors inspected, sampling set (``LISTEN_SYNCED``)."""

    flag: ClassVar[int] = 4

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class NotSyncedEvent(ClientEvent):
    """The model stopped being current: disconnect or ``#interface-changed`` (``LISTEN_NOT_SYNCED``)."""

    flag: ClassVar[int] = 8

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ModelChangedEvent(ClientEvent):
    """An inspection found a different model (``LISTEN_MODEL_CHANGED``).

    Also sent after the first inspection, with every name as added.

    :ivar changes: :class:`~katclient.client.inspecting.ModelChanges` (``requests`` and
        ``sensors``, each with ``added`` and ``removed`` frozensets; a modified item is in both).
    """

    flag: ClassVar[int] = 16

    changes: ModelChanges


@dataclass(frozen=True, slots=True)
class SensorUpdateEvent(ClientEvent):
    """A new reading of a sensor given to ``watch_sensors`` (``LISTEN_SENSOR_UPDATE``).

    :ivar name: the sensor name; :ivar reading: the :class:`~katclient.protocol.Reading`
        ``(timestamp, status, value)``.
    """

    flag: ClassVar[int] = 32

    name: str
    reading: Reading


@dataclass(frozen=True, slots=True)
class StateChangedEvent(ClientEvent):
    """Any change of the inspecting state (``LISTEN_STATE_CHANGED``; katcp.md 2.2).

    :ivar previous: the state before; :ivar state: the new
        :class:`~katclient.client.state.InspectingClientStateType`.
    """

    flag: ClassVar[int] = 64

    previous: InspectingClientStateType
    state: InspectingClientStateType


@dataclass(frozen=True, slots=True)
class RequestCompletedEvent(ClientEvent):
    """A request started with ``request_async`` completed (``LISTEN_REQUEST_COMPLETED``).

    :ivar request: the completed :class:`~katclient.client.blocking.PendingRequest`.
    :ivar name: the request name; :ivar is_success: ``ok`` reply;
    :ivar failure_reason: the device's reason or the error text, ``""`` on success.
    """

    flag: ClassVar[int] = 128

    request: PendingRequest
    name: str
    is_success: bool
    failure_reason: str


class Events:
    """``LISTEN_*`` flags to OR together for ``listen_events``, and the event classes.

    Named after the Scrutiny SDK's ``ScrutinyClient.Events`` (seed 001), so
    ``isinstance(event, Events.ConnectedEvent)`` reads as it does there.
    """

    LISTEN_NONE: Final = 0
    LISTEN_CONNECTED: Final = ConnectedEvent.flag
    LISTEN_DISCONNECTED: Final = DisconnectedEvent.flag
    LISTEN_SYNCED: Final = SyncedEvent.flag
    LISTEN_NOT_SYNCED: Final = NotSyncedEvent.flag
    LISTEN_MODEL_CHANGED: Final = ModelChangedEvent.flag
    LISTEN_SENSOR_UPDATE: Final = SensorUpdateEvent.flag
    LISTEN_STATE_CHANGED: Final = StateChangedEvent.flag
    LISTEN_REQUEST_COMPLETED: Final = RequestCompletedEvent.flag
    LISTEN_ALL: Final = 0xFFFFFFFF

    ClientEvent: Final = ClientEvent
    ConnectedEvent: Final = ConnectedEvent
    DisconnectedEvent: Final = DisconnectedEvent
    SyncedEvent: Final = SyncedEvent
    NotSyncedEvent: Final = NotSyncedEvent
    ModelChangedEvent: Final = ModelChangedEvent
    SensorUpdateEvent: Final = SensorUpdateEvent
    StateChangedEvent: Final = StateChangedEvent
    RequestCompletedEvent: Final = RequestCompletedEvent


def check_flags(value: object, what: str) -> int:
    """Validate a ``LISTEN_*`` combination.  :raises InvalidUsage: not a non-negative int."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidUsage(f"{what} must be an int made of Events.LISTEN_* flags, not {value!r}")
    if value < 0:
        raise InvalidUsage(f"{what} must not be negative: {value}")
    return value


class EventQueue:
    """A bounded, thread-safe FIFO of events, filtered by ``LISTEN_*`` flags.

    :param maxsize: capacity (default :data:`EVENT_QUEUE_SIZE`); when full, the oldest
        event is dropped and :attr:`dropped` grows by one.
    :param enabled: initial ``LISTEN_*`` flags.
    :raises InvalidUsage: for a capacity below 1 or bad flags.

    :meth:`put` never blocks (the I/O thread calls it); :meth:`get` blocks the reader.
    """

    def __init__(self, maxsize: int = EVENT_QUEUE_SIZE, enabled: int = 0) -> None:
        if maxsize < 1:
            raise InvalidUsage(f"event queue size must be at least 1, not {maxsize}")
        self.maxsize = maxsize
        self._enabled = check_flags(enabled, "enabled_events")
        self._items: collections.deque[ClientEvent] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._dropped = 0

    @property
    def enabled(self) -> int:
        """The ``LISTEN_*`` flags in force."""
        return self._enabled

    @property
    def dropped(self) -> int:
        """How many events were dropped because the queue was full."""
        return self._dropped

    def listen(self, enabled: int, disabled: int = 0) -> None:
        """Add the ``enabled`` flags, then remove the ``disabled`` ones.

        :raises InvalidUsage: for a value that is not a non-negative int.
        """
        check_flags(enabled, "enabled")
        check_flags(disabled, "disabled")
        with self._cond:
            self._enabled = (self._enabled | enabled) & ~disabled

    def wants(self, flag: int) -> bool:
        """True if events selected by ``flag`` are being listened to."""
        return bool(self._enabled & flag)

    def put(self, event: ClientEvent) -> bool:
        """Queue ``event`` if its kind is enabled; never blocks.  Returns True if queued."""
        if not self._enabled & event.flag:
            return False
        with self._cond:
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self._dropped += 1
            self._items.append(event)
            self._cond.notify()
        return True

    def get(self, timeout: float | None = None) -> ClientEvent | None:
        """The oldest event, waiting at most ``timeout`` seconds (``None``: for ever).

        :returns: the event, or ``None`` when none arrived in time.
        :raises InvalidUsage: for a negative timeout.
        """
        if timeout is not None and timeout < 0:
            raise InvalidUsage(f"timeout must not be negative: {timeout}")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if deadline is None:
                    self._cond.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return self._items.popleft()

    def pending(self) -> bool:
        """True if at least one event is waiting."""
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> int:
        """Drop every waiting event; returns how many there were (not counted as dropped)."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            return n
