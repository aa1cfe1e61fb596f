"""``BlockingClient``: a synchronous, thread-safe facade over :class:`InspectingClientAsync`.

For IPython and Jupyter consoles and plain scripts, where a Tornado client cannot run
on its own.  The design follows the Scrutiny SDK's client (seeds 000 and 001;
protocols/scrutiny.md section 2): operations block with timeouts; a background I/O
thread owns the connection; :meth:`BlockingClient.get_status` returns an immutable
snapshot; long operations return a :class:`PendingRequest`; an optional bounded event
queue (:mod:`katclient.client.events`) bridges to other frameworks; every error is a
:class:`~katclient.errors.KatclientError`.

Threads, per connection (all joined by :meth:`BlockingClient.disconnect`):

* the **I/O thread** runs an asyncio event loop (Tornado 6 runs on asyncio) with the
  :class:`InspectingClientAsync`.  Every touch of that client happens there
  (``asyncio.run_coroutine_threadsafe``/``call_soon_threadsafe``), and no user code
  ever runs there: it only copies readings and queues events.  A caller may share one
  :class:`IOThread` between several clients instead.
* the **listener thread** calls sensor and state listeners, in order.

Because the facade's loop runs in its own thread, the blocking calls work from any
thread, including one whose own asyncio loop is running (a Jupyter kernel, an
``async def`` test): they block that thread but never need its loop.  They must not
be called from the I/O thread itself (:class:`InvalidUsage`).

Timeouts are float seconds; :data:`DEFAULT` means "the client's ``timeout``" (for a
request: its ``?request-timeout-hint`` when the device gives one); ``None`` waits for
ever (STYLE.md habit 14).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextlib
import datetime
import enum
import logging
import math
import queue
import threading
import time
import types
import weakref
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from tornado.iostream import IOStream
from tornado.tcpclient import TCPClient

from katclient.client.events import (
    EVENT_QUEUE_SIZE,
    ClientEvent,
    ConnectedEvent,
    DisconnectedEvent,
    EventQueue,
    Events,
    ModelChangedEvent,
    NotSyncedEvent,
    RequestCompletedEvent,
    SensorUpdateEvent,
    StateChangedEvent,
    SyncedEvent,
)
from katclient.client.inspecting import InspectingClientAsync, ModelChanges, StreamFactory, raise_for_reply
from katclient.client.sensor import RequestType, Sensor
from katclient.client.state import DISCONNECTED, InspectingClientStateType
from katclient.client.timeouts import DEFAULT, Timeout
from katclient.errors import (
    InvalidUsage,
    KatclientConnectionError,
    KatclientError,
    KatclientTimeoutError,
    OperationFailure,
)
from katclient.protocol import Message, ProtocolFlags, Reading, Status
from katclient.protocol.sensors import ReadingView
from katclient.targets import open_target, split_target

__all__ = [
    "DEFAULT",
    "BlockingClient",
    "BlockingRequest",
    "BlockingSensor",
    "ClientStatus",
    "ConnectionState",
    "Events",
    "IOThread",
    "PendingRequest",
    "SyncState",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")



#: Seconds to wait for a new I/O thread's event loop to start running.
IO_START_TIMEOUT: Final = 10.0
#: Seconds ``disconnect`` allows the inspecting client, a virtual device, in-flight
#: requests and each thread to stop; past it the rest is abandoned with a warning.
STOP_TIMEOUT: Final = 10.0
#: Listener calls waiting for the listener thread.  A slow listener must not make the
#: I/O thread buffer without limit; past this the newest calls are dropped and counted.
LISTENER_QUEUE_SIZE: Final = 10_000
#: Readings kept for one ``BlockingSensor.wait`` between two evaluations of its
#: condition; a reading flood drops the oldest, the latest is always evaluated.
WAIT_BACKLOG: Final = 1000
#: Extra seconds a blocked caller waits beyond a request's own timeout before it
#: gives up on the I/O thread (which normally reports the timeout itself).
RESULT_GRACE: Final = 5.0


# ====================================================================== the I/O thread
class IOThread:
    """A thread running an asyncio event loop, for one or more :class:`BlockingClient`.

    :param name: the thread's name.

    ``start()`` it (or use it as a context manager), pass it as ``io_thread=`` to clients,
    ``stop()`` it when they are disconnected.  Clients that create their own stop it.
    The loop is run by :func:`asyncio.run`, so stopping also cancels leftover tasks and
    shuts down the loop's default executor (Tornado's resolver threads).
    """

    def __init__(self, name: str = "katclient-io") -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, timeout: float = IO_START_TIMEOUT) -> None:
        """Start the thread and wait until its loop runs.

        :raises InvalidUsage: already started.
        :raises KatclientError: the loop did not start within ``timeout`` seconds.
        """
        if self._thread is not None:
            raise InvalidUsage(f"I/O thread {self.name} already started")
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._loop is None:
            raise KatclientError(f"I/O thread {self.name} did not start: {self._error or 'timeout'}")

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # never expected; report it to start() and the log
            self._error = exc
            logger.exception("I/O thread %s failed", self.name)
        finally:
            self._loop = None
            self._ready.set()

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        await self._stop_event.wait()

    def stop(self, timeout: float | None = STOP_TIMEOUT) -> None:
        """Stop the loop and join the thread.  Idempotent.

        :raises InvalidUsage: called from the I/O thread itself.
        """
        thread = self._thread
        if thread is None:
            return
        if threading.current_thread() is thread:
            raise InvalidUsage("an I/O thread cannot stop itself")
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("I/O thread %s did not stop within %s s", self.name, timeout)
            return
        self._thread = None  # it may be started again
        self._ready.clear()

    def __enter__(self) -> IOThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- access ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True while the loop runs."""
        return self._loop is not None and self._thread is not None and self._thread.is_alive()

    @property
    def ident(self) -> int | None:
        """The thread's identifier, or ``None`` before it started."""
        return self._thread.ident if self._thread is not None else None

    def in_thread(self) -> bool:
        """True when called from this I/O thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop.  :raises KatclientConnectionError: the thread is not running."""
        loop = self._loop
        if loop is None:
            raise KatclientConnectionError(f"I/O thread {self.name} is not running")
        return loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns a :class:`concurrent.futures.Future`.

        :raises KatclientConnectionError: the loop is not running (``coro`` is closed).
        """
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop)
        except (RuntimeError, KatclientConnectionError) as exc:
            coro.close()
            raise KatclientConnectionError(f"I/O thread {self.name} is not running") from exc

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run ``coro`` on the loop and wait for its result, for at most ``timeout`` seconds.

        :raises KatclientTimeoutError: no result in time (``coro`` is cancelled).
        :raises KatclientConnectionError: the loop stopped before ``coro`` ended.
        :raises InvalidUsage: called from the I/O thread (it would deadlock).

        Other exceptions of ``coro`` propagate unchanged.
        """
        if self.in_thread():
            coro.close()
            raise InvalidUsage("blocking call from the client's own I/O thread")
        future = self.submit(coro)
        return _result(future, timeout, f"I/O thread {self.name}")

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = STOP_TIMEOUT) -> T:
        """Call ``fn(*args)`` in the I/O thread and return its result (see :meth:`run`)."""

        async def wrapper() -> T:
            return fn(*args)

        return self.run(wrapper(), timeout)


