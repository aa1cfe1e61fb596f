"""Tornado client for a PyOpticon dashboard's socket port (source: /work/shared/protocols/pyopticon.md).

:class:`OpticonClient` offers the seed ``PyOpticonSocketClient`` operations as coroutines (``get_field``,
``set_field``, ``do_confirm``, ``do_eval``, ``do_exec``, ``close``) plus discovery (:meth:`list_fields`)
and batched reads (:meth:`get_fields`) for the KATCP mapping.  The wire format, framing and reply rules
live in the sans-I/O :mod:`katclient.devices.opticon.protocol`; this module only moves bytes.

Differences from the seed client, on purpose:

* any host (the seed hard-codes 127.0.0.1); ``printout`` defaults to false (the dashboard's documented
  default; the seed's true would log every poll on the dashboard console);
* ``handle_errors`` defaults to ``'exception'`` (raising :class:`~.protocol.DashboardError`); ``'print'``
  logs a warning instead of printing; ``'none'`` returns the ``Error: ...`` text as the seed does;
* requests over 1024 bytes are refused before sending (:class:`~.protocol.RequestTooLong`);
* every reply is read whole, however long (the seed reads 1024 bytes and leaves the rest to be taken for
  the next reply, section 1.1), and a zero-byte reply (empty value) is recognised with a sentinel probe in
  about :data:`DEFAULT_PROBE_AFTER` seconds instead of a 5 s timeout (see the protocol module);
* a dropped connection is re-established in the background with exponential random backoff; a request
  that was on the wire when it dropped fails (it may have taken effect) and is not retried;
* after a timeout mid-request the connection is dropped and re-made, because a late reply would otherwise
  be taken for the next request's.

Connection check: the dashboard serves one client per port; a second client's TCP connect succeeds
(kernel backlog) but gets no service (section 1.4).  So a connection counts as up only after a probe
round trip within ``connect_timeout``; on a busy port :meth:`connect` fails and the client keeps retrying.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType

from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

from katclient.client.backoff import ExponentialRandomBackoff
from katclient.devices.opticon.protocol import (
    DEFAULT_PORT,
    ERROR_MODES,
    MAX_REPLY_BYTES,
    Command,
    ErrorMode,
    FramerState,
    ReplyFramer,
    ReplyShape,
    Request,
    RequestQueueFull,
    UnexpectedReply,
    check_reply,
    encode_batch_get,
    encode_close,
    encode_confirm,
    encode_eval,
    encode_exec,
    encode_get,
    encode_list_fields,
    encode_probe,
    encode_set,
    is_error_reply,
    parse_batch_reply,
    parse_field_listing,
)
from katclient.errors import InvalidUsage, KatclientConnectionError, KatclientError, KatclientTimeoutError

__all__ = [
    "OpticonClient",
    "DEFAULT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_PROBE_AFTER",
    "MAX_QUEUED_REQUESTS",
]

logger = logging.getLogger(__name__)


class _Default(enum.Enum):
    TOKEN = 0


#: Sentinel for "use the client's default timeout".
DEFAULT = _Default.TOKEN

#: Seconds a request may take by default: the seed client's socket timeout (section 1.3).
DEFAULT_TIMEOUT = 5.0
#: Seconds for a TCP connect plus the probe round trip that proves the port serves us (section 1.4).
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Quiet period in seconds after which a request with no reply byte is probed (a zero-byte reply).  The
#: dashboard answers in well under a millisecond (section 1.4: ~7,000 round trips/s); this leaves a wide
#: margin for it to *read* the request before the probe arrives (see the protocol module).
DEFAULT_PROBE_AFTER = 0.1
#: Requests that may wait for the single connection (the one in flight included).  The dashboard serves
#: one request at a time (section 1.1); a caller queueing more than this is flooding it, and the bound
#: keeps memory and latency finite.  Polling should batch with :meth:`OpticonClient.get_fields` instead.
MAX_QUEUED_REQUESTS = 256
#: Bytes asked of the stream per read; a reply larger than this just takes several reads.
READ_CHUNK_BYTES = 65536
#: Tornado's stream buffer limit: twice the largest reply the framer accepts, so the framer's own limit
#: (:data:`~.protocol.MAX_REPLY_BYTES`) is what a flooding peer hits first.
MAX_STREAM_BUFFER_BYTES = 2 * MAX_REPLY_BYTES
#: Seconds :meth:`OpticonClient.close` lets an in-flight request finish before dropping the connection.
CLOSE_GRACE = 1.0

Timeout = float | None | _Default
StreamFactory = Callable[[], Awaitable[IOStream]]

_DROP_HINT = (
    "the dashboard drops a connection on a malformed or over-long request, an Eval whose result is not a "
    "str, or two requests arriving in one recv (protocols/pyopticon.md 1.1-1.2)"
)


class _Connection:
    """One TCP connection: its stream, the reader task feeding the current framer, and wake-ups."""

    __slots__ = ("stream", "framer", "error", "wake", "closed", "reader")

    def __init__(self, stream: IOStream) -> None:
        self.stream = stream
        self.framer: ReplyFramer | None = None
        self.error: Exception | None = None
        self.wake = asyncio.Event()
        self.closed = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None

    def drop(self) -> None:
        if not self.stream.closed():
            self.stream.close()

    async def wait_closed(self) -> None:
        self.drop()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


class OpticonClient:
    """Asynchronous client of one PyOpticon dashboard socket port.

    All operations are coroutines run on the current asyncio/Tornado loop; one request is on the wire at a
    time and callers are served first come, first served.  The connection is opened by :meth:`connect`
    (or lazily by the first request) and kept up in the background until :meth:`close`.

    :param host: dashboard host name or address.
    :param port: dashboard socket port (default 12345, section 1.1).
    :param handle_errors: ``'exception'`` (raise :class:`~.protocol.DashboardError`), ``'print'`` (log a
        warning and return the ``Error: ...`` text) or ``'none'`` (return it); section 1.3.
    :param printout: default of each request's ``printout`` flag (the dashboard logs the request).
    :param timeout: default seconds per operation (queueing, connecting and the exchange); None waits
        forever.
    :param connect_timeout: seconds for each connection attempt, including the probe round trip.
    :param probe_after: quiet period in seconds before a silent reply is probed.
    :param probe: whether to probe at all.  Without probing a zero-byte reply ends only with the timeout
        (as in the seed client) and a long reply is taken as complete after ``probe_after`` of quiet.
    :param backoff: reconnect backoff; default starts at 0.5 s and caps at 30 s.
    :param max_queued: bound on waiting requests (default :data:`MAX_QUEUED_REQUESTS`).
    :param stream_factory: coroutine function returning a connected :class:`~tornado.iostream.IOStream`,
        replacing the TCP connect (for tests on virtual sockets).
    :raises InvalidUsage: a parameter is out of range.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        handle_errors: ErrorMode = "exception",
        printout: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        probe_after: float = DEFAULT_PROBE_AFTER,
        probe: bool = True,
        backoff: ExponentialRandomBackoff | None = None,
        max_queued: int = MAX_QUEUED_REQUESTS,
        stream_factory: StreamFactory | None = None,
    ) -> None:
        if handle_errors not in ERROR_MODES:
            raise InvalidUsage(f"handle_errors must be one of {ERROR_MODES}, got {handle_errors!r}")
        if timeout is not None and timeout <= 0:
            raise InvalidUsage(f"timeout must be > 0 or None, got {timeout}")
        if connect_timeout <= 0 or probe_after <= 0:
            raise InvalidUsage("connect_timeout and probe_after must be > 0")
        if max_queued < 1:
            raise InvalidUsage(f"max_queued must be >= 1, got {max_queued}")
        self.host = host
        self.port = port
        self.handle_errors: ErrorMode = handle_errors
        self.printout = printout
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.probe_after = probe_after
        self.probe = probe
        self._backoff = backoff or ExponentialRandomBackoff(0.5, 30.0, 2.0, 0.5)
        self._max_queued = max_queued
        self._stream_factory = stream_factory
        self._tcp_client: TCPClient | None = None
        self._lock = asyncio.Lock()
        self._queued = 0
        self._conn: _Connection | None = None
        self._changed = asyncio.Event()
        self._manager: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self._last_error: BaseException | None = None
        self._nonce_prefix = "katclient-probe-" + secrets.token_hex(4)
        self._nonces = itertools.count(1)
        self._connections = 0
        self._probes = 0

    # ---------------------------------------------------------------------------------------------------
    # Connection state

    @property
    def connected(self) -> bool:
        """Whether a connection is up and was answered by the dashboard."""
        return self._conn is not None and not self._conn.closed.is_set()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing

    @property
    def connection_count(self) -> int:
        """Connections established so far (1 plus the number of reconnects)."""
        return self._connections

    @property
    def probes_sent(self) -> int:
        """Sentinel probes sent so far (for zero-byte and long replies)."""
        return self._probes

    @property
    def queued(self) -> int:
        """Requests waiting for, or holding, the connection."""
        return self._queued

    @property
    def last_error(self) -> BaseException | None:
        """Why the last connection attempt failed or the last connection ended, if it did."""
        return self._last_error

    def start(self) -> None:
        """Start keeping the connection up in the background (idempotent; needs a running loop).

        :raises KatclientConnectionError: the client was closed.
        """
        if self._closing:
            raise KatclientConnectionError("client is closed")
        if self._manager is None:
            self._manager = asyncio.get_running_loop().create_task(self._run())

    async def connect(self, timeout: Timeout = DEFAULT) -> None:
        """Start the client and wait until the dashboard answers.

        :param timeout: seconds (default: the connect timeout); None waits forever.
        :raises KatclientConnectionError: not connected in time (the last failure is chained), or closed.
        """
        self.start()
        await self._wait_connected(self._deadline(self.connect_timeout if timeout is DEFAULT else timeout))

    async def until_connected(self, timeout: float | None = None) -> None:
        """Wait until connected, like :meth:`connect` but with no default time limit."""
        await self.connect(timeout)

    async def __aenter__(self) -> OpticonClient:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _notify(self) -> None:
        """Wake everything waiting on a change of connection state."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _deadline(self, timeout: Timeout) -> float | None:
        if timeout is DEFAULT:
            timeout = self.timeout
        if timeout is None:
            return None
        return asyncio.get_running_loop().time() + timeout

    @staticmethod
    def _remaining(deadline: float | None) -> float | None:
        if deadline is None:
            return None
        return deadline - asyncio.get_running_loop().time()

    def _next_nonce(self) -> str:
        return f"{self._nonce_prefix}-{next(self._nonces)}"

    async def _wait_change(self, remaining: float | None) -> None:
        event = self._changed
        try:
            await asyncio.wait_for(event.wait(), remaining)
        except asyncio.TimeoutError:
            pass

    async def _wait_connected(self, deadline: float | None) -> _Connection:
        self.start()
        while True:
            if self._closing:
                raise KatclientConnectionError("client is closed")
            conn = self._conn
            if conn is not None and not conn.closed.is_set():
                return conn
            remaining = self._remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise KatclientConnectionError(
                    f"not connected to the dashboard at {self.host}:{self.port}"
                    + (f" (last error: {self._last_error})" if self._last_error else "")
                ) from self._last_error
            await self._wait_change(remaining)

    async def _sleep(self, delay: float) -> None:
        """Sleep *delay* seconds, or less if the client is closing."""
        loop = asyncio.get_running_loop()
        end = loop.time() + delay
        while not self._closing:
            remaining = end - loop.time()
            if remaining <= 0:
                return
            await self._wait_change(remaining)

    async def _run(self) -> None:
        """Keep one connection up, with backoff between attempts (katclient.client.backoff)."""
        try:
            while not self._closing:
                try:
                    conn = await self._open()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # every failure to connect is retried, none kills the loop
                    self._last_error = exc
                    delay = self._backoff.delay
                    self._backoff.failed()
                    logger.info(
                        "connecting to dashboard %s:%s failed (%s); retrying in %.2f s",
                        self.host,
                        self.port,
                        exc,
                        delay,
                    )
                    self._notify()
                    await self._sleep(delay)
                    continue
                self._backoff.success()
                self._connections += 1
                self._conn = conn
                logger.info("connected to dashboard %s:%s", self.host, self.port)
                self._notify()
                await conn.closed.wait()
                self._conn = None
                self._last_error = conn.error or KatclientConnectionError("connection closed")
                await conn.wait_closed()
                self._notify()
                if not self._closing:
                    logger.info(
                        "connection to dashboard %s:%s lost (%s)", self.host, self.port, self._last_error
                    )
                    # Pause even after a good connection: a peer that accepts and drops at once must not
                    # make this loop hot.  After success() the delay is back at delay_initial.
                    await self._sleep(self._backoff.delay)
        finally:
            last, self._conn = self._conn, None
            if last is not None:
                await last.wait_closed()
            if self._tcp_client is not None:
                self._tcp_client.close()
                self._tcp_client = None
            self._notify()

    async def _open(self) -> _Connection:
        """Connect and prove the dashboard serves this connection with one probe round trip."""
        try:
            if self._stream_factory is not None:
                stream = await asyncio.wait_for(self._stream_factory(), self.connect_timeout)
            else:
                if self._tcp_client is None:
                    self._tcp_client = TCPClient()
                stream = await self._tcp_client.connect(
                    self.host,
                    self.port,
                    timeout=self.connect_timeout,
                    max_buffer_size=MAX_STREAM_BUFFER_BYTES,
                )
        except (OSError, asyncio.TimeoutError) as exc:  # StreamClosedError is an OSError
            reason = getattr(exc, "real_error", None) or exc
            raise KatclientConnectionError(f"cannot connect to {self.host}:{self.port}: {reason!r}") from exc
        stream.set_nodelay(True)
        conn = _Connection(stream)
        conn.reader = asyncio.get_running_loop().create_task(self._read_loop(conn))
        nonce = self._next_nonce()
        try:
            reply = await self._exchange(
                conn, encode_probe(nonce), self._deadline(self.connect_timeout), False
            )
            if reply != nonce:
                raise UnexpectedReply("the dashboard did not echo the connection probe", reply)
        except BaseException as exc:
            await conn.wait_closed()
            if isinstance(exc, KatclientTimeoutError):
                raise KatclientConnectionError(
                    f"the dashboard at {self.host}:{self.port} accepted the connection but did not answer in "
                    f"{self.connect_timeout} s; it serves one client per port, is another one connected? "
                    "(protocols/pyopticon.md 1.4)"
                ) from exc
            raise
        return conn

    async def _read_loop(self, conn: _Connection) -> None:
        """The connection's only reader: feed every arriving chunk to the current framer."""
        try:
            while True:
                data = await conn.stream.read_bytes(READ_CHUNK_BYTES, partial=True)
                framer = conn.framer
                if framer is None:
                    # Strict request/response (section 1.1): bytes while idle mean the connection is out of
                    # step, so drop it rather than take them for the next reply.
                    conn.error = UnexpectedReply(
                        "unsolicited bytes from the dashboard", data.decode(errors="replace")
                    )
                    logger.warning("dropping connection to %s:%s: %s", self.host, self.port, conn.error)
                    return
                framer.receive_data(data)
                conn.wake.set()
        except StreamClosedError as exc:
            if conn.error is None and exc.real_error is not None:
                conn.error = KatclientConnectionError(f"connection lost: {exc.real_error}")
        except Exception as exc:  # a framing error (ProtocolError) or anything odd: drop, never crash
            conn.error = exc
            logger.warning("dropping connection to %s:%s: %s", self.host, self.port, exc)
        finally:
            conn.drop()
            conn.closed.set()
            conn.wake.set()
            self._notify()

    async def _write(self, conn: _Connection, data: bytes) -> None:
        try:
            await conn.stream.write(data)
        except StreamClosedError as exc:
            raise KatclientConnectionError(
                f"connection to {self.host}:{self.port} lost while sending"
            ) from exc

    async def _exchange(
        self, conn: _Connection, request: Request, deadline: float | None, probing: bool
    ) -> str:
        """Send *request* and return its whole reply text (framing: see the protocol module).

        :raises KatclientTimeoutError: no whole reply by *deadline* (the connection is then dropped).
        :raises KatclientConnectionError: the connection closed first.
        :raises ProtocolError: the reply broke the framing rules (the connection is then dropped).
        """
        framer = ReplyFramer(request, self._next_nonce(), probing=probing)
        conn.framer = framer
        try:
            await self._write(conn, request.data)
            while not framer.done:
                if conn.closed.is_set():
                    if isinstance(conn.error, KatclientError) and not isinstance(
                        conn.error, KatclientConnectionError
                    ):
                        raise conn.error  # a framing error (ProtocolError) found by the reader
                    raise KatclientConnectionError(
                        f"the dashboard at {self.host}:{self.port} closed the connection before answering "
                        f"{request.command.value}; {_DROP_HINT}"
                    ) from conn.error
                if framer.state is FramerState.PROBE_NEEDED:
                    await self._write(conn, framer.probe.data)
                    framer.probe_sent()
                    self._probes += 1
                    continue
                remaining = self._remaining(deadline)
                if remaining is not None and remaining <= 0:
                    raise KatclientTimeoutError(
                        f"no reply to {request.command.value} from {self.host}:{self.port} in time"
                    )
                # In AWAITING, a quiet period ends with framer.quiet(): probe (or, without probing, take
                # the bytes so far as the reply).  Otherwise wait for data until the deadline.
                wait = remaining
                quiet = framer.state is FramerState.AWAITING and (probing or framer.buffered > 0)
                quiet = quiet and (remaining is None or remaining > self.probe_after)
                if quiet:
                    wait = self.probe_after
                conn.wake.clear()
                try:
                    await asyncio.wait_for(conn.wake.wait(), wait)
                except asyncio.TimeoutError:
                    if quiet:
                        framer.quiet()
            return framer.reply
        finally:
            conn.framer = None
            if not framer.done:
                conn.drop()  # the stream is out of step: a late reply must never answer the next request

    # ---------------------------------------------------------------------------------------------------
    # Requests

    async def _request(self, request: Request, timeout: Timeout) -> str:
        """Queue *request*, send it when the connection is free, and return its reply text (unclassified)."""
        if self._closing:
            raise KatclientConnectionError("client is closed")
        if self._queued >= self._max_queued:
            raise RequestQueueFull(f"{self._queued} requests already queued (limit {self._max_queued})")
        deadline = self._deadline(timeout)
        self._queued += 1
        try:
            try:
                await asyncio.wait_for(self._lock.acquire(), self._remaining(deadline))
            except asyncio.TimeoutError:
                raise KatclientTimeoutError(
                    f"{request.command.value} timed out waiting for earlier requests to finish"
                ) from None
            try:
                conn = await self._wait_connected(deadline)
                return await self._exchange(conn, request, deadline, self.probe)
            finally:
                self._lock.release()
        finally:
            self._queued -= 1

    async def _command(self, request: Request, timeout: Timeout) -> str:
        text = await self._request(request, timeout)
        result = check_reply(request.command, text, request.shape, self.handle_errors)
        if self.handle_errors == "print" and is_error_reply(result):
            logger.warning("In %s, %s", request.command.value, result)
        return result

    def _printout(self, printout: bool | None) -> bool:
        return self.printout if printout is None else printout

    async def get_field(
        self,
        widget_nickname: str,
        field_name: str,
        printout: bool | None = None,
        *,
        timeout: Timeout = DEFAULT,
    ) -> str:
        """Read a field's current value with a ``Get`` (section 1.2).

        :returns: the value (a str; ``''`` for an empty field).
        :raises DashboardError: e.g. ``Error: 'Nope'`` for an unknown widget or field (mode ``'exception'``).
        :raises KatclientTimeoutError, KatclientConnectionError, InvalidUsage: see :class:`OpticonClient`.
        """
        return await self._command(encode_get(widget_nickname, field_name, self._printout(printout)), timeout)

    async def set_field(
        self,
        widget_nickname: str,
        field_name: str,
        new_value: str | int | float,
        printout: bool | None = None,
        *,
        timeout: Timeout = DEFAULT,
    ) -> str:
        """Set a field with a ``Set`` (section 1.2).

        The dashboard answers ``Success`` *before* applying the value (section 1.5), and also for an unknown
        field of an existing widget (section 1.3); use :meth:`set_field_verified` to wait for the read-back.
        Numbers are sent as their ``str()``.

        :returns: ``'Success'`` (or the error text in modes ``'none'``/``'print'``).
        :raises DashboardError: e.g. an unknown widget.
        """
        request = encode_set(widget_nickname, field_name, new_value, self._printout(printout))
        return await self._command(request, timeout)

    async def do_confirm(
        self, widget_nickname: str, printout: bool | None = None, *, timeout: Timeout = DEFAULT
    ) -> str:
        """Press a widget's Confirm (apply its input fields to the device) (sections 1.2, 1.7).

        ``Success`` only means the confirm was queued; ``on_confirm`` runs later on the widget's thread.

        :returns: ``'Success'``.
        :raises DashboardError: e.g. an unknown widget.
        """
        return await self._command(encode_confirm(widget_nickname, self._printout(printout)), timeout)

    async def do_eval(
        self, expression: str, printout: bool | None = None, *, timeout: Timeout = DEFAULT
    ) -> str:
        """Evaluate a Python expression in the dashboard (namespace: ``get_dashboard``, ``do_threadsafe``).

        The result must be a str: any other type makes the dashboard drop the connection (section 1.2),
        which raises :class:`KatclientConnectionError` here (the client then reconnects).

        :returns: the string the expression evaluated to (``''`` allowed).
        :raises DashboardError: the expression raised (``Error: division by zero``).
        """
        return await self._command(encode_eval(expression, self._printout(printout)), timeout)

    async def do_exec(
        self, code: str | Callable[..., object], printout: bool | None = None, *, timeout: Timeout = DEFAULT
    ) -> str:
        """Execute code in the dashboard: a function (its source is sent, as the seed does) or source text
        (sent as a function body; see :func:`~.protocol.exec_source`).

        :returns: ``'Success'``.
        :raises DashboardError: the code raised, or contains the text ``do_exec`` (section 1.2).
        :raises RequestTooLong: the source makes the request exceed 1024 bytes.
        """
        return await self._command(encode_exec(code, self._printout(printout)), timeout)

    async def list_fields(self, *, timeout: Timeout = DEFAULT) -> dict[str, list[str]]:
        """Discover widgets and fields with the read-only introspection Eval (section 1.6).

        :returns: widget nickname -> field names in creation order (``[]`` for a nicknamed widget without
            fields).
        :raises DashboardError: the dashboard failed the expression (always raised, whatever the mode).
        :raises UnexpectedReply: the reply is not such a dict.
        """
        request = encode_list_fields()
        text = await self._request(request, timeout)
        return parse_field_listing(check_reply(Command.EVAL, text, request.shape, "exception"))

    async def get_fields(
        self, pairs: Iterable[tuple[str, str]], *, timeout: Timeout = DEFAULT
    ) -> dict[tuple[str, str], str | None]:
        """Read many fields with as few round trips as the 1024-byte request limit allows (one Eval per
        batch; each batch is queued separately, so other callers interleave between batches).

        :param pairs: ``(widget_nickname, field_name)`` pairs; repeats are read once.
        :param timeout: seconds for all batches together.
        :returns: pair -> value, or None when the widget or field does not exist.
        :raises DashboardError: the dashboard failed the expression (always raised).
        """
        batches = encode_batch_get(dict.fromkeys(pairs))
        deadline = self._deadline(timeout)
        out: dict[tuple[str, str], str | None] = {}
        for request, chunk in batches:
            remaining = self._remaining(deadline)
            if remaining is not None and remaining <= 0:
                raise KatclientTimeoutError("get_fields ran out of time")
            text = await self._request(request, remaining)
            values = parse_batch_reply(
                check_reply(Command.EVAL, text, request.shape, "exception"), len(chunk)
            )
            out.update(zip(chunk, values))
        return out

    async def wait_for_field(
        self,
        widget_nickname: str,
        field_name: str,
        expected: str,
        *,
        timeout: Timeout = DEFAULT,
        interval: float = 0.05,
    ) -> str:
        """Read a field until it equals *expected*, every *interval* seconds.

        :returns: the value read.
        :raises KatclientTimeoutError: it did not show *expected* in time (the last value is in the text).
        :raises DashboardError: the field does not exist.
        """
        deadline = self._deadline(timeout)
        while True:
            value = await self._get_strict(widget_nickname, field_name, self._remaining(deadline))
            if value == expected:
                return value
            remaining = self._remaining(deadline)
            if remaining is not None and remaining <= interval:
                raise KatclientTimeoutError(
                    f"{widget_nickname}.{field_name} is {value!r}, not {expected!r}, after waiting"
                )
            await asyncio.sleep(interval)

    async def _get_strict(self, widget_nickname: str, field_name: str, timeout: float | None) -> str:
        request = encode_get(widget_nickname, field_name, False)
        text = await self._request(request, timeout)
        return check_reply(Command.GET, text, ReplyShape.VALUE, "exception")

    async def set_field_verified(
        self,
        widget_nickname: str,
        field_name: str,
        new_value: str | int | float,
        *,
        timeout: Timeout = DEFAULT,
        interval: float = 0.05,
    ) -> str:
        """Set a field, then wait until a read-back shows the new value (the dashboard applies a Set after
        answering it, section 1.5).

        :returns: the value read back (``str(new_value)``).
        :raises DashboardError: unknown widget, or unknown field (seen on read-back: the Set itself answers
            ``Success``, section 1.3).  Always raised, whatever the mode.
        :raises KatclientTimeoutError: the value did not show in time.
        """
        deadline = self._deadline(timeout)
        request = encode_set(widget_nickname, field_name, new_value, self._printout(None))
        text = await self._request(request, self._remaining(deadline))
        check_reply(Command.SET, text, request.shape, "exception")
        return await self.wait_for_field(
            widget_nickname, field_name, str(new_value), timeout=self._remaining(deadline), interval=interval
        )

    async def close(self) -> None:
        """Send ``Close`` (the dashboard sends no reply and re-listens, section 1.2), close the socket and
        stop reconnecting.  Queued requests fail with :class:`KatclientConnectionError`; one in flight may
        finish for up to :data:`CLOSE_GRACE` seconds.  Idempotent.
        """
        if self._closed:
            return
        self._closing = True
        self._notify()
        acquired = False
        try:
            try:
                await asyncio.wait_for(self._lock.acquire(), CLOSE_GRACE)
                acquired = True
            except asyncio.TimeoutError:
                logger.warning(
                    "close: a request is still in flight after %s s; dropping the connection", CLOSE_GRACE
                )
            conn = self._conn
            if conn is not None and not conn.closed.is_set():
                if acquired:
                    try:
                        await conn.stream.write(encode_close().data)
                    except StreamClosedError:
                        pass
                conn.drop()
            manager = self._manager
            if manager is not None:
                # The manager ends by itself once the connection is gone, unless it is in the middle of a
                # connection attempt (bounded by connect_timeout): cancel that rather than wait for it.
                await asyncio.wait({manager}, timeout=CLOSE_GRACE)
                manager.cancel()
                await asyncio.gather(manager, return_exceptions=True)
        finally:
            if acquired:
                self._lock.release()
            self._closed = True
