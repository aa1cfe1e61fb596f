"""KATCP device server on ``tornado.tcpserver``: standard requests, sensors, sampling, flow control.

Sources: KATCP v5 spec NRF-KAT7-6.0-IFCE-002 Rev 5.1 (sections 3.2 connect informs, 3.4
``?help``/``?halt``/``?watchdog``..., 3.5 sensors and ``#interface-changed``);
protocols/katcp.md 1.3 (flags), 1.4 (v4 vs v5), 1.7 (sampling), 1.8 (standard requests,
checked on the wire against katcp-python 0.9.3), 1.9 (informs) and 4 (aiokatcp's
server, whose request-declaration convention this follows).

Differences from katcp-python, on purpose: errors are one-line reasons (never a
traceback on the wire); ``#client-connected`` is really sent; ``#interface-changed``
is sent automatically (coalesced, v5 only) when sensors or requests change while
clients are connected; slow clients are disconnected instead of slowing everyone.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final

from tornado.iostream import IOStream
from tornado.netutil import bind_sockets
from tornado.tcpserver import TCPServer

import katclient
from katclient.protocol import (
    DEFAULT_MAX_LINE_LENGTH,
    FailReply,
    InvalidReply,
    InvalidUsage,
    Message,
    ProtocolFlags,
    Sampling,
    Strategy,
    encode_timestamp,
    format_message,
    parse_sampling,
)
from katclient.protocol.message import NAME_RE
from katclient.server.connection import ClientConnection, format_address
from katclient.server.request import (
    MethodSpec,
    RequestContext,
    RequestHandler,
    encode_reply,
    requires,
)
from katclient.server.sensor import Sensor, SensorSet

__all__ = [
    "DeviceServer",
    "DEFAULT_MAX_BACKLOG",
    "DEFAULT_MAX_IN_FLIGHT",
    "LOG_LEVELS",
    "SHUTDOWN_REASON",
]

logger = logging.getLogger(__name__)

#: Bytes a client may leave unread before it is disconnected as too slow.  aiokatcp's
#: default (katcp.md 4 section 2.4): about 450k ``#sensor-status`` lines, so a client
#: that pauses briefly survives while a dead one costs bounded memory.
DEFAULT_MAX_BACKLOG: Final = 32 * 1024 * 1024

#: Request handler tasks one client may have running; reading from that client pauses
#: at the limit.  aiokatcp uses 100 for the whole server (katcp.md 4 section 2.2).
DEFAULT_MAX_IN_FLIGHT: Final = 100

#: Largest read buffer the listener's streams may hold.  Reads are partial chunks of
#: :data:`~katclient.server.connection.READ_CHUNK_SIZE`, so this is rarely approached.
MAX_READ_BUFFER: Final = 1024 * 1024

#: ``?log-level`` names in increasing severity (katcp.md 1.8).
LOG_LEVELS: Final = ("all", "trace", "debug", "info", "warn", "error", "fatal", "off")

#: The ``#disconnect`` reason on shutdown (katcp.md 1.8, katcp-python's text).
SHUTDOWN_REASON: Final = "Device server shutting down."

_FLAG_CHECKS: Final[dict[str, Callable[[ProtocolFlags], bool]]] = {
    "B": lambda p: p.bulk_set_sensor_sampling,
    "I": lambda p: p.message_ids,
    "M": lambda p: p.multi_client,
    "T": lambda p: p.request_timeout_hints,
}


class _Listener(TCPServer):
    def __init__(self, server: DeviceServer) -> None:
        super().__init__(max_buffer_size=MAX_READ_BUFFER)
        self._server = server

    def handle_stream(self, stream: IOStream, address: Any) -> None:
        self._server.handle_stream(stream, address)


class DeviceServer:
    """A KATCP device server.

    Subclasses set :attr:`VERSION` and :attr:`BUILD_STATE`, declare requests as methods
    ``request_<name>(self, ctx, arg: T, ...)`` (plain or ``async``; underscores become
    dashes; the docstring is the ``?help`` text and is required) and add sensors with
    :meth:`add_sensor`.  A handler returns ``None`` for ``ok``, a value or tuple for
    ``ok value...``, raises :class:`~katclient.protocol.FailReply` /
    :class:`~katclient.protocol.InvalidReply` for ``fail`` / ``invalid``; any other
    exception becomes a one-line ``fail`` (and is logged with its traceback).

    :param host: address to bind (loopback by default, DESIGN.md 5).
    :param port: TCP port; 0 picks a free one (see :attr:`address` after :meth:`start`).
    :param protocol: the KATCP protocol to speak, e.g. ``"5.1-BIMT"`` (default, every
        feature), ``"5.0-IM"`` or ``"4.0"`` (ms timestamps, no mids, no
        ``#interface-changed``, v4 strategies only).
    :param max_backlog: bytes a client may leave unread before it is disconnected.  Replies
        count too, so it must exceed the largest burst a client asks for (a bulk
        ``?sensor-sampling`` of N sensors queues about 70 N bytes at once).
    :param max_line_length: longest request line in bytes (terminator included).
    :param max_in_flight: request tasks one client may have running before reading pauses.
    :param clock: wall-clock time source, float seconds since the epoch (``#log``
        timestamps); injectable for tests.
    :raises InvalidUsage: for an unparsable protocol or one older than v4.
    :raises TypeError: (at class creation) for a request method without docstring or
        with an undecodable annotation.
    """

    #: ``#version-connect katcp-device`` / ``#version``: ``name-major.minor``.
    VERSION: ClassVar[str] = "katclient-device-0.1"
    #: ``#build-state``: ``name-x.y.z``.
    BUILD_STATE: ClassVar[str] = f"katclient-{katclient.__version__}"

    _request_specs: ClassVar[dict[str, MethodSpec]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._collect_requests()

    @classmethod
    def _collect_requests(cls) -> None:
        specs: dict[str, MethodSpec] = {}
        for attr in dir(cls):
            if not attr.startswith("request_"):
                continue
            func = getattr(cls, attr)
            if func is None or not callable(func):
                continue  # a subclass may disable an inherited request with ``request_x = None``
            name = attr[len("request_"):].replace("_", "-")
            specs[name] = MethodSpec(name, func)
        cls._request_specs = specs

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        protocol: str | ProtocolFlags = "5.1-BIMT",
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            flags = protocol if isinstance(protocol, ProtocolFlags) else ProtocolFlags.parse(protocol)
        except Exception as exc:
            raise InvalidUsage(f"bad protocol {protocol!r}: {exc}") from None
        if flags.major < 4:
            raise InvalidUsage(f"unsupported KATCP protocol {flags}")
        if max_backlog < 1 or max_line_length < 2 or max_in_flight < 1:
            raise InvalidUsage("max_backlog, max_line_length and max_in_flight must be positive")
        self.host = host
        self.port = port
        self.protocol: ProtocolFlags = flags
        self.max_backlog = max_backlog
        self.max_line_length = max_line_length
        self.max_in_flight = max_in_flight
        self.clock = clock
        self.log_level = "warn"
        self.sensors = SensorSet()
        self.sensors.add_callbacks.append(self._sensor_added)
        self.sensors.remove_callbacks.append(self._sensor_removed)
        self._requests: dict[str, RequestHandler] = {
            name: spec.bind(self)
            for name, spec in sorted(self._request_specs.items())
            if flags.major >= spec.min_major and (spec.flag is None or _FLAG_CHECKS[spec.flag](flags))
        }
        self._connections: dict[ClientConnection, None] = {}  # ordered set
        self._tasks: set[asyncio.Future[Any]] = set()
        self._iface_pending: dict[tuple[str, str], str] = {}
        self._listener: _Listener | None = None
        self._address: tuple[str, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._stopped: asyncio.Event | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._hook_sampling = type(self).sensor_sampling_changed is not DeviceServer.sensor_sampling_changed

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> tuple[str, int]:
        """Bind and listen.

        :returns: the bound ``(host, port)`` (also :attr:`address`).
        :raises OSError: when the address cannot be bound.
        :raises InvalidUsage: when already started.
        """
        if self._listener is not None:
            raise InvalidUsage("server already started")
        self._loop = asyncio.get_running_loop()
        sockets = bind_sockets(self.port, self.host, family=socket.AF_UNSPEC)
        self._listener = _Listener(self)
        self._listener.add_sockets(sockets)
        host, port = sockets[0].getsockname()[:2]
        self._address = (host, port)
        logger.info("%s listening on %s:%d (KATCP %s)", type(self).__name__, host, port, self.protocol)
        return self._address

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``.

        :raises InvalidUsage: before :meth:`start`.
        """
        if self._address is None:
            raise InvalidUsage("server not started")
        return self._address

    @property
    def connections(self) -> list[ClientConnection]:
        """The connected clients, oldest first."""
        return list(self._connections)

    async def stop(self, timeout: float | None = 1.0) -> None:
        """Stop: close the listener, send ``#disconnect Device server shutting down.`` to every
        client (waiting up to ``timeout`` seconds each for it to drain), cancel running request
        handlers and wait for them.  Idempotent; a second call waits for the first.
        """
        stopped = self._stopped_event()
        if self._stopping:
            await stopped.wait()
            return
        self._stopping = True
        try:
            if self._listener is not None:
                self._listener.stop()
            conns = list(self._connections)
            if conns:
                await asyncio.gather(*(c.aclose(SHUTDOWN_REASON, timeout) for c in conns))
            tasks = [t for t in self._tasks if not t.done()]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)
            await self.on_stop()
        finally:
            stopped.set()
            logger.info("%s stopped", type(self).__name__)

    def halt(self) -> asyncio.Task[None]:
        """Start :meth:`stop` in the background (callable from synchronous code in the loop)."""
        if self._stop_task is None:
            self._stop_task = asyncio.get_running_loop().create_task(self.stop())
        return self._stop_task

    async def until_stopped(self) -> None:
        """Wait until :meth:`stop` has finished."""
        await self._stopped_event().wait()

    def _stopped_event(self) -> asyncio.Event:
        if self._stopped is None:
            self._stopped = asyncio.Event()
        return self._stopped

    async def on_stop(self) -> None:
        """Hook called at the end of :meth:`stop`, after every client is gone (default: nothing)."""

    async def restart(self) -> None:
        """Hook for ``?restart``.  The default refuses.

        :raises FailReply: always, in this base class.
        """
        raise FailReply("No restart hook -- cannot restart.")

    def sensor_sampling_changed(self, sensor: Sensor, samplings: list[Sampling]) -> None:
        """Hook: the strategies active on ``sensor`` across all clients changed.

        Called after a client set or cleared a strategy, disconnected, or the sensor was
        removed or replaced (then with ``[]``).  ``samplings`` lists one
        :class:`~katclient.protocol.Sampling` per client sampling it (``none`` excluded);
        empty means nobody samples it.  A virtual device subscribes upstream only what some
        client samples.  Default: nothing.
        """

    # -- connections -------------------------------------------------------------------
    def handle_stream(self, stream: IOStream, address: Any) -> ClientConnection:
        """Serve a connected stream: send the connect informs and start reading.

        The listener calls this; tests may call it directly with an ``IOStream`` on an
        ``async_solipsism.socketpair()`` socket (STYLE.md habit 9).  Must be called in the loop.

        :returns: the new :class:`~katclient.server.connection.ClientConnection`.
        """
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        conn = ClientConnection(
            self,
            stream,
            address,
            max_line_length=self.max_line_length,
            max_backlog=self.max_backlog,
            max_in_flight=self.max_in_flight,
        )
        if self._stopping:
            conn.close()
            return conn
        conn.write(self._connect_informs())
        if self._connections:
            announce = format_message(Message.inform("client-connected", format_address(address)))
            for other in self._connections:
                other.write(announce)
        self._connections[conn] = None
        logger.info("client connected: %s", format_address(address))
        conn.start()
        return conn

    def _connect_informs(self) -> bytes:
        if self.protocol.major >= 5:
            msgs = [Message.inform("version-connect", *args) for args in self._version_list()]
        else:
            msgs = [Message.inform("version", self.VERSION), Message.inform("build-state", self.BUILD_STATE)]
        return b"".join(map(format_message, msgs))

    def _version_list(self) -> list[tuple[str, ...]]:
        ver = katclient.__version__
        return [
            ("katcp-protocol", str(self.protocol)),
            ("katcp-library", f"katclient-{ver}", ver),
            ("katcp-device", self.VERSION, self.BUILD_STATE),
        ]

    def _connection_closed(self, conn: ClientConnection, sampled: list[Sensor]) -> None:
        if conn in self._connections:
            del self._connections[conn]
            logger.info("client disconnected: %s", format_address(conn.address))
        for sensor in sampled:
            self._sampling_changed(sensor)

    # -- messages to everybody -----------------------------------------------------------
    def mass_inform(self, msg: Message | str, *args: Any) -> None:
        """Send an inform to every connected client.

        :param msg: a :class:`~katclient.protocol.Message`, or an inform name followed by
            its ``args`` (encoded with :func:`~katclient.protocol.encode_argument`).
        """
        if not isinstance(msg, Message):
            msg = Message.inform(msg, *args)
        data = format_message(msg)
        for conn in self._connections:
            conn.write(data)

    def mass_log(self, level: str, message: str, logger_name: str = "katclient.server") -> None:
        """Send ``#log <level> <timestamp> <logger_name> <message>`` to every client, if ``level``
        is at or above the ``?log-level`` threshold.

        :raises InvalidUsage: for a level not in :data:`LOG_LEVELS`.
        """
        if level not in LOG_LEVELS:
            raise InvalidUsage(f"unknown log level {level!r}")
        if self.log_level == "off" or LOG_LEVELS.index(level) < LOG_LEVELS.index(self.log_level):
            return
        self.mass_inform(
            Message.inform("log", level, encode_timestamp(self.clock(), self.protocol.major), logger_name, message)
        )

    # -- sensors -----------------------------------------------------------------------
    def add_sensor(self, sensor: Sensor) -> None:
        """Add (or replace, by name) a sensor.  Clients sampling a replaced sensor lose that
        strategy; v5 clients get ``#interface-changed``."""
        self.sensors.add(sensor)

    def remove_sensor(self, name: str) -> Sensor:
        """Remove a sensor by name; returns it.  v5 clients get ``#interface-changed``.

        :raises KeyError: for an unknown name.
        """
        sensor = self.sensors[name]
        del self.sensors[name]
        return sensor

    def _sensor_added(self, sensor: Sensor) -> None:
        sensor.list_tail()  # format the #sensor-list line now, not during the first ?sensor-list
        self._note_interface_change("sensor", sensor.name, "added")

    def _sensor_removed(self, sensor: Sensor) -> None:
        sampled = False
        for conn in self._connections:
            sampled |= conn.drop_sensor(sensor)
        if sampled and self._hook_sampling:
            self.sensor_sampling_changed(sensor, [])
        self._note_interface_change("sensor", sensor.name, "removed")

    def _sampling_changed(self, sensor: Sensor) -> None:
        if not self._hook_sampling or self.sensors.get(sensor.name) is not sensor:
            return
        samplings = []
        for conn in self._connections:
            sampler = conn.get_sampling(sensor)
            if sampler is not None:
                samplings.append(sampler.sampling)
        self.sensor_sampling_changed(sensor, samplings)

    # -- requests ----------------------------------------------------------------------
    @property
    def request_names(self) -> list[str]:
        """Names of the requests this server answers, sorted."""
        return sorted(self._requests)

    def add_request(
        self,
        name: str,
        handler: Callable[..., Awaitable[Any] | Any],
        help: str,
        timeout_hint: float | None = None,
    ) -> None:
        """Add (or replace) a request at run time, e.g. for a virtual device.

        :param name: request name, ``[A-Za-z][A-Za-z0-9-]*``.
        :param handler: ``handler(ctx, *raw_args: bytes)``, a coroutine function (or plain
            function); its return value and exceptions are treated as for methods.
        :param help: the ``?help`` text (required, non-empty).
        :param timeout_hint: seconds for ``?request-timeout-hint``, or ``None``.
        :raises InvalidUsage: for a bad name, empty help or a non-positive hint.
        """
        if not isinstance(name, str) or NAME_RE.match(name) is None:
            raise InvalidUsage(f"invalid request name {name!r}")
        if not help or not help.strip():
            raise InvalidUsage(f"request {name} needs a help text")
        if timeout_hint is not None and not timeout_hint > 0:
            raise InvalidUsage(f"timeout hint must be > 0 seconds, got {timeout_hint!r}")
        action = "modified" if name in self._requests else "added"
        self._requests[name] = RequestHandler.from_raw(name, handler, help, timeout_hint)
        self._note_interface_change("request", name, action)

    def remove_request(self, name: str) -> None:
        """Remove a request; later ``?name`` gets ``invalid Unknown request.``.

        :raises KeyError: for an unknown name.
        """
        del self._requests[name]
        self._note_interface_change("request", name, "removed")

    # -- #interface-changed --------------------------------------------------------------
    def _note_interface_change(self, kind: str, name: str, action: str) -> None:
        # v5 only (katcp.md 1.4); nobody to tell without clients (a new client inspects anew).
        if self.protocol.major < 5 or not self._connections or self._loop is None:
            return
        pending = self._iface_pending
        if not pending:
            self._loop.call_soon(self._flush_interface_changes)
        previous = pending.get((kind, name))
        if previous is not None and previous != action:
            action = "removed" if action == "removed" and previous == "added" else "modified"
        pending[(kind, name)] = action

    def _flush_interface_changes(self) -> None:
        """One ``#interface-changed`` per batch: ``sensor NAME added|removed|modified`` for a
        single change, ``sensor-list``/``request-list`` for several of one kind, bare otherwise.
        """
        pending = self._iface_pending
        if not pending:
            return
        items = list(pending.items())
        pending.clear()
        if len(items) == 1:
            (kind, name), action = items[0]
            args: tuple[str, ...] = (kind, name, action)
        else:
            kinds = {kind for (kind, _), _ in items}
            args = (f"{kinds.pop()}-list",) if len(kinds) == 1 else ()
        self.mass_inform(Message.inform("interface-changed", *args))

    # -- dispatch ------------------------------------------------------------------------
    def _dispatch(self, conn: ClientConnection, msg: Message) -> None:
        handler = self._requests.get(msg.name)
        if handler is None:
            conn.write(format_message(Message.reply_to_request(msg, b"invalid", b"Unknown request.")))
            return
        ctx = RequestContext(conn, msg)
        if handler.is_async:
            self._spawn(conn, self._run_async(handler, ctx))
            return
        try:
            result = handler(ctx, msg.arguments)
        except Exception as exc:
            self._reply_error(ctx, exc)
            return
        if inspect.isawaitable(result):
            self._spawn(conn, self._await_result(result, ctx))
            return
        self._finish(ctx, result)

    def _spawn(self, conn: ClientConnection, coro: Any) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        conn.add_task(task)

    async def _run_async(self, handler: RequestHandler, ctx: RequestContext) -> None:
        try:
            # Decoding the arguments happens in this call: a bad argument must get a reply too.
            awaitable = handler(ctx, ctx.request.arguments)
        except Exception as exc:
            self._reply_error(ctx, exc)
            return
        await self._await_result(awaitable, ctx)

    async def _await_result(self, awaitable: Awaitable[Any], ctx: RequestContext) -> None:
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if not ctx.replied:
                ctx.reply(b"fail", b"Request cancelled: device server shutting down.")
            raise
        except Exception as exc:
            self._reply_error(ctx, exc)
            return
        self._finish(ctx, result)

    def _finish(self, ctx: RequestContext, result: Any) -> None:
        if ctx.replied or ctx.deferred:
            if result is not None:
                logger.warning("?%s: return value %r ignored (already replied or deferred)", ctx.request.name, result)
            return
        try:
            ctx.reply(*encode_reply(result))
        except InvalidUsage as exc:
            self._reply_error(ctx, exc)

    def _reply_error(self, ctx: RequestContext, exc: BaseException) -> None:
        if isinstance(exc, FailReply):
            code, reason = b"fail", exc.reason
        elif isinstance(exc, InvalidReply):
            code, reason = b"invalid", exc.reason
        else:
            logger.error("?%s from %s failed", ctx.request.name, format_address(ctx.client.address), exc_info=exc)
            text = " ".join(str(exc).split())
            code, reason = b"fail", (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
        if ctx.replied:
            logger.warning("?%s: error after the reply was sent: %s", ctx.request.name, reason)
            return
        ctx.reply(code, reason)

    # -- helpers for the standard requests --------------------------------------------------
    def _select_sensors(self, name: str | None) -> list[Sensor]:
        """All sensors (sorted), those matching ``/regex/``, or the one named.

        :raises FailReply: for an unknown name or a bad regular expression.
        """
        if name is None:
            return self.sensors.sorted_sensors()
        if len(name) >= 2 and name.startswith("/") and name.endswith("/"):
            try:
                rx = re.compile(name[1:-1])
            except re.error as exc:
                raise FailReply(f"Bad regular expression {name!r}: {exc}") from None
            return [s for s in self.sensors.sorted_sensors() if rx.search(s.name)]
        return [self._get_sensor(name)]

    def _get_sensor(self, name: str) -> Sensor:
        try:
            return self.sensors[name]
        except KeyError:
            raise FailReply(f"Unknown sensor name {name!r}.") from None

    def _get_request(self, name: str) -> RequestHandler:
        try:
            return self._requests[name]
        except KeyError:
            raise FailReply(f"Unknown request method {name!r}.") from None

    @staticmethod
    def _inform_prefix(ctx: RequestContext) -> bytes:
        mid = ctx.request.mid
        name = ctx.request.name.encode("ascii")
        return b"#%s " % name if mid is None else b"#%s[%d] " % (name, mid)

    @staticmethod
    def _ok_count(ctx: RequestContext, n: int) -> bytes:
        mid = ctx.request.mid
        name = ctx.request.name.encode("ascii")
        return b"!%s ok %d\n" % (name, n) if mid is None else b"!%s[%d] ok %d\n" % (name, mid, n)

    # -- standard requests (katcp.md 1.8) --------------------------------------------------
    def request_help(self, ctx: RequestContext, name: str | None = None) -> None:
        """Return help on the available requests.

        With no argument, one #help <name> <description> inform per request, sorted by
        name; with a request name, only that one.  Replies ok <count>.
        """
        if name is None:
            handlers = [self._requests[n] for n in sorted(self._requests)]
        else:
            handlers = [self._get_request(name)]
        ctx.informs((h.name, h.help) for h in handlers)

    def request_watchdog(self, ctx: RequestContext) -> None:
        """Check that the server is alive; replies ok."""

    @requires(major=5)
    def request_version_list(self, ctx: RequestContext) -> None:
        """List the versions of the protocol, the library and the device.

        Informs #version-list <component> <version> [<build>]; replies ok 3.
        """
        ctx.informs(self._version_list())

    def request_client_list(self, ctx: RequestContext) -> None:
        """List the connected clients: one #client-list <host:port> each; replies ok <count>."""
        ctx.informs((format_address(c.address),) for c in self._connections)

    def request_log_level(self, ctx: RequestContext, level: str | None = None) -> str:
        """Query or set the threshold for #log informs.

        Levels: all, trace, debug, info, warn, error, fatal, off.  Replies ok <level>.
        """
        if level is not None:
            if level not in LOG_LEVELS:
                raise FailReply(f"Unknown logging level name {level!r}")
            self.log_level = level
        return self.log_level

    def request_halt(self, ctx: RequestContext) -> None:
        """Halt the device server: replies ok, then every client gets #disconnect."""
        ctx.reply(b"ok")
        self.halt()

    async def request_restart(self, ctx: RequestContext) -> None:
        """Restart the device (if the device supports it); replies ok when done."""
        await self.restart()

    def request_sensor_list(self, ctx: RequestContext, name: str | None = None) -> None:
        """List sensors: #sensor-list <name> <description> <units> <type> [params...].

        With name only that sensor (fail Unknown sensor name if absent); with
        /regex/ those whose names match (Python re.search).  Replies ok <count>.
        """
        sensors = self._select_sensors(name)
        prefix = self._inform_prefix(ctx)
        body = prefix + prefix.join([s.list_tail() for s in sensors]) if sensors else b""
        ctx._reply_raw(body + self._ok_count(ctx, len(sensors)))

    def request_sensor_value(self, ctx: RequestContext, name: str | None = None) -> None:
        """Report sensor values: #sensor-value <timestamp> 1 <name> <status> <value>.

        Arguments as for ?sensor-list.  Replies ok <count>.
        """
        sensors = self._select_sensors(name)
        major = self.protocol.major
        prefix = self._inform_prefix(ctx)
        lines = [prefix + s.format_reading(s.reading, major) + b"\n" for s in sensors]
        lines.append(self._ok_count(ctx, len(sensors)))
        ctx._reply_raw(b"".join(lines))

    def request_sensor_sampling(
        self, ctx: RequestContext, names: str, strategy: bytes | None = None, *params: bytes
    ) -> tuple[Any, ...]:
        """Query or set how a sensor's readings are sent to this client (#sensor-status).

        ?sensor-sampling <name> replies ok <name> <strategy> [params...].
        ?sensor-sampling <name> <strategy> [params...] sets it, sends the current
        reading at once (unless the strategy is none) and echoes the strategy.
        Strategies: none; auto; period <s> (v4: ms); event; differential <d>;
        event-rate <shortest s> <longest s>; differential-rate <d> <shortest s> <longest s>.
        With protocol flag B, <name> may be a comma-separated list when setting: every
        name and the strategy are checked before anything changes.
        """
        conn = ctx.client
        major = self.protocol.major
        if strategy is None:
            if "," in names and self.protocol.bulk_set_sensor_sampling:
                raise FailReply("Cannot query multiple sensors.")
            sampler = conn.get_sampling(self._get_sensor(names))
            current = sampler.sampling if sampler is not None else Sampling(Strategy.NONE)
            return (names, *current.wire_arguments(major))
        if self.protocol.bulk_set_sensor_sampling:
            name_list = names.split(",")
            seen: set[str] = set()
            for n in name_list:
                if n in seen:
                    raise FailReply(f"Duplicate sensor name {n!r}.")
                seen.add(n)
        else:
            name_list = [names]
        sensors = [self._get_sensor(n) for n in name_list]
        by_type: dict[str, Sampling] = {}
        for s in sensors:
            if s.type.name not in by_type:
                try:
                    by_type[s.type.name] = parse_sampling(strategy, params, s.type, major)
                except InvalidUsage as exc:
                    raise FailReply(str(exc)) from None
        for s in sensors:
            conn.set_sampling(s, by_type[s.type.name])
            self._sampling_changed(s)
        return (names, *by_type[sensors[0].type.name].wire_arguments(major))

    def request_sensor_sampling_clear(self, ctx: RequestContext) -> None:
        """Set the strategy of every sensor this client samples to none (katcp-python extension)."""
        for sensor in ctx.client.clear_samplers():
            self._sampling_changed(sensor)

    @requires(major=5, flag="T")
    def request_request_timeout_hint(self, ctx: RequestContext, name: str | None = None) -> None:
        """Report how long slow requests may take: #request-timeout-hint <name> <seconds>.

        Without a name, every request that has a hint; with a name, that request (0.0
        when it has none).  Replies ok <count>.
        """
        if name is None:
            hinted = [(h.name, h.timeout_hint) for _, h in sorted(self._requests.items()) if h.timeout_hint]
        else:
            h = self._get_request(name)
            hinted = [(h.name, h.timeout_hint or 0.0)]
        ctx.informs((n, float(t)) for n, t in hinted)


DeviceServer._collect_requests()

