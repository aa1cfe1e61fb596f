"""``InspectingClientAsync``: a live model of a KATCP device on Tornado.

Sources: protocols/katcp.md section 2 (katcp-python's ``InspectingClientAsync``: API,
state machine, inspection, and the bugs listed in 2.9, which are fixed here) and
section 3 (aiokatcp's sensor sync: bulk subscription with a fallback, initial
readings before ``synced``, ``unreachable`` on disconnect, replaced sensors);
DESIGN.md sections 1 and 3.

What the client does, per connection:

1. connect (TCP), paced by :attr:`reconnect_delay` (an :class:`ExponentialRandomBackoff`);
2. wait for the device's protocol (``#version-connect`` or v4 ``#version``) for at most
   :attr:`negotiation_timeout` seconds, then assume v4 (katcp.md 2.9 item 4);
3. inspect: ``?help`` (+ ``?request-timeout-hint`` with flag ``T``) and ``?sensor-list``
   concurrently, under one :attr:`sync_timeout` budget, committed atomically;
4. report ``data_synced`` with the model changes;
5. subscribe the chosen sensors (one bulk ``?sensor-sampling`` with flag ``B``, else
   concurrent requests) so that every subscribed sensor holds the device's reading;
6. report ``synced``; wait for ``#interface-changed`` (then back to 3) or a disconnect.

A failed sync waits :attr:`resync_delay` and retries; both backoffs reset after a
successful sync (katcp.md 2.9 item 1).  The class is not thread-safe: use it from
its event loop (see :mod:`katclient.client.blocking` for threads).
"""

from __future__ import annotations

import asyncio
import inspect as _inspect
import logging
import re
import time
import types
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from tornado.iostream import IOStream
from tornado.tcpclient import TCPClient

from katclient.client.backoff import ExponentialRandomBackoff
from katclient.client.connection import DEFAULT_REQUEST_TIMEOUT, Connection
from katclient.client.sensor import RequestType, Sensor
from katclient.client.state import (
    DISCONNECTED,
    Event,
    InspectingClientStateType,
    next_state,
)
from katclient.client.timeouts import DEFAULT, Timeout
from katclient.protocol import (
    SENSOR_TYPES,
    STATUS_FROM_WIRE,
    V4,
    FailReply,
    InvalidReply,
    InvalidUsage,
    KatclientConnectionError,
    KatclientTimeoutError,
    Message,
    ProtocolFlags,
    Reading,
    Sampling,
    Status,
    Strategy,
    SyncError,
    parse_sampling,
    sensor_type,
)
from katclient.protocol.errors import KatcpSyntaxError
from katclient.protocol.parser import DEFAULT_MAX_LINE_LENGTH, split_arguments

__all__ = [
    "InspectingClientAsync",
    "ModelChanges",
    "Changes",
    "StreamFactory",
    "parse_target",
    "raise_for_reply",
]

module_logger = logging.getLogger(__name__)

#: ``async (host, port) -> IOStream``: how the client opens its connection (tests pass
#: one built on ``async_solipsism.socketpair``).
StreamFactory = Callable[[str, int], Awaitable[IOStream]]

#: Bytes of sensor names per bulk ``?sensor-sampling`` line; well under the parser
#: limits of katclient (2 MiB) and katcp-python (2 MiB) servers.
BULK_SAMPLING_CHUNK: Final = 256 * 1024
#: Seconds the reader pauses after a small chunk while syncing (Connection.coalesce_delay):
#: 10k sensors from a server that writes line by line cost ~5,000 wake-ups without it.
SYNC_READ_COALESCE: Final = 0.002
#: Individual ``?sensor-sampling`` requests per pipelined write when bulk is unavailable:
#: about 200 KB of requests, well inside the connection's 4 MiB write bound.
SAMPLING_BATCH: Final = 4096

_UNKNOWN_REQUEST_RE: Final = re.compile(r"unknown request", re.I)
_UNKNOWN_SENSOR_RE: Final = re.compile(r"unknown sensor", re.I)


@dataclass(frozen=True)
class Changes:
    """Names added and removed in one part of the model; a modified item is in both sets."""

    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)

    def __getitem__(self, key: str) -> frozenset[str]:
        if key not in ("added", "removed"):
            raise KeyError(key)
        return getattr(self, key)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class ModelChanges:
    """What an inspection changed: ``requests`` and ``sensors`` :class:`Changes`.

    Supports attribute and item access (``changes.sensors.added`` and
    ``changes["sensors"]["added"]``), like katcp-python's ``AttrDict``.
    """

    requests: Changes = field(default_factory=Changes)
    sensors: Changes = field(default_factory=Changes)

    def __bool__(self) -> bool:
        return bool(self.requests or self.sensors)

    def __getitem__(self, key: str) -> Changes:
        if key not in ("requests", "sensors"):
            raise KeyError(key)
        return getattr(self, key)  # type: ignore[no-any-return]

    def __contains__(self, key: object) -> bool:
        return key in ("requests", "sensors") and bool(getattr(self, str(key)))


# (description, units, type name, raw params): equality of this tuple decides "modified".
_SensorInfo = tuple[str, str, str, tuple[bytes, ...]]