def _result(future: concurrent.futures.Future[T], timeout: float | None, what: str) -> T:
    """Wait for a cross-thread future, mapping waits and cancellation to katclient errors."""
    try:
        return future.result(timeout)
    except KatclientError:
        raise
    except concurrent.futures.CancelledError:
        raise KatclientConnectionError(f"{what} stopped before the operation completed") from None
    except concurrent.futures.TimeoutError:
        if future.done():  # the operation itself raised a builtin TimeoutError
            raise
        future.cancel()
        raise KatclientTimeoutError(f"{what}: no result after {timeout} s") from None


# ====================================================================== listener thread
class _Dispatcher:
    """The thread that runs user listeners, in order, outside the I/O thread."""

    _STOP: Final = object()

    def __init__(self, name: str, maxsize: int = LISTENER_QUEUE_SIZE) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.dropped = 0

    def start(self) -> None:
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue ``fn(*args)``; never blocks (called in the I/O thread)."""
        try:
            self._queue.put_nowait((fn, args))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % LISTENER_QUEUE_SIZE == 0:
                logger.warning("%s: listeners too slow, %d calls dropped", self._thread.name, self.dropped)

    def _main(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:
                logger.exception("listener %r failed", fn)

    def stop(self, timeout: float | None = STOP_TIMEOUT) -> None:
        """Run what is queued, then end the thread and join it (unless called from it)."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(self._STOP, timeout=timeout)
        except queue.Full:
            logger.warning("%s: listener queue stuck; thread abandoned", self._thread.name)
            return
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("%s did not stop within %s s (a listener is blocked)", self._thread.name, timeout)


# ====================================================================== status snapshot
class ConnectionState(enum.Enum):
    """Connection part of :class:`ClientStatus`."""

    DISCONNECTED = "disconnected"  #: not started, or disconnected by the user
    CONNECTING = "connecting"  #: running, TCP connection not up (yet or again)
    CONNECTED = "connected"  #: TCP connection up


class SyncState(enum.Enum):
    """Model part of :class:`ClientStatus` (katcp.md 2.2)."""

    NOT_SYNCED = "not synced"  #: not connected
    SYNCING = "syncing"  #: connected, inspecting (or waiting to retry a failed sync)
    DATA_SYNCED = "data synced"  #: model fetched, sampling being set
    SYNCED = "synced"  #: model current


@dataclass(frozen=True)
class ClientStatus:
    """An immutable snapshot of a :class:`BlockingClient` (seed 000: ``get_server_status``).

    :ivar name: the client's name.
    :ivar target: what was given to ``connect`` (``""`` before).
    :ivar host: device host; :ivar port: device port (a virtual device's loopback address).
    :ivar state: the :class:`~katclient.client.state.InspectingClientStateType`.
    :ivar connection_state: :class:`ConnectionState`; :ivar sync_state: :class:`SyncState`.
    :ivar protocol: negotiated :class:`~katclient.protocol.ProtocolFlags`, or ``None``.
    :ivar versions: the device's ``#version-connect`` informs, e.g.
        ``{"katcp-protocol": ("5.1-MIB",), "katcp-device": ("dev-1.0", "dev-1.0.0")}``.
    :ivar request_count: requests in the model; :ivar sensor_count: sensors in the model.
    :ivar last_error: text of the last connection or sync error, or ``None``.
    :ivar pending_requests: requests sent through this client and not yet answered.
    :ivar dropped_events: events dropped from the full event queue.
    :ivar dropped_listener_calls: listener calls dropped because listeners were too slow.
    :ivar taken_at: when the snapshot was taken (local time zone).
    """

    name: str
    target: str = ""
    host: str = ""
    port: int = 0
    state: InspectingClientStateType = DISCONNECTED
    connection_state: ConnectionState = ConnectionState.DISCONNECTED
    sync_state: SyncState = SyncState.NOT_SYNCED
    protocol: ProtocolFlags | None = None
    versions: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: types.MappingProxyType({}))
    request_count: int = 0
    sensor_count: int = 0
    last_error: str | None = None
    pending_requests: int = 0
    dropped_events: int = 0
    dropped_listener_calls: int = 0
    taken_at: datetime.datetime = field(default_factory=lambda: datetime.datetime.now().astimezone())

    @property
    def connected(self) -> bool:
        return self.state.connected

    @property
    def synced(self) -> bool:
        return self.state.synced


def _error_text(error: BaseException | None) -> str | None:
    """Readable text of an error; Tornado's ``StreamClosedError`` hides the socket error in ``real_error``."""
    if error is None:
        return None
    error = getattr(error, "real_error", None) or error
    return str(error) or type(error).__name__


def _sync_state(state: InspectingClientStateType) -> SyncState:
    if state.synced:
        return SyncState.SYNCED
    if state.data_synced:
        return SyncState.DATA_SYNCED
    return SyncState.SYNCING if state.connected else SyncState.NOT_SYNCED