def parse_target(target: str, default_port: int | None = None) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``katcp://HOST:PORT`` (IPv6 as ``[::1]:PORT``).

    :raises InvalidUsage: for a malformed target.
    """
    text = target
    if "://" in text:
        scheme, text = text.split("://", 1)
        if scheme != "katcp":
            raise InvalidUsage(f"not a KATCP target: {target!r}")
    text = text.rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise InvalidUsage(f"no host in target {target!r}")
    if not port:
        if default_port is None:
            raise InvalidUsage(f"no port in target {target!r}")
        return host, default_port
    try:
        return host, int(port)
    except ValueError:
        raise InvalidUsage(f"bad port in target {target!r}") from None


class InspectingClientAsync:
    """Inspecting KATCP client with a live mirror of the device's requests and sensors.

    :param host: device host name or address.
    :param port: device TCP port.
    :param ioloop: accepted for katcp-python compatibility; the client always runs on the
        running asyncio loop (Tornado 6 runs on asyncio).
    :param initial_inspection: inspect on the first connection (katcp.md 2.3 step 3).
    :param auto_reconnect: reconnect after a disconnect.
    :param logger: logger to use instead of this module's.
    :param default_sampling: strategy set on every sensor after inspection, as a tuple
        ``(strategy, *params)`` (default ``("auto",)``), or ``None``/``("none",)`` to
        subscribe nothing (katcp-python's behaviour).  Per-sensor strategies set with
        :meth:`set_sampling` take precedence and persist across reconnects.
    :param request_timeout: default request timeout in seconds when neither the call
        nor the device's timeout hint gives one.
    :param stream_factory: ``async (host, port) -> IOStream`` used to connect.
    :param max_line_length: longest accepted line in bytes.
    :param preset_protocol: protocol flags to use instead of detecting them.

    Times are float seconds everywhere; v4 devices' millisecond timestamps are converted.
    """

    #: Seconds for one whole inspection (``?help``, hints and ``?sensor-list``) and for
    #: the subscription that follows (katcp.md 2.1: katcp-python uses 20).
    sync_timeout: float = 20.0
    #: First and largest delay (seconds) of :attr:`resync_delay` (katcp.md 2.7).
    initial_resync_timeout: float = 5.0
    max_resync_timeout: float = 90.0
    #: Seconds to wait for ``#version-connect``/``#version`` before assuming v4.
    negotiation_timeout: float = 5.0
    #: Seconds allowed for the TCP connect itself.
    connect_timeout: float = 10.0
    #: Factories for model objects (katcp.md 2.1); called with keyword arguments.
    sensor_factory: Callable[..., Any] = Sensor
    request_factory: Callable[..., Any] = RequestType

    def __init__(
        self,
        host: str,
        port: int,
        ioloop: Any = None,
        initial_inspection: bool = True,
        auto_reconnect: bool = True,
        logger: logging.Logger | None = None,
        *,
        default_sampling: tuple[Any, ...] | None = ("auto",),
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        stream_factory: StreamFactory | None = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        preset_protocol: ProtocolFlags | str | None = None,
    ) -> None:
        self.host = host
        self.port = int(port)
        self.initial_inspection = initial_inspection
        self.auto_reconnect = auto_reconnect
        self._logger = logger or module_logger
        self.request_timeout = request_timeout
        self._stream_factory = stream_factory
        self._max_line_length = max_line_length
        self._preset: ProtocolFlags | None = None
        if preset_protocol is not None:
            self.preset_protocol_flags(preset_protocol)
        self._default_sampling: Sampling | None = None
        if default_sampling is not None:
            self._default_sampling = parse_sampling(default_sampling[0], default_sampling[1:])
            if self._default_sampling.strategy is Strategy.NONE:
                self._default_sampling = None
        #: Backoff between failed syncs (katcp.md 2.7), reset after each successful sync.
        self.resync_delay = ExponentialRandomBackoff(self.initial_resync_timeout, self.max_resync_timeout)
        #: Backoff between TCP connection attempts, reset after each successful sync.
        self.reconnect_delay = ExponentialRandomBackoff(0.5, 30.0, 2.0, 0.5)
        self._state = DISCONNECTED
        self._state_cb: Callable[..., Any] | None = None
        self._state_listeners: list[Callable[[InspectingClientStateType, ModelChanges | None], Any]] = []
        self._waiters: list[tuple[Callable[[InspectingClientStateType], bool], asyncio.Future[None]]] = []
        self._conn: Connection | None = None
        self._requests: dict[str, Any] = {}
        self._request_info: dict[str, RequestType] = {}
        self._sensors: dict[str, Any] = {}
        self._sensors_b: dict[bytes, Any] = {}
        self._samplings: dict[str, Sampling] = {}
        self._applied: dict[str, Sampling] = {}
        self._inform_hooks: dict[str, list[Callable[[Message], None]]] = {}
        self._handle_sensor_value = False
        self._interface_changed = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._cb_queue: asyncio.Queue[Awaitable[Any]] | None = None
        self._cb_task: asyncio.Task[None] | None = None
        self._running = False
        self._stopped: asyncio.Event | None = None
        self._major = 5
        self.last_error: BaseException | None = None

    # ------------------------------------------------------------------ properties
    @property
    def state(self) -> InspectingClientStateType:
        """The current :class:`InspectingClientStateType`."""
        return self._state

    @property
    def connected(self) -> bool:
        return self._state.connected

    @property
    def synced(self) -> bool:
        return self._state.synced

    def is_connected(self) -> bool:
        """True while the TCP connection is up."""
        return self._conn is not None and not self._conn.closed

    @property
    def sensors(self) -> Mapping[str, Any]:
        """Read-only mapping of sensor name -> sensor object (iterates the names, like the seed's list)."""
        return types.MappingProxyType(self._sensors)

    @property
    def requests(self) -> Mapping[str, Any]:
        """Read-only mapping of request name -> request object (``RequestType`` by default)."""
        return types.MappingProxyType(self._requests)

    @property
    def protocol_flags(self) -> ProtocolFlags | None:
        """The connected device's protocol, or ``None`` while unknown."""
        return self._conn.protocol if self._conn is not None else None

    @property
    def versions(self) -> dict[str, list[str]]:
        """``#version-connect`` contents of the current connection, e.g. ``{"katcp-protocol": ["5.0-IM"]}``."""
        return dict(self._conn.versions) if self._conn is not None else {}

    @property
    def running(self) -> bool:
        return self._running

    # ------------------------------------------------------------------ configuration
    def preset_protocol_flags(self, protocol_flags: ProtocolFlags | str) -> None:
        """Use these flags instead of detecting them (katcp.md 2.8); later announcements are only warned about."""
        if isinstance(protocol_flags, str):
            protocol_flags = ProtocolFlags.parse(protocol_flags)
        self._preset = protocol_flags

    def set_state_callback(self, cb: Callable[[InspectingClientStateType, ModelChanges | None], Any]) -> None:
        """Call ``cb(state, model_changes)`` on every state change.

        ``cb`` may be a plain function (called in order, inline) or a coroutine function
        (its coroutines run in order on a separate task, so a slow callback never stalls
        syncing and may itself await the client).  ``model_changes`` is a
        :class:`ModelChanges` in the data-synced states, else ``None``.
        """
        self._state_cb = cb

    def add_state_listener(self, cb: Callable[[InspectingClientStateType, ModelChanges | None], Any]) -> None:
        """Like :meth:`set_state_callback` but in addition to it (for facades and tools)."""
        self._state_listeners.append(cb)

    def remove_state_listener(self, cb: Callable[..., Any]) -> None:
        if cb in self._state_listeners:
            self._state_listeners.remove(cb)

    def hook_inform(self, name: str, cb: Callable[[Message], None]) -> None:
        """Call ``cb(msg)`` for every unsolicited inform called ``name`` (each hook isolated)."""
        self._inform_hooks.setdefault(name, []).append(cb)

    def handle_sensor_value(self) -> None:
        """Also update sensor objects from ``#sensor-value`` informs of ``?sensor-value`` replies."""
        self._handle_sensor_value = True

    # ------------------------------------------------------------------ lifecycle
    async def connect(self, timeout: float | None = None) -> None:
        """Start connecting and syncing in the background.

        :param timeout: if given, wait at most this many seconds for the TCP connection.
        :raises InvalidUsage: when the client is already running.
        :raises KatclientTimeoutError: no connection within ``timeout`` (the client keeps trying).
        """
        if self._running:
            raise InvalidUsage("client already running")
        loop = asyncio.get_running_loop()
        self._running = True
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._cb_queue = asyncio.Queue()
        self._cb_task = loop.create_task(self._run_callbacks())
        self._task = loop.create_task(self._state_loop())
        if timeout is not None:
            await self.until_connected(timeout=timeout)

    start = connect

    def stop(self, timeout: float | None = None) -> None:
        """Stop: close the connection and end every task, in any state.  Idempotent.

        Await :meth:`until_stopped` (or :meth:`join`) to wait for the end.
        """
        if not self._running:
            return
        self._running = False
        if self._wake is not None:
            self._wake.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def close(self) -> None:
        """Alias of :meth:`stop` (katcp-python's name)."""
        self.stop()

    async def until_stopped(self, timeout: float | None = None) -> None:
        """Wait until the client stopped (its tasks and socket are gone).

        :raises KatclientTimeoutError: not stopped within ``timeout`` seconds.
        """
        if self._stopped is None:
            return
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except asyncio.TimeoutError:
            raise KatclientTimeoutError(f"client not stopped after {timeout} s") from None

    async def join(self, timeout: float | None = None) -> None:
        """Wait until stopped (katcp-python's name)."""
        await self.until_stopped(timeout)

    async def aclose(self) -> None:
        """Stop and wait until stopped."""
        self.stop()
        await self.until_stopped()

    async def __aenter__(self) -> InspectingClientAsync:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ waiting on states
    async def _wait_for(
        self, predicate: Callable[[InspectingClientStateType], bool], timeout: float | None, what: str
    ) -> None:
        if predicate(self._state):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise KatclientTimeoutError(f"not {what} after {timeout} s (state {self._state})") from None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    async def until_state(self, desired_state: InspectingClientStateType, timeout: float | None = None) -> None:
        """Wait until the state equals ``desired_state``.  :raises KatclientTimeoutError:"""
        await self._wait_for(lambda s: s == desired_state, timeout, str(desired_state))

    async def until_connected(self, timeout: float | None = None) -> None:
        """Wait until connected.  :raises KatclientTimeoutError: after ``timeout`` seconds."""
        await self._wait_for(lambda s: s.connected, timeout, "connected")

    async def until_synced(self, timeout: float | None = None) -> None:
        """Wait until synced.  :raises KatclientTimeoutError: after ``timeout`` seconds."""
        await self._wait_for(lambda s: s.synced, timeout, "synced")

    async def until_not_synced(self, timeout: float | None = None) -> None:
        """Wait until not synced.  :raises KatclientTimeoutError: after ``timeout`` seconds."""
        await self._wait_for(lambda s: not s.synced, timeout, "not synced")

    async def until_data_synced(self, timeout: float | None = None) -> None:
        """Wait until the model is fetched.  :raises KatclientTimeoutError: after ``timeout`` seconds."""
        await self._wait_for(lambda s: s.data_synced, timeout, "data synced")

    async def _set_state(self, event: Event, changes: ModelChanges | None = None) -> None:
        new = next_state(self._state, event)
        if new == self._state and event is not Event.SYNC_FAILED:
            return
        self._state = new
        self._logger.debug("%s:%s state %s", self.host, self.port, new)
        for entry in list(self._waiters):
            predicate, future = entry
            if not future.done() and predicate(new):
                future.set_result(None)
        callbacks = ([self._state_cb] if self._state_cb is not None else []) + list(self._state_listeners)
        for cb in callbacks:
            try:
                result = cb(new, changes)
            except Exception:
                self._logger.exception("state callback %r failed", cb)
                continue
            if _inspect.isawaitable(result) and self._cb_queue is not None:
                self._cb_queue.put_nowait(result)

    async def _run_callbacks(self) -> None:
        queue = self._cb_queue
        if queue is None:
            return
        while True:
            awaitable = await queue.get()
            try:
                await awaitable
            except asyncio.CancelledError:
                raise
            except Exception:
                self._logger.exception("state callback coroutine failed")

    # ------------------------------------------------------------------ the state loop
    async def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` seconds unless the client is stopped meanwhile."""
        assert self._wake is not None
        if not self._running:
            return
        try:
            await asyncio.wait_for(self._until_stopping(), delay)
        except asyncio.TimeoutError:
            pass

    async def _until_stopping(self) -> None:
        while self._running:
            assert self._wake is not None
            self._wake.clear()
            await self._wake.wait()

    async def _open_stream(self) -> IOStream:
        if self._stream_factory is not None:
            return await self._stream_factory(self.host, self.port)
        return await TCPClient().connect(self.host, self.port, timeout=self.connect_timeout)

    async def _state_loop(self) -> None:
        try:
            while self._running:
                try:
                    stream = await self._open_stream()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Tornado reports a refused connect as StreamClosedError; keep the real cause.
                    _without_traceback(exc)
                    self.last_error = _without_traceback(getattr(exc, "real_error", None) or exc)
                    self._logger.debug("%s:%s connect failed: %s", self.host, self.port, exc)
                    if not self.auto_reconnect:
                        break
                    await self._sleep(self.reconnect_delay.delay)
                    self.reconnect_delay.failed()
                    continue
                conn = self._make_connection(stream)
                self._conn = conn
                try:
                    await self._set_state(Event.CONNECT)
                    await self._serve(conn)
                finally:
                    conn.close()
                    self._on_disconnected()
                    self._conn = None
                await self._set_state(Event.DISCONNECT)
                if not self.auto_reconnect:
                    break
                await self._sleep(self.reconnect_delay.delay)
                self.reconnect_delay.failed()
        except asyncio.CancelledError:
            pass
        finally:
            self._running = False
            if self._conn is not None:
                self._conn.close()
                self._on_disconnected()
                self._conn = None
            try:
                await self._set_state(Event.DISCONNECT)
                # Give queued coroutine callbacks a chance to see the final state.
                if self._cb_queue is not None and self._cb_task is not None:
                    while not self._cb_queue.empty() and not self._cb_task.done():
                        await asyncio.sleep(0)
            except asyncio.CancelledError:
                pass
            finally:
                if self._cb_task is not None:
                    self._cb_task.cancel()
                    self._cb_task = None
                reason = f": {self.last_error}" if self.last_error is not None else ""
                for _, future in self._waiters:
                    if not future.done():
                        future.set_exception(KatclientConnectionError(f"client stopped{reason}"))
                self._waiters.clear()
                if self._stopped is not None:
                    self._stopped.set()
                self._task = None

    def _make_connection(self, stream: IOStream) -> Connection:
        wake = self._wake

        def on_close(exc: BaseException | None) -> None:
            if exc is not None:
                self.last_error = _without_traceback(exc)
            if wake is not None:
                wake.set()

        return Connection(
            stream,
            self._on_inform,
            on_close,
            line_batch=self._ingest_lines,
            max_line_length=self._max_line_length,
            protocol=self._preset,
            address=(self.host, self.port),
        )

    async def _wait_wake(self, conn: Connection) -> None:
        """Wait until an interface change, a disconnect or stop."""
        assert self._wake is not None
        while self._running and not conn.closed and not self._interface_changed:
            self._wake.clear()
            await self._wake.wait()

    async def _negotiate(self, conn: Connection) -> None:
        if conn.protocol_known.is_set():
            return
        waiter = asyncio.ensure_future(conn.protocol_known.wait())
        closer = asyncio.ensure_future(self._wait_wake(conn))
        try:
            await asyncio.wait({waiter, closer}, timeout=self.negotiation_timeout, return_when="FIRST_COMPLETED")
        finally:
            waiter.cancel()
            closer.cancel()
        if conn.closed or not self._running:
            return
        if not conn.protocol_known.is_set():
            self._logger.warning(
                "%s:%s sent no #version-connect within %g s; assuming KATCP %s",
                self.host, self.port, self.negotiation_timeout, V4,
            )
            conn.assume_protocol(V4)

    async def _serve(self, conn: Connection) -> None:
        await self._negotiate(conn)
        if conn.closed or not self._running:
            return
        assert conn.protocol is not None
        self._major = conn.protocol.major
        self._applied = {}
        first = True
        while self._running and not conn.closed:
            self._interface_changed = False
            conn.coalesce_delay = SYNC_READ_COALESCE
            try:
                if first and not self.initial_inspection:
                    changes = ModelChanges()
                else:
                    changes = await self._inspect(conn)
                first = False
                await self._set_state(Event.INSPECTED_CHANGED if changes else Event.INSPECTED_UNCHANGED, changes)
                await self._subscribe(conn)
            except KatclientConnectionError:
                return
            except (SyncError, KatclientTimeoutError) as exc:
                if conn.closed:
                    return
                self.last_error = _without_traceback(exc)
                self._logger.warning(
                    "%s:%s sync failed (%s); retrying in %.2f s",
                    self.host, self.port, exc, self.resync_delay.delay,
                )
                await self._set_state(Event.SYNC_FAILED)
                await self._sleep(self.resync_delay.delay)
                self.resync_delay.failed()
                continue
            if self._interface_changed:
                await self._set_state(Event.INTERFACE_CHANGED)
                continue
            conn.coalesce_delay = 0.0  # synced: every update as soon as it arrives
            await self._set_state(Event.SUBSCRIBED)
            self.resync_delay.success()
            self.reconnect_delay.success()
            await self._wait_wake(conn)
            if conn.closed or not self._running:
                return
            await self._set_state(Event.INTERFACE_CHANGED)

    def _on_disconnected(self) -> None:
        """Keep every reading's value with status ``unreachable`` (aiokatcp's policy, katcp.md 3)."""
        now = time.time()
        unreachable = Status.UNREACHABLE
        for sensor in self._sensors.values():
            reading = sensor.reading
            if reading[1] is not unreachable:
                sensor.set(Reading(now, unreachable, reading[2]))

    # ------------------------------------------------------------------ informs
    def _on_inform(self, msg: Message) -> None:
        name = msg[1]
        if name == "sensor-status":
            self._apply_sensor_informs(msg)
        elif name in ("interface-changed", "device-changed"):
            if name == "device-changed":
                self._logger.debug("#device-changed is deprecated; treated as #interface-changed")
            self._interface_changed = True
            if self._wake is not None:
                self._wake.set()
        elif name == "disconnect":
            self._logger.info("%s:%s disconnecting: %s", self.host, self.port, " ".join(msg.text_arguments()))
        elif name == "log":
            self._logger.debug("%s:%s #log %s", self.host, self.port, " ".join(msg.text_arguments()))
        for hook in self._inform_hooks.get(name, ()):
            try:
                hook(msg)
            except Exception:
                self._logger.exception("inform hook %r for #%s failed", hook, name)

    def _ingest_lines(self, lines: list[Any], slow: Callable[[Any], None]) -> None:
        """Hot path: apply escape-free single-sensor ``#sensor-status`` lines directly.

        Everything else (and anything unusual in such a line) goes to ``slow``, in stream
        order, so a later reading never loses to an earlier one (katcp.md 1.6, 3).
        """
        if self._major < 5:
            for line in lines:
                slow(line)
            return
        sensors = self._sensors_b
        statuses = STATUS_FROM_WIRE
        new_reading = tuple.__new__
        reading_cls = Reading
        for line in lines:
            if type(line) is bytes and line.startswith(b"#sensor-status "):
                parts = line.split(b" ")
                # Only the value can hold an escape (92, backslash) or a tab (9) and still
                # look valid: a name, status or timestamp with one fails its lookup or float().
                if len(parts) == 6 and parts[2] == b"1" and 92 not in parts[5] and 9 not in parts[5]:
                    sensor = sensors.get(parts[3])
                    status = statuses.get(parts[4])
                    if sensor is not None and status is not None:
                        try:
                            reading = new_reading(
                                reading_cls, (float(parts[1]), status, sensor.type.decode(parts[5]))
                            )
                        except ValueError:
                            slow(line)
                            continue
                        sensor._reading = reading
                        observers = sensor._observers
                        if observers is not None:
                            for observer in observers:
                                try:
                                    observer(sensor, reading)
                                except Exception:
                                    self._logger.exception("sensor %s: observer %r failed", sensor.name, observer)
                        continue
            slow(line)

    def _apply_sensor_informs(self, msg: Message) -> None:
        args = msg[3]
        try:
            count = int(args[1])
            if count < 1 or len(args) != 2 + 3 * count:
                raise ValueError(f"{len(args)} arguments for {count} sensor(s)")
            ts = args[0]
            for i in range(count):
                name, status, value = args[2 + 3 * i : 5 + 3 * i]
                self._apply_reading(name.decode("utf-8", "replace"), ts, status, value)
        except (ValueError, IndexError) as exc:
            self._logger.warning("%s:%s malformed #%s ignored: %s", self.host, self.port, msg[1], exc)

    def _apply_reading(self, name: str, ts: bytes, status: bytes, value: bytes) -> None:
        sensor = self._sensors.get(name)
        if sensor is None:
            self._logger.debug("%s:%s update for unknown sensor %s ignored", self.host, self.port, name)
            return
        try:
            sensor.set_formatted(ts, status, value, self._major)
        except ValueError as exc:
            self._logger.warning("%s:%s bad reading for sensor %s ignored: %s", self.host, self.port, name, exc)

    def update_sensor(self, name: str, timestamp: float, status: Status | str, value: Any) -> None:
        """Store a reading on sensor ``name`` (katcp-python's public hook).

        :param timestamp: seconds since the epoch.
        :param status: a :class:`Status` or its wire name.
        :param value: the decoded value, or its wire bytes.
        :raises InvalidUsage: for an unknown sensor or status.
        """
        sensor = self._sensors.get(name)
        if sensor is None:
            raise InvalidUsage(f"unknown sensor {name!r}")
        if not isinstance(status, Status):
            try:
                status = STATUS_FROM_WIRE[status.encode("ascii")]
            except KeyError:
                raise InvalidUsage(f"unknown status {status!r}") from None
        if isinstance(value, bytes):
            value = sensor.type.decode_value(value, self._major)
        sensor.set(Reading(float(timestamp), status, value))

    # ------------------------------------------------------------------ requests
    def _require_conn(self) -> Connection:
        conn = self._conn
        if conn is None or conn.closed:
            raise KatclientConnectionError(f"not connected to {self.host}:{self.port}")
        return conn

    def _timeout_for(self, name: str, timeout: Timeout) -> float | None:
        if timeout is not DEFAULT:
            return timeout
        info = self._request_info.get(name)
        if info is not None and info.timeout_hint:
            return info.timeout_hint
        return self.request_timeout

    async def simple_request(
        self,
        request: str,
        *args: Any,
        timeout: Timeout = DEFAULT,
        mid: int | None = None,
        use_mid: bool | None = None,
    ) -> tuple[Message, list[Message]]:
        """Send ``?request args`` and return ``(reply, informs)``.

        :param timeout: seconds; :data:`DEFAULT`: the request's timeout hint, else
            :attr:`request_timeout`; ``None`` waits for ever.
        :param mid: explicit message id; :param use_mid: force mids on or off.
        :returns: the reply (``ok``, ``fail`` or ``invalid``: check ``reply.reply_ok()``) and informs.
        :raises KatclientTimeoutError: no reply in time.
        :raises KatclientConnectionError: not connected, or the connection dropped.
        """
        conn = self._require_conn()
        reply, informs = await conn.request(
            request, *args, timeout=self._timeout_for(request, timeout), mid=mid, use_mid=use_mid
        )
        if self._handle_sensor_value and request == "sensor-value":
            for inform in informs:
                if inform[1] == "sensor-value":
                    self._apply_sensor_informs(inform)
        return reply, informs

    async def request_ok(
        self, request: str, *args: Any, timeout: Timeout = DEFAULT
    ) -> tuple[Message, list[Message]]:
        """Like :meth:`simple_request` but raise for a reply that is not ``ok``.

        :returns: ``(reply, informs)`` of an ``ok`` reply.
        :raises FailReply: the device replied ``fail`` (``.reason`` has its text).
        :raises InvalidReply: the device replied ``invalid``.
        :raises KatclientTimeoutError: no reply in time.
        :raises KatclientConnectionError: not connected, or the connection dropped.
        """
        reply, informs = await self.simple_request(request, *args, timeout=timeout)
        raise_for_reply(reply)
        return reply, informs

    # ------------------------------------------------------------------ inspection
    async def inspect(self) -> ModelChanges | None:
        """Re-inspect requests and sensors now; ``None`` if nothing changed (seed semantics).

        :raises SyncError: an inspection request failed or timed out.
        :raises KatclientConnectionError: not connected.
        """
        changes = await self._inspect(self._require_conn())
        return changes or None

    async def _inspect(self, conn: Connection) -> ModelChanges:
        deadline = asyncio.get_running_loop().time() + self.sync_timeout
        try:
            new_requests, new_sensors = await asyncio.gather(
                self._fetch_requests(conn, None, deadline), self._fetch_sensors(conn, None, deadline)
            )
        except KatclientTimeoutError as exc:
            raise SyncError(f"inspection timed out: {exc}") from exc
        # Commit both only now, so a failed inspection leaves the model untouched (katcp.md 2.9 item 7).
        req_changes = self._commit_requests(new_requests, None)
        sensor_changes = self._commit_sensors(new_sensors, None)
        return ModelChanges(req_changes, sensor_changes)

    async def inspect_requests(self, name: str | None = None, timeout: float | None = None) -> Changes:
        """Fetch ``?help`` (and timeout hints) for all requests or one, and update the model.

        :raises SyncError: the device answered with an error.
        """
        conn = self._require_conn()
        deadline = asyncio.get_running_loop().time() + (timeout or self.sync_timeout)
        return self._commit_requests(await self._fetch_requests(conn, name, deadline), name)

    async def inspect_sensors(self, name: str | None = None, timeout: float | None = None) -> Changes:
        """Fetch ``?sensor-list`` for all sensors or one, and update the model.

        :raises SyncError: the device answered with an error.
        """
        conn = self._require_conn()
        deadline = asyncio.get_running_loop().time() + (timeout or self.sync_timeout)
        return self._commit_sensors(await self._fetch_sensors(conn, name, deadline), name)

    @staticmethod
    def _remaining(deadline: float) -> float:
        return max(0.001, deadline - asyncio.get_running_loop().time())

    async def _fetch_requests(self, conn: Connection, name: str | None, deadline: float) -> dict[str, RequestType]:
        args = () if name is None else (name,)
        reply, informs = await conn.request("help", *args, timeout=self._remaining(deadline))
        if not reply.reply_ok():
            reason = _reason(reply)
            if name is not None and _UNKNOWN_REQUEST_RE.search(reason):
                return {}
            raise SyncError(f"?help failed: {reason}")
        found: dict[str, RequestType] = {}
        for inform in informs:
            if inform[1] != "help" or not inform[3]:
                continue
            text = inform.text_arguments()
            found[text[0]] = RequestType(text[0], text[1] if len(text) > 1 else "", None)
        assert conn.protocol is not None
        if conn.protocol.request_timeout_hints and found:
            reply, informs = await conn.request("request-timeout-hint", *args, timeout=self._remaining(deadline))
            if not reply.reply_ok():
                raise SyncError(f"?request-timeout-hint failed: {_reason(reply)}")
            for inform in informs:
                text = inform.text_arguments()
                if inform[1] != "request-timeout-hint" or len(text) < 2 or text[0] not in found:
                    continue
                try:
                    hint = float(text[1])
                except ValueError:
                    continue
                if hint > 0:
                    found[text[0]] = found[text[0]]._replace(timeout_hint=hint)
        return found

    async def _fetch_sensors(self, conn: Connection, name: str | None, deadline: float) -> dict[str, _SensorInfo]:
        args = () if name is None else (name,)
        reply, informs = await conn.request(
            "sensor-list", *args, timeout=self._remaining(deadline), raw_informs=True
        )
        if not reply.reply_ok():
            reason = _reason(reply)
            if name is not None and _UNKNOWN_SENSOR_RE.search(reason):
                return {}
            raise SyncError(f"?sensor-list failed: {reason}")
        found: dict[str, _SensorInfo] = {}
        type_names = _TYPE_NAMES
        for inform in informs:
            if isinstance(inform, bytes):
                # A mid-tagged inform kept as its raw line (Connection.request(raw_informs=True)).
                try:
                    a = split_arguments(inform)
                except KatcpSyntaxError as exc:
                    self._logger.warning("%s:%s malformed #sensor-list ignored: %s", self.host, self.port, exc)
                    continue
            else:
                if inform[1] != "sensor-list":
                    continue
                a = inform[3]
            if len(a) < 4:
                continue
            sname = a[0].decode("utf-8", "replace")
            found[sname] = (
                a[1].decode("utf-8", "replace"),
                a[2].decode("utf-8", "replace"),
                type_names.get(a[3]) or a[3].decode("ascii", "replace"),
                tuple(a[4:]) if len(a) > 4 else (),
            )
        return found

    def _commit_requests(self, new: dict[str, RequestType], name: str | None) -> Changes:
        old = self._request_info
        scope = set(old) if name is None else ({name} & set(old))
        added = {n for n in new if n not in old}
        removed = {n for n in scope if n not in new}
        modified = {n for n in new if n in old and old[n] != new[n]}
        for n in removed:
            del old[n]
            self._requests.pop(n, None)
        for n in added | modified:
            old[n] = new[n]
            self._requests[n] = self.request_factory(**new[n]._asdict())
        return Changes(frozenset(added | modified), frozenset(removed | modified))

    def _commit_sensors(self, new: dict[str, _SensorInfo], name: str | None) -> Changes:
        # The sensor objects are the model (no _SensorInfo kept per sensor, to save memory);
        # type parsing is cached per (type, params), so 10,000 float sensors parse one type.
        sensors = self._sensors
        if name is None:
            removed = {n for n in sensors if n not in new}
        else:
            removed = {name} if name in sensors and name not in new else set()
        for n in removed:
            self._drop_sensor(n)
        added: list[str] = []
        modified: list[str] = []
        parsed_types: dict[tuple[str, tuple[bytes, ...]], Any] = {}
        applied = self._applied
        missing = object()
        for n, (description, units, type_name, raw_params) in new.items():
            key = (type_name, raw_params)
            parsed = parsed_types.get(key)
            if parsed is None:
                try:
                    stype = sensor_type(type_name)
                    parsed = (stype, tuple(stype.parse_params(raw_params)))
                except (InvalidUsage, ValueError) as exc:
                    parsed = exc
                parsed_types[key] = parsed
            prev = sensors.get(n)
            if type(parsed) is not tuple:
                self._logger.warning("%s:%s sensor %s skipped: %s", self.host, self.port, n, parsed)
                if prev is not None:
                    self._drop_sensor(n)
                    removed.add(n)
                continue
            stype, params = parsed
            if (
                prev is not None
                and getattr(prev, "type", missing) is stype
                and getattr(prev, "description", missing) == description
                and getattr(prev, "units", missing) == units
                and getattr(prev, "params", missing) == params
            ):
                continue
            self._build_sensor(n, description, units, stype, params, prev)
            (added if prev is None else modified).append(n)
            applied.pop(n, None)
        changed = frozenset(added).union(modified)
        return Changes(changed, frozenset(removed).union(modified))

    def _drop_sensor(self, name: str) -> None:
        self._sensors.pop(name, None)
        self._sensors_b.pop(name.encode("utf-8"), None)
        self._applied.pop(name, None)

    def _build_sensor(
        self, name: str, description: str, units: str, stype: Any, params: tuple[Any, ...], previous: Any
    ) -> Any:
        if previous is not None and getattr(previous, "type", None) is stype:
            # Same type: keep the object (users hold references), refresh its metadata.
            previous.description, previous.units, previous.params = description, units, params
            return previous
        obj = self.sensor_factory(
            name=name, sensor_type=stype, description=description, units=units, params=params
        )
        if previous is not None:
            # A retyped sensor is a new object (katcp.md 2.9 item 2); listeners move to it.
            for observer in getattr(previous, "observers", ()):
                obj.attach(observer)
        self._sensors[name] = obj
        self._sensors_b[name.encode("utf-8")] = obj
        return obj

    # ------------------------------------------------------------------ sampling
    def sampling_for(self, name: str) -> Sampling | None:
        """The strategy the client keeps on sensor ``name`` (``None``: not subscribed)."""
        s = self._samplings.get(name, self._default_sampling)
        if s is not None and s.strategy is Strategy.NONE:
            return None
        return s

    async def set_sampling(
        self, name: str, strategy: str | Strategy, *params: Any, timeout: Timeout = DEFAULT
    ) -> None:
        """Set and remember the sampling strategy of one sensor (kept across reconnects and re-syncs).

        :param name: sensor name (it may not exist yet: the strategy applies once it does).
        :param strategy: ``"auto"``, ``"period"``, ``"event"``, ``"differential"``, ``"event-rate"``,
            ``"differential-rate"`` or ``"none"``.
        :param params: strategy parameters, times in seconds (converted for v4 devices).
        :raises InvalidUsage: bad strategy or parameters.
        :raises FailReply: the device refused it.
        """
        stype = self._sensors[name].type if name in self._sensors else None
        sampling = parse_sampling(strategy, [float(p) for p in params], stype)
        self._samplings[name] = sampling
        conn = self._conn
        if conn is None or conn.closed or not self._state.data_synced or name not in self._sensors:
            return
        reply, _ = await conn.request(
            "sensor-sampling", name, *sampling.wire_arguments(self._major), timeout=self._timeout_for("", timeout)
        )
        raise_for_reply(reply)
        self._applied[name] = sampling

    async def _subscribe(self, conn: Connection) -> None:
        groups: dict[Sampling, list[str]] = {}
        applied = self._applied
        per_sensor = bool(self._samplings)  # else everyone wants the default: no per-sensor lookups
        default = self.sampling_for("")
        for name in self._sensors:
            want = self.sampling_for(name) if per_sensor else default
            if want != applied.get(name):
                groups.setdefault(want or Sampling(Strategy.NONE), []).append(name)
        if not groups:
            return
        deadline = asyncio.get_running_loop().time() + self.sync_timeout
        assert conn.protocol is not None
        bulk = conn.protocol.bulk_set_sensor_sampling
        for sampling, names in groups.items():
            names.sort()
            wire = sampling.wire_arguments(self._major)
            if bulk and len(names) > 1:
                remaining = await self._bulk_sampling(conn, names, wire, deadline)
            else:
                remaining = names
            if remaining:
                await self._single_sampling(conn, remaining, wire, deadline)
            for n in names:
                self._applied[n] = sampling

    async def _bulk_sampling(
        self, conn: Connection, names: list[str], wire: tuple[bytes, ...], deadline: float
    ) -> list[str]:
        """Send bulk requests; return the names whose chunk failed (to retry one by one)."""
        failed: list[str] = []
        chunk: list[str] = []
        size = 0
        chunks: list[list[str]] = []
        for n in names:
            if size + len(n) + 1 > BULK_SAMPLING_CHUNK and chunk:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(n)
            size += len(n) + 1
        if chunk:
            chunks.append(chunk)
        for chunk in chunks:
            reply, _ = await conn.request(
                "sensor-sampling", ",".join(chunk), *wire, timeout=self._remaining(deadline)
            )
            if not reply.reply_ok():
                self._logger.info(
                    "%s:%s bulk ?sensor-sampling failed (%s); setting %d sensors one by one",
                    self.host, self.port, _reason(reply), len(chunk),
                )
                failed.extend(chunk)
        return failed

    async def _single_sampling(
        self, conn: Connection, names: list[str], wire: tuple[bytes, ...], deadline: float
    ) -> None:
        # Pipelined batches: one write each, no task or future per request.
        for start in range(0, len(names), SAMPLING_BATCH):
            chunk = names[start : start + SAMPLING_BATCH]
            replies = await conn.request_batch(
                "sensor-sampling", [(n, *wire) for n in chunk], timeout=self._remaining(deadline)
            )
            for n, reply in zip(chunk, replies):
                if not reply.reply_ok():
                    self._logger.warning(
                        "%s:%s ?sensor-sampling %s failed: %s", self.host, self.port, n, _reason(reply)
                    )

    # ------------------------------------------------------------------ lookups (seed API)
    async def future_check_sensor(self, name: str, update: bool | None = None) -> bool:
        """True if the device has sensor ``name``; waits for data_synced first.

        With ``update`` (default true) an unknown name is looked up with ``?sensor-list
        name``; if the device has it, a full re-sync is triggered so state callbacks
        see the change (katcp.md 2.9 item 8).
        """
        await self.until_data_synced()
        if name in self._sensors:
            return True
        if update is False or not self.is_connected():
            return False
        conn = self._require_conn()
        found = await self._fetch_sensors(conn, name, asyncio.get_running_loop().time() + self.sync_timeout)
        if name in found:
            await self._resync_now()
        return name in self._sensors

    async def future_check_request(self, name: str, update: bool | None = None) -> bool:
        """True if the device has request ``name`` (as :meth:`future_check_sensor`)."""
        await self.until_data_synced()
        if name in self._request_info:
            return True
        if update is False or not self.is_connected():
            return False
        conn = self._require_conn()
        found = await self._fetch_requests(conn, name, asyncio.get_running_loop().time() + self.sync_timeout)
        if name in found:
            await self._resync_now()
        return name in self._request_info

    async def future_get_sensor(self, name: str, update: bool | None = None) -> Any:
        """The sensor object for ``name``, or ``None`` if the device has no such sensor."""
        if await self.future_check_sensor(name, update):
            return self._sensors.get(name)
        return None

    async def future_get_request(self, name: str, update: bool | None = None) -> Any:
        """The request object for ``name``, or ``None`` if the device has no such request."""
        if await self.future_check_request(name, update):
            return self._requests.get(name)
        return None

    async def _resync_now(self) -> None:
        """Re-inspect through the state loop (so state callbacks see the change) and wait for it."""
        self._interface_changed = True
        if self._wake is not None:
            self._wake.set()
        if self._state.synced:
            await self.until_not_synced(self.sync_timeout)
        await self.until_synced(self.sync_timeout)


#: Wire type name -> interned ``str`` (one string shared by every sensor of a type).
_TYPE_NAMES: Final = {name.encode("ascii"): name for name in SENSOR_TYPES}


def _without_traceback(exc: BaseException) -> BaseException:
    """Drop the traceback of a kept error (and of its causes): frames would pin the client in memory."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
    return exc


def _reason(reply: Message) -> str:
    args = reply.text_arguments()
    return " ".join(args[1:]) if len(args) > 1 else (args[0] if args else "")


def raise_for_reply(reply: Message) -> None:
    """Raise :class:`FailReply`/:class:`InvalidReply` for a non-``ok`` reply."""
    if reply.reply_ok():
        return
    reason = _reason(reply)
    if reply.code == b"invalid":
        raise InvalidReply(reason, reply)
    raise FailReply(reason or "request failed", reply)