# ====================================================================== pending requests
class PendingRequest:
    """A request in flight, returned by :meth:`BlockingClient.request_async` (seed 000).

    Thread-safe: any thread may wait on it or read its properties.
    """

    def __init__(self, name: str, arguments: tuple[Any, ...]) -> None:
        #: The request name and its arguments as given.
        self.name = name
        self.arguments = arguments
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._reply: Message | None = None
        self._informs: tuple[Message, ...] = ()
        self._error: KatclientError | None = None
        self._completion: datetime.datetime | None = None

    def _finish(
        self, reply: Message | None = None, informs: list[Message] | None = None, error: KatclientError | None = None
    ) -> bool:
        """Record the outcome (first call wins); returns True if this call completed it."""
        with self._lock:
            if self._done.is_set():
                return False
            self._reply = reply
            self._informs = tuple(informs or ())
            self._error = error
            self._completion = datetime.datetime.now().astimezone()
            self._done.set()
            return True

    def wait_for_completion(self, timeout: float | None = None) -> tuple[Message, list[Message]]:
        """Wait until the request completed.

        :param timeout: seconds to wait; ``None`` waits until the request ends (its own
            timeout, a reply, a disconnect).
        :returns: ``(reply, informs)`` of an ``ok`` reply.
        :raises KatclientTimeoutError: not complete within ``timeout`` (the request goes on),
            or the request itself timed out.
        :raises FailReply: the device replied ``fail`` (``.reason`` is its reason).
        :raises InvalidReply: the device replied ``invalid``.
        :raises KatclientConnectionError: the connection dropped or the client disconnected.
        """
        return self._result(timeout, check=True)

    def _result(self, timeout: float | None, check: bool) -> tuple[Message, list[Message]]:
        if timeout is not None and timeout < 0:
            raise InvalidUsage(f"timeout must not be negative: {timeout}")
        if not self._done.wait(timeout):
            raise KatclientTimeoutError(f"?{self.name} not completed after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._reply is not None  # set together with _done when there is no error
        if check:
            raise_for_reply(self._reply)
        return self._reply, list(self._informs)

    @property
    def completed(self) -> bool:
        """True once the request has a reply or failed."""
        return self._done.is_set()

    @property
    def is_success(self) -> bool:
        """True if completed with an ``ok`` reply."""
        return self._done.is_set() and self._error is None and self._reply is not None and self._reply.reply_ok()

    @property
    def completion_datetime(self) -> datetime.datetime | None:
        """When it completed (local time zone), ``None`` while in flight."""
        return self._completion

    @property
    def failure_reason(self) -> str:
        """The device's reason for a ``fail``/``invalid`` reply, or the error's text; ``""`` otherwise."""
        if not self._done.is_set():
            return ""
        if self._error is not None:
            return str(self._error) or type(self._error).__name__
        if self._reply is not None and not self._reply.reply_ok():
            try:
                raise_for_reply(self._reply)
            except OperationFailure as exc:
                return exc.reason
        return ""

    @property
    def reply(self) -> Message | None:
        """The reply message (any code), ``None`` while in flight or after an error."""
        return self._reply

    @property
    def informs(self) -> list[Message]:
        """The informs that came with the reply."""
        return list(self._informs)

    @property
    def error(self) -> KatclientError | None:
        """The timeout or connection error that ended the request, if any."""
        return self._error

    def __repr__(self) -> str:
        if not self.completed:
            state = "in flight"
        elif self.is_success:
            state = "ok"
        else:
            state = f"failed: {self.failure_reason}"
        return f"<PendingRequest ?{self.name} {state}>"


# ====================================================================== model objects
class BlockingSensor(ReadingView):
    """A sensor of the device, safe to use from any thread.

    Its reading is a copy kept current by the I/O thread; listeners run in the
    client's listener thread.  The same object stays in use across re-syncs and
    reconnects while the device keeps a sensor of that name.

    :ivar name: sensor name; :ivar sensor_type: wire type name (``"float"``...);
    :ivar description: description; :ivar units: units; :ivar params: type parameters.
    """

    def __init__(self, client: BlockingClient, name: str) -> None:
        self._client = client
        self.name = name
        self.sensor_type = ""
        self.description = ""
        self.units = ""
        self.params: tuple[Any, ...] = ()
        self._reading = Reading(0.0, Status.UNKNOWN, None)
        self._inner: Sensor | None = None
        self._observer = self._on_reading
        self._listeners: tuple[Callable[[BlockingSensor, Reading], Any], ...] = ()
        self._cond = threading.Condition(threading.Lock())
        self._waiters: list[collections.deque[Reading]] = []
        self._generation = 0

    # -- I/O thread side -------------------------------------------------------------------
    def _bind(self, inner: Sensor) -> None:
        """Follow ``inner`` (I/O thread)."""
        if self._inner is not inner:
            if self._inner is not None:
                self._inner.detach(self._observer)
            if self._observer not in inner.observers:  # a retyped sensor carries its observers over
                inner.attach(self._observer)
            self._inner = inner
        self.sensor_type = inner.type.name
        self.description = inner.description
        self.units = inner.units
        self.params = tuple(inner.params)
        # Copy silently: a re-sync is not a new reading (the observer reports the next one).
        self._reading = inner.reading

    def _unbind(self) -> None:
        if self._inner is not None:
            self._inner.detach(self._observer)
            self._inner = None

    def _on_reading(self, sensor: Sensor, reading: Reading) -> None:
        """Observer of the inner sensor (I/O thread): copy, then hand over; never runs user code."""
        self._reading = reading
        client = self._client
        if self._listeners:
            client._dispatch(self._notify_listeners, reading)
        if self._waiters:
            with self._cond:
                for backlog in self._waiters:
                    backlog.append(reading)
                self._cond.notify_all()
        if self.name in client._watched and client._events.wants(Events.LISTEN_SENSOR_UPDATE):
            client._events.put(SensorUpdateEvent(time.time(), self.name, reading))

    def _notify_listeners(self, reading: Reading) -> None:
        for listener in self._listeners:
            try:
                listener(self, reading)
            except Exception:
                logger.exception("sensor %s: listener %r failed", self.name, listener)

    def _interrupt(self) -> None:
        """Wake every waiter with a connection error (the client disconnected)."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    # -- user side -------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[BlockingSensor, Reading], Any]) -> None:
        """Call ``listener(sensor, reading)`` for every new reading, in the listener thread."""
        with self._cond:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Callable[[BlockingSensor, Reading], Any]) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        with self._cond:
            self._listeners = tuple(x for x in self._listeners if x != listener)

    def wait(self, condition: Any, timeout: Timeout = DEFAULT) -> Reading:
        """Block until a reading satisfies ``condition``.

        :param condition: a callable ``condition(reading) -> bool`` (called in the waiting
            thread), or a value: then the reading's value must equal it with a status that
            carries a value (nominal, warn or error).
        :param timeout: seconds; :data:`DEFAULT` is the client's ``timeout``; ``None`` for ever.
        :returns: the first reading (the current one, or a later one) that satisfied it.
            Every reading that arrives while waiting is checked, up to :data:`WAIT_BACKLOG`
            between two checks.
        :raises KatclientTimeoutError: not satisfied in time.
        :raises KatclientConnectionError: the client is not connected, or disconnected meanwhile.
        :raises InvalidUsage: called from the I/O thread.
        """
        client = self._client
        client._check_caller()
        limit = client._resolve_timeout(timeout)
        if client._session is None:
            raise KatclientConnectionError(f"sensor {self.name}: client {client.name} is not connected")
        predicate: Callable[[Reading], Any] = condition if callable(condition) else _equals(condition)
        deadline = None if limit is None else time.monotonic() + limit
        backlog: collections.deque[Reading] = collections.deque(maxlen=WAIT_BACKLOG)
        with self._cond:
            generation = self._generation
            self._waiters.append(backlog)
        try:
            # disconnect() clears the session before it interrupts waiters: a waiter that
            # registered after the interrupt sees no session here.
            if client._session is None:
                raise KatclientConnectionError(f"sensor {self.name}: client {client.name} is not connected")
            candidates = [self._reading]
            while True:
                for reading in candidates:
                    if predicate(reading):
                        return reading
                with self._cond:
                    while not backlog and self._generation == generation:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            raise KatclientTimeoutError(
                                f"sensor {self.name}: condition not met after {limit} s (reading {self._reading})"
                            )
                        self._cond.wait(remaining)
                    if self._generation != generation:
                        raise KatclientConnectionError(f"sensor {self.name}: client {client.name} disconnected")
                    candidates = list(backlog)
                    backlog.clear()
        finally:
            with self._cond:
                self._waiters.remove(backlog)

    def set_sampling(self, strategy: str, *params: float, timeout: Timeout = DEFAULT) -> None:
        """Set this sensor's sampling strategy; see :meth:`BlockingClient.set_sampling`."""
        self._client.set_sampling(self.name, strategy, *params, timeout=timeout)

    def __repr__(self) -> str:
        ts, status, value = self._reading
        return f"<BlockingSensor {self.name} {self.sensor_type} {status.name.lower()} {value!r} @{ts:.3f}>"


def _equals(value: Any) -> Callable[[Reading], bool]:
    """Condition: the reading carries ``value`` with a status that has a value (nominal/warn/error)."""

    def condition(reading: Reading) -> bool:
        return bool(reading[1].valid_value() and reading[2] == value)

    return condition


class BlockingRequest:
    """A request of the device; call it to send it: ``client.requests["name"](*args)``.

    Its docstring (``help(req)``, ``req?`` in IPython) is the device's ``?help`` text.

    :ivar name: request name; :ivar description: ``?help`` text;
    :ivar timeout_hint: seconds from ``?request-timeout-hint``, or ``None``.
    """

    def __init__(self, client: BlockingClient, info: RequestType) -> None:
        self._client = client
        self.name = info.name
        self.description = info.description
        self.timeout_hint = info.timeout_hint
        self.__doc__ = info.description
        self._info = info

    def __call__(
        self, *args: Any, timeout: Timeout = DEFAULT, check: bool = True
    ) -> tuple[Message, list[Message]]:
        """Send the request and wait for the reply; see :meth:`BlockingClient.simple_request`."""
        return self._client.simple_request(self.name, *args, timeout=timeout, check=check)

    def call_async(self, *args: Any, timeout: Timeout = DEFAULT) -> PendingRequest:
        """Send the request; see :meth:`BlockingClient.request_async`."""
        return self._client.request_async(self.name, *args, timeout=timeout)

    def __repr__(self) -> str:
        hint = f" (timeout hint {self.timeout_hint:g} s)" if self.timeout_hint else ""
        return f"<BlockingRequest ?{self.name}{hint}: {self.description}>"


# ====================================================================== the client
class _Session:
    """Everything one ``connect`` created; owned by the facade, torn down as a whole."""

    def __init__(self, io: IOThread, owns_io: bool, dispatcher: _Dispatcher, target: str) -> None:
        self.io = io
        self.owns_io = owns_io
        self.dispatcher = dispatcher
        self.target = target
        self.host = ""
        self.port = 0
        self.inner: InspectingClientAsync | None = None
        self.stack = contextlib.AsyncExitStack()
        self.state = DISCONNECTED
        self.closing = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self.request_timeout = 0.0


class BlockingClient:
    """A synchronous KATCP inspecting client for consoles and scripts.  Thread-safe.

    :param name: name used in logs and thread names.
    :param timeout: default timeout in seconds for connecting, syncing, requests (without
        a device hint), sampling and waits.
    :param enabled_events: ``Events.LISTEN_*`` flags to listen to from the start.
    :param io_thread: a started :class:`IOThread` to share; by default each ``connect``
        starts a thread of its own and ``disconnect`` joins it.
    :param event_queue_size: capacity of the event queue (oldest dropped when full).
    :raises InvalidUsage: for bad flags, a negative timeout or a queue size below 1.

    Example (against any KATCP device)::

        client = BlockingClient(enabled_events=Events.LISTEN_SYNCED)
        with client.connect("127.0.0.1:7147"):
            print(client.get_status().versions)
            client.sensors["counter"].wait(3, timeout=5.0)
            reply, informs = client.requests["bump"](1)
            event = client.read_event(timeout=1.0)
    """

    def __init__(
        self,
        name: str | None = None,
        timeout: float = 4.0,
        enabled_events: int = 0,
        *,
        io_thread: IOThread | None = None,
        event_queue_size: int = EVENT_QUEUE_SIZE,
    ) -> None:
        if timeout is None or timeout < 0:
            raise InvalidUsage(f"timeout must be a non-negative number of seconds, not {timeout!r}")
        self.name = name or "katclient"
        self.timeout = float(timeout)
        self._events = EventQueue(event_queue_size, enabled_events)
        self._io_thread = io_thread
        self._lock = threading.RLock()  # connect/disconnect
        self._config_lock = threading.Lock()  # samplings, watched names, listeners
        self._session: _Session | None = None
        self._sensors: dict[str, BlockingSensor] = {}
        self._requests: dict[str, BlockingRequest] = {}
        self._known_sensors: weakref.WeakValueDictionary[str, BlockingSensor] = weakref.WeakValueDictionary()
        self._samplings: dict[str, tuple[str, tuple[float, ...]]] = {}
        self._watched: frozenset[str] = frozenset()
        self._state_listeners: tuple[Callable[[InspectingClientStateType, ModelChanges | None], Any], ...] = ()
        self._status = ClientStatus(self.name)
        self._dropped_listener_calls = 0

    # ------------------------------------------------------------------ helpers
    def _resolve_timeout(self, timeout: Timeout) -> float | None:
        if timeout is DEFAULT:
            return self.timeout
        if timeout is None:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0 or math.isnan(timeout):
            raise InvalidUsage(f"timeout must be non-negative seconds, None or DEFAULT, not {timeout!r}")
        return float(timeout)

    def _check_caller(self) -> None:
        session = self._session
        if session is not None and session.io.in_thread():
            raise InvalidUsage("blocking call from the client's own I/O thread (it would deadlock)")

    def _require_session(self) -> _Session:
        session = self._session
        if session is None or session.closing:
            raise KatclientConnectionError(f"client {self.name} is not connected (call connect first)")
        return session

    def _dispatch(self, fn: Callable[..., Any], *args: Any) -> None:
        session = self._session
        if session is not None:
            session.dispatcher.submit(fn, *args)

    def _emit(self, event: ClientEvent) -> None:
        self._events.put(event)

    def _run(self, session: _Session, coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
        """Run ``coro`` in the I/O thread; wrap stray errors in the katclient hierarchy."""
        wait = None if timeout is None else timeout + RESULT_GRACE
        try:
            return session.io.run(coro, wait)
        except KatclientError:
            raise
        except (TypeError, ValueError) as exc:
            raise InvalidUsage(str(exc)) from exc
        except Exception as exc:
            raise KatclientError(f"{type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ connect / disconnect
    def connect(
        self,
        host: str,
        port: int | None = None,
        *,
        wait_synced: bool = True,
        timeout: Timeout = DEFAULT,
        target_options: Mapping[str, Any] | None = None,
        **client_options: Any,
    ) -> BlockingClient:
        """Connect, and wait for the connection (and the sync, when ``wait_synced``).

        Use it as a context manager (``with client.connect(...):``) to disconnect on exit.

        :param host: a host name with ``port``, or a TARGET string without it:
            ``HOST:PORT``, ``katcp://HOST:PORT``, or a virtual device such as
            ``scrutiny://HOST:PORT`` (run in the I/O thread with :func:`open_target`).
        :param port: the device's TCP port.
        :param wait_synced: also wait until the model is synced.
        :param timeout: seconds for the whole connect (and sync); :data:`DEFAULT` is ``timeout``.
        :param target_options: options of the virtual device (:func:`open_target`).
        :param client_options: passed to :class:`InspectingClientAsync` (``default_sampling``,
            ``preset_protocol``, ``request_timeout``, ``auto_reconnect``...).
        :returns: this client.
        :raises InvalidUsage: already connected, a malformed target, or bad options.
        :raises KatclientConnectionError: the first connection attempt failed (e.g. refused).
        :raises KatclientTimeoutError: not connected (or synced) within ``timeout``.

        Once connected, the client reconnects by itself after a loss until :meth:`disconnect`.
        """
        self._check_caller()
        budget = self._resolve_timeout(timeout)
        if port is None:
            target = host
            scheme, dev_host, dev_port = split_target(host)
        else:
            scheme, dev_host, dev_port = "katcp", host, int(port)
            target = f"{host}:{dev_port}"
        with self._lock:
            if self._session is not None:
                raise InvalidUsage(f"client {self.name} is already connected; disconnect first")
            owns_io = self._io_thread is None
            io = self._io_thread if self._io_thread is not None else IOThread(f"katclient-io-{self.name}")
            if owns_io:
                io.start()
            elif not io.running:
                raise InvalidUsage("the io_thread given to the client is not running")
            dispatcher = _Dispatcher(f"katclient-listeners-{self.name}")
            dispatcher.start()
            session = _Session(io, owns_io, dispatcher, target)
            self._session = session
            try:
                self._run(
                    session,
                    self._a_connect(session, scheme, dev_host, dev_port, wait_synced, budget,
                                    dict(target_options or {}), client_options),
                    budget,
                )
            except BaseException:
                self._teardown(session)
                raise
            atexit.register(self._atexit)
        return self

    async def _a_connect(
        self,
        session: _Session,
        scheme: str,
        host: str,
        port: int,
        wait_synced: bool,
        budget: float | None,
        target_options: dict[str, Any],
        options: dict[str, Any],
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if budget is None else loop.time() + budget

        def remaining() -> float | None:
            return None if deadline is None else max(0.0, deadline - loop.time())

        if scheme != "katcp":
            try:
                host, port = await asyncio.wait_for(
                    session.stack.enter_async_context(open_target(session.target, **target_options)), remaining()
                )
            except asyncio.TimeoutError:
                raise KatclientTimeoutError(f"virtual device {session.target} not started after {budget} s") from None
        session.host, session.port = host, port
        session.request_timeout = float(options.setdefault("request_timeout", self.timeout))
        first_failure: asyncio.Future[BaseException] = loop.create_future()
        options["stream_factory"] = self._stream_factory(session, options.pop("stream_factory", None), first_failure)
        inner = InspectingClientAsync(host, port, **options)
        session.inner = inner
        with self._config_lock:
            samplings = dict(self._samplings)
        for name, (strategy, params) in samplings.items():
            await inner.set_sampling(name, strategy, *params)  # not connected: only remembered
        inner.add_state_listener(lambda state, changes: self._on_state(session, state, changes))
        await inner.connect()
        waiter = asyncio.ensure_future(inner.until_connected())
        either: set[asyncio.Future[Any]] = {waiter, first_failure}
        try:
            await asyncio.wait(either, timeout=remaining(), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not inner.connected:
            if first_failure.done():
                exc = first_failure.result()
                raise KatclientConnectionError(f"cannot connect to {session.target}: {exc}") from exc
            raise KatclientTimeoutError(f"not connected to {session.target} after {budget} s")
        if wait_synced:
            try:
                await inner.until_synced(remaining())
            except KatclientTimeoutError:
                why = f" (last error: {inner.last_error})" if inner.last_error is not None else ""
                raise KatclientTimeoutError(f"{session.target} not synced after {budget} s{why}") from None

    def _stream_factory(
        self, session: _Session, user_factory: StreamFactory | None, first_failure: asyncio.Future[BaseException]
    ) -> StreamFactory:
        """Open streams like the inspecting client, and report whether the first attempt failed."""
        attempts = 0

        async def factory(host: str, port: int) -> IOStream:
            nonlocal attempts
            attempts += 1
            try:
                if user_factory is not None:
                    return await user_factory(host, port)
                timeout = session.inner.connect_timeout if session.inner is not None else None
                return await TCPClient().connect(host, port, timeout=timeout)
            except Exception as exc:
                if attempts == 1 and not first_failure.done():
                    # Tornado's StreamClosedError hides the socket error (e.g. refused) in real_error.
                    first_failure.set_result(getattr(exc, "real_error", None) or exc)
                raise

        return factory

    def disconnect(self) -> None:
        """Disconnect and join the client's threads.  Idempotent.

        Requests in flight fail with :class:`KatclientConnectionError`, waits are woken with
        it, and a :class:`DisconnectedEvent` is queued.  The model stays readable (with
        ``unreachable`` readings) and the event queue keeps its events.

        :raises InvalidUsage: called from the I/O thread.
        """
        self._check_caller()
        with self._lock:
            session = self._session
            if session is None:
                return
            self._teardown(session)
        atexit.unregister(self._atexit)

    def _teardown(self, session: _Session) -> None:
        session.closing = True
        try:
            if session.io.running:
                try:
                    session.io.run(self._a_close(session), STOP_TIMEOUT)
                except KatclientError as exc:
                    logger.warning("client %s: unclean disconnect: %s", self.name, exc)
        finally:
            if session.owns_io:
                session.io.stop(STOP_TIMEOUT)
            session.dispatcher.stop(STOP_TIMEOUT)
            self._dropped_listener_calls += session.dispatcher.dropped
            self._session = None
            self._status = self._snapshot(None)
            for sensor in list(self._known_sensors.values()):
                sensor._interrupt()

    async def _a_close(self, session: _Session) -> None:
        inner = session.inner
        try:
            if inner is not None:
                inner.stop()
                await inner.until_stopped(STOP_TIMEOUT)
            if session.tasks:
                await asyncio.wait(set(session.tasks), timeout=STOP_TIMEOUT)
        finally:
            for sensor in self._sensors.values():
                sensor._unbind()
            self._status = self._snapshot(session)  # keeps the last error for get_status()
            await session.stack.aclose()

    def _atexit(self) -> None:
        with contextlib.suppress(KatclientError):
            self.disconnect()

    def close(self) -> None:
        """Alias of :meth:`disconnect`."""
        self.disconnect()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # ------------------------------------------------------------------ state (I/O thread)
    def _on_state(
        self, session: _Session, state: InspectingClientStateType, changes: ModelChanges | None
    ) -> None:
        previous = session.state
        if state == previous:
            return
        session.state = state
        if state.data_synced:
            self._refresh_model(session)
        now = time.time()
        host, port = session.host, session.port
        self._emit(StateChangedEvent(now, previous, state))
        if previous.synced and not state.synced:
            self._emit(NotSyncedEvent(now, host, port))
        if previous.connected and not state.connected:
            inner = session.inner
            if session.closing:
                reason = "client disconnected"
            else:
                reason = _error_text(inner.last_error if inner is not None else None) or "connection closed"
            self._emit(DisconnectedEvent(now, host, port, reason))
        if not previous.connected and state.connected:
            self._emit(ConnectedEvent(now, host, port))
        if state.model_changed and changes:
            self._emit(ModelChangedEvent(now, changes))
        if state.synced and not previous.synced:
            self._emit(SyncedEvent(now, host, port))
        self._status = self._snapshot(session)
        for listener in self._state_listeners:
            session.dispatcher.submit(listener, state, changes)

    def _refresh_model(self, session: _Session) -> None:
        """Mirror the inner model in facade objects (I/O thread), then publish the new mappings."""
        inner = session.inner
        if inner is None:
            return
        sensors: dict[str, BlockingSensor] = {}
        for name, inner_sensor in inner.sensors.items():
            obj = self._sensors.get(name) or self._known_sensors.get(name)
            if obj is None:
                obj = BlockingSensor(self, name)
                self._known_sensors[name] = obj
            obj._bind(inner_sensor)
            sensors[name] = obj
        for name, obj in self._sensors.items():
            if name not in sensors:
                obj._unbind()
        requests: dict[str, BlockingRequest] = {}
        for name, info in inner.requests.items():
            old = self._requests.get(name)
            requests[name] = old if old is not None and old._info == info else BlockingRequest(self, info)
        self._sensors = sensors
        self._requests = requests

    def _snapshot(self, session: _Session | None) -> ClientStatus:
        """Build a :class:`ClientStatus` (in the I/O thread when ``session`` is given)."""
        base = self._status
        dropped_calls = self._dropped_listener_calls
        if session is None or session.inner is None:
            return ClientStatus(
                self.name,
                target=base.target,
                host=base.host,
                port=base.port,
                protocol=base.protocol,
                versions=base.versions,
                request_count=len(self._requests),
                sensor_count=len(self._sensors),
                last_error=base.last_error,
                dropped_events=self._events.dropped,
                dropped_listener_calls=dropped_calls,
            )
        inner = session.inner
        state = inner.state
        if session.closing or not inner.running:
            connection = ConnectionState.DISCONNECTED if not state.connected else ConnectionState.CONNECTED
        else:
            connection = ConnectionState.CONNECTED if state.connected else ConnectionState.CONNECTING
        protocol = inner.protocol_flags or base.protocol
        versions = inner.versions
        return ClientStatus(
            self.name,
            target=session.target,
            host=session.host,
            port=session.port,
            state=state,
            connection_state=connection,
            sync_state=_sync_state(state),
            protocol=protocol,
            versions=types.MappingProxyType({k: tuple(v) for k, v in versions.items()}) if versions else base.versions,
            request_count=len(inner.requests),
            sensor_count=len(inner.sensors),
            last_error=_error_text(inner.last_error),
            pending_requests=len(session.tasks),
            dropped_events=self._events.dropped,
            dropped_listener_calls=dropped_calls + session.dispatcher.dropped,
        )

    # ------------------------------------------------------------------ status
    def get_status(self) -> ClientStatus:
        """An immutable :class:`ClientStatus` snapshot, taken now in the I/O thread.

        Never raises for a disconnected client: it then describes the last connection.
        """
        session = self._session
        if session is None or not session.io.running:
            return self._status
        if session.io.in_thread():
            return self._snapshot(session)
        try:
            return session.io.call(self._snapshot, session, timeout=self.timeout)
        except KatclientError:
            return self._status

    @property
    def connected(self) -> bool:
        """True while the TCP connection is up (from the last state change)."""
        session = self._session
        return session is not None and session.state.connected

    @property
    def synced(self) -> bool:
        """True while the model is current (from the last state change)."""
        session = self._session
        return session is not None and session.state.synced

    def wait_synced(self, timeout: Timeout = DEFAULT) -> None:
        """Block until the model is synced (e.g. again after a reconnect).

        :raises KatclientTimeoutError: not synced within ``timeout`` seconds.
        :raises KatclientConnectionError: not connected (``connect`` was not called).
        """
        self._wait_inner("synced", timeout)

    def wait_connected(self, timeout: Timeout = DEFAULT) -> None:
        """Block until the TCP connection is up.  Raises like :meth:`wait_synced`."""
        self._wait_inner("connected", timeout)

    def _wait_inner(self, what: str, timeout: Timeout) -> None:
        self._check_caller()
        limit = self._resolve_timeout(timeout)
        session = self._require_session()

        async def wait() -> None:
            inner = session.inner
            if inner is None:
                raise KatclientConnectionError(f"client {self.name} is not connected")
            if what == "synced":
                await inner.until_synced(limit)
            else:
                await inner.until_connected(limit)

        try:
            self._run(session, wait(), limit)
        except KatclientConnectionError:
            raise
        except KatclientError as exc:
            if isinstance(exc, KatclientTimeoutError):
                raise
            raise KatclientConnectionError(f"client {self.name} disconnected while waiting") from exc

    # ------------------------------------------------------------------ requests
    def _request_timeout(self, name: str, timeout: Timeout) -> float:
        """Seconds for the request in the I/O thread (``inf`` waits for ever)."""
        if timeout is DEFAULT:
            req = self._requests.get(name)
            if req is not None and req.timeout_hint:
                return req.timeout_hint
            session = self._session
            return session.request_timeout if session is not None and session.request_timeout else self.timeout
        limit = self._resolve_timeout(timeout)
        return math.inf if limit is None else limit

    def request_async(self, name: str, *args: Any, timeout: Timeout = DEFAULT) -> PendingRequest:
        """Send ``?name args`` and return at once with a :class:`PendingRequest`.

        :param timeout: seconds for the reply; :data:`DEFAULT` is the request's timeout hint
            (long-running requests) or the client's ``timeout``; ``None`` waits for ever.
        :returns: the handle; a :class:`RequestCompletedEvent` is queued when it completes
            (if ``LISTEN_REQUEST_COMPLETED`` is on).  Errors (not connected, timeout, ``fail``)
            are reported by the handle, never raised here.
        :raises InvalidUsage: a bad timeout.
        """
        return self._start_request(name, args, self._request_timeout(name, timeout), emit=True)

    def simple_request(
        self, name: str, *args: Any, timeout: Timeout = DEFAULT, check: bool = True
    ) -> tuple[Message, list[Message]]:
        """Send ``?name args`` and wait for the reply.

        :param timeout: seconds; as in :meth:`request_async`.
        :param check: raise for a ``fail``/``invalid`` reply; ``False`` returns it as is.
        :returns: ``(reply, informs)``: the reply :class:`~katclient.protocol.Message` and the
            informs that came with it.
        :raises FailReply: ``fail`` reply (an :class:`OperationFailure`; ``.reason`` holds the
            device's reason, ``.reply`` the message).
        :raises InvalidReply: ``invalid`` reply.
        :raises KatclientTimeoutError: no reply in time.
        :raises KatclientConnectionError: not connected, or the connection dropped.
        :raises InvalidUsage: bad arguments, or called from the I/O thread.
        """
        self._check_caller()
        limit = self._request_timeout(name, timeout)
        pending = self._start_request(name, args, limit, emit=False)
        wait = None if math.isinf(limit) else limit + RESULT_GRACE
        return pending._result(wait, check)

    def _start_request(self, name: str, args: tuple[Any, ...], timeout: float, emit: bool) -> PendingRequest:
        pending = PendingRequest(name, args)
        session = self._session
        if session is None or session.closing:
            pending._finish(error=KatclientConnectionError(f"client {self.name} is not connected"))
            self._emit_completed(pending, emit)
            return pending
        try:
            future = session.io.submit(self._a_request(session, pending, timeout, emit))
        except KatclientError as exc:
            pending._finish(error=exc)
            self._emit_completed(pending, emit)
            return pending

        def on_done(f: concurrent.futures.Future[None]) -> None:
            if f.cancelled() and pending._finish(
                error=KatclientConnectionError(f"client {self.name} disconnected before ?{name} completed")
            ):
                self._emit_completed(pending, emit)

        future.add_done_callback(on_done)
        return pending

    async def _a_request(self, session: _Session, pending: PendingRequest, timeout: float, emit: bool) -> None:
        task = asyncio.current_task()
        if task is not None:
            session.tasks.add(task)
        error: KatclientError | None = None
        try:
            inner = session.inner
            if inner is None or session.closing:
                raise KatclientConnectionError(f"client {self.name} disconnected before ?{pending.name} was sent")
            reply, informs = await inner.simple_request(pending.name, *pending.arguments, timeout=timeout)
        except asyncio.CancelledError:
            error = KatclientConnectionError(f"client {self.name} disconnected before ?{pending.name} completed")
            raise
        except KatclientError as exc:
            error = exc
        except (TypeError, ValueError) as exc:
            error = InvalidUsage(f"?{pending.name}: {exc}")
        except Exception as exc:  # a bug below must still complete the handle
            logger.exception("?%s failed unexpectedly", pending.name)
            error = KatclientError(f"?{pending.name}: {type(exc).__name__}: {exc}")
        else:
            pending._finish(reply=reply, informs=informs)
        finally:
            if error is not None:
                pending._finish(error=error)
            if task is not None:
                session.tasks.discard(task)
            self._emit_completed(pending, emit)

    def _emit_completed(self, pending: PendingRequest, emit: bool) -> None:
        if emit and pending.completed:
            self._emit(
                RequestCompletedEvent(time.time(), pending, pending.name, pending.is_success, pending.failure_reason)
            )

    # ------------------------------------------------------------------ model
    @property
    def sensors(self) -> Mapping[str, BlockingSensor]:
        """Read-only mapping of sensor name -> :class:`BlockingSensor` (the last synced model)."""
        return types.MappingProxyType(self._sensors)

    @property
    def requests(self) -> Mapping[str, BlockingRequest]:
        """Read-only mapping of request name -> callable :class:`BlockingRequest`."""
        return types.MappingProxyType(self._requests)

    def set_sampling(self, name: str, strategy: str, *params: float, timeout: Timeout = DEFAULT) -> None:
        """Set the sampling strategy of sensor ``name`` and keep it across reconnects.

        :param strategy: ``"auto"``, ``"period"``, ``"event"``, ``"differential"``,
            ``"event-rate"``, ``"differential-rate"`` or ``"none"`` (katcp.md 1.7).
        :param params: its parameters, times in seconds.
        :param timeout: seconds for the device's reply.
        :raises InvalidUsage: bad strategy or parameters.
        :raises FailReply: the device refused it.
        :raises KatclientTimeoutError: no reply in time.
        :raises KatclientConnectionError: not connected.
        """
        self._check_caller()
        limit = self._resolve_timeout(timeout)
        session = self._require_session()

        async def apply() -> None:
            inner = session.inner
            if inner is None:
                raise KatclientConnectionError(f"client {self.name} is not connected")
            await inner.set_sampling(name, strategy, *params, timeout=math.inf if limit is None else limit)

        self._run(session, apply(), limit)
        with self._config_lock:
            self._samplings[name] = (strategy, tuple(params))

    def watch_sensors(self, *names: str) -> None:
        """Queue a :class:`SensorUpdateEvent` for every reading of these sensors.

        Needs ``Events.LISTEN_SENSOR_UPDATE``; names may be of sensors that do not exist yet.
        """
        with self._config_lock:
            self._watched = self._watched | frozenset(names)

    def unwatch_sensors(self, *names: str) -> None:
        """Stop the sensor update events of these sensors."""
        with self._config_lock:
            self._watched = self._watched - frozenset(names)

    def add_state_listener(
        self, listener: Callable[[InspectingClientStateType, ModelChanges | None], Any]
    ) -> None:
        """Call ``listener(state, model_changes)`` on every state change, in the listener thread."""
        with self._config_lock:
            self._state_listeners = (*self._state_listeners, listener)

    def remove_state_listener(self, listener: Callable[..., Any]) -> None:
        with self._config_lock:
            self._state_listeners = tuple(x for x in self._state_listeners if x != listener)

    # ------------------------------------------------------------------ events
    def listen_events(self, enabled_events: int, disabled_events: int = 0) -> None:
        """Select the events :meth:`read_event` returns: add ``enabled_events`` then remove
        ``disabled_events`` (``Events.LISTEN_*`` flags ORed together).

        :raises InvalidUsage: a value that is not a non-negative int.
        """
        self._events.listen(enabled_events, disabled_events)

    def read_event(self, timeout: float | None = None) -> ClientEvent | None:
        """The next event, waiting at most ``timeout`` seconds (``None``: for ever).

        :returns: an event from :class:`Events`, or ``None`` if none came in time.
        :raises InvalidUsage: a negative timeout.
        """
        return self._events.get(timeout)

    def has_event_pending(self) -> bool:
        return self._events.pending()

    def clear_event_queue(self) -> int:
        """Drop the waiting events; returns how many."""
        return self._events.clear()

    @property
    def dropped_events(self) -> int:
        """Events dropped because the queue was full."""
        return self._events.dropped

    def __repr__(self) -> str:
        session = self._session
        where = session.target if session is not None else "not connected"
        return f"<BlockingClient {self.name} {where}>"
