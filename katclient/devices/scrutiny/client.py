"""Tornado client for the Scrutiny Debugger server API.

Source: protocols/scrutiny.md (section numbers below refer to it).  The codec is
:mod:`~katclient.devices.scrutiny.framing`; the typed results are in
:mod:`~katclient.devices.scrutiny.model`; this module only does I/O and bookkeeping:

* one reader task per connection that never stops reading (section 3.2: the real server stalls
  every client when one stops reading), decoding frames and dispatching each message at once;
* ``reqid`` correlation of replies (``response_<cmd>``, ``error``, and ``inform_server_status``
  for ``get_server_status``), and ``request_token`` correlation of the second phase of
  ``write_watchable``, ``read_memory``, ``write_memory`` and datalogging acquisitions (1.2);
* a status poll every ``status_interval`` seconds, as the SDK does (1.3), and device/SFD change
  detection by comparing successive statuses (1.5), with events and re-subscription;
* reconnection with :class:`~katclient.client.backoff.ExponentialRandomBackoff`.

Value updates go to synchronous callbacks called from the reader: they must return quickly and
never block (schedule a task for slow work).  Event callbacks are called the same way.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

from katclient.client.backoff import ExponentialRandomBackoff
from katclient.devices.scrutiny.errors import ScrutinyBatchWriteError, ScrutinyError, ScrutinyProtocolError
from katclient.devices.scrutiny.events import (
    DataloggingListChanged,
    DeviceReady,
    ScrutinyEvent,
    ServerConnected,
    ServerDisconnected,
    SFDLoaded,
    StatusUpdated,
    SubscriptionsRestored,
    status_events,
)
from katclient.devices.scrutiny.framing import STREAM_MTU, FrameError, MessageDecoder, encode_message
from katclient.devices.scrutiny.model import (
    AcquisitionInfo,
    DataloggingAcquisition,
    DataloggingConfig,
    DeviceInfo,
    ServerStats,
    ServerStatus,
    SFDInfo,
    UserCommandResponse,
    WatchableCount,
    WatchableInfo,
    WatchableList,
    WatchableType,
    WatchableValue,
    WriteResult,
    decode_b64,
    parse_acquisition_content,
    parse_acquisition_list,
    parse_device_info,
    parse_installed_sfds,
    parse_loaded_sfd,
    parse_server_stats,
    parse_server_status,
    parse_sfd_info,
    parse_user_command,
    parse_watchable_count,
    parse_watchable_info_map,
    parse_watchable_list_part,
    parse_welcome,
)
from katclient.devices.scrutiny.sfd import FIRMWARE_ID_RE, MAX_SFD_SIZE, read_sfd_firmware_id
from katclient.errors import InvalidUsage, KatclientConnectionError, KatclientError, KatclientTimeoutError

__all__ = [
    "ScrutinyClient",
    "DataloggingRequest",
    "Subscription",
    "StreamFactory",
    "DEFAULT",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WRITE_TIMEOUT",
    "STATUS_INTERVAL",
    "CONNECT_TIMEOUT",
]

logger = logging.getLogger(__name__)

#: The server's default API port (scrutiny.md 1.1).
DEFAULT_PORT = 8765
#: Default time budget of a request, in seconds (the SDK's ``timeout=4.0``, section 2).
DEFAULT_TIMEOUT = 4.0
#: Default time budget of a write that goes to the device, in seconds (the SDK's ``write_timeout``).
DEFAULT_WRITE_TIMEOUT = 5.0
#: Seconds between ``get_server_status`` polls; the server pushes status only on some events (1.3).
STATUS_INTERVAL = 2.0
#: Seconds allowed for the TCP connection to be set up.
CONNECT_TIMEOUT = 5.0
#: Bytes asked of the socket per read; any size works, the decoder reassembles frames.
READ_CHUNK_SIZE = 64 * 1024
#: Bound on Tornado's read buffer: a whole frame never needs to sit there (the decoder holds it),
#: so a few MTUs are plenty.
MAX_READ_BUFFER = 4 * STREAM_MTU
#: Most requests in flight at once (including second phases).  Bounds the correlation tables.
MAX_PENDING_REQUESTS = 10_000
#: Most entries accepted in one watchable listing (all chunks together), to bound memory.
MAX_LIST_ENTRIES = 1_000_000
#: Most writes in one batch; the SDK caps batches at this size too (section 2, Batch write).
MAX_BATCH_WRITE = 500
#: Raw SFD bytes per ``upload_sfd_data`` chunk; base64 makes it 4/3 larger, well under the MTU.
SFD_UPLOAD_CHUNK = 256 * 1024
#: Most path-to-definition entries cached for id lookups; the cache is cleared beyond this.
MAX_INFO_CACHE = 100_000
#: Request ids wrap here, as the SDK's do (1.2).
REQID_MODULO = 2**32 - 1
#: Largest user-command subfunction (1.4 ``user_command``).
MAX_SUBFUNCTION = 255

_UNKNOWN_WATCHABLE_RE = re.compile(r"^Unknown watchable : (.*)$", re.DOTALL)
_TOKEN_INFORMS = frozenset(
    {
        "inform_write_completion",
        "inform_memory_read_complete",
        "inform_memory_write_complete",
        "inform_datalogging_acquisition_complete",
    }
)


class _Default(enum.Enum):
    TOKEN = 0


#: Sentinel for "use the client's default timeout" (STYLE.md habit 14).
DEFAULT = _Default.TOKEN

#: A timeout argument: seconds, ``None`` for "wait forever", or :data:`DEFAULT`.
Timeout = float | None | _Default

#: Makes a connected stream to ``(host, port)``; lets tests use virtual-time socket pairs.
StreamFactory = Callable[[str, int], Awaitable[IOStream]]

#: A writable value: the server also parses strings ("true", "2*0.5", "0x10"; section 1.6).
WriteValue = int | float | bool | str

ValueCallback = Callable[[Sequence[WatchableValue]], None]
EventCallback = Callable[[ScrutinyEvent], None]


@dataclass(slots=True)
class _Pending:
    cmd: str
    expected: str
    future: asyncio.Future[dict[str, Any]]
    on_reply: Callable[[dict[str, Any]], bool] | None
    last_activity: float


@dataclass(slots=True)
class _TokenWait:
    inform_cmd: str
    future: asyncio.Future[list[dict[str, Any]]]
    expected: int
    received: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Subscription:
    """A watchable the client wants updates for.

    :param path: the watchable's path.
    :param rate: requested update rate in Hz, ``None`` for as fast as possible.
    :param info: the last definition the server gave (``None`` until first subscribed).
    :param server_id: the live server id, ``None`` while not subscribed on the server (after a
        disconnect, or when its device session/SFD went away; it is restored when it comes back).
    """

    path: str
    rate: float | None
    info: WatchableInfo | None = None
    server_id: str | None = None
    temporary: bool = False

    @property
    def active(self) -> bool:
        """True while the server is sending updates for it."""
        return self.server_id is not None


@dataclass(slots=True)
class ClientStats:
    """Counters of what the client saw (for diagnostics and tests)."""

    messages: int = 0
    frame_errors: int = 0
    bad_messages: int = 0
    unknown_updates: int = 0
    late_replies: int = 0
    connects: int = 0


class DataloggingRequest:
    """A running datalogging acquisition (the second phase of ``request_datalogging_acquisition``).

    :param token: the server's ``request_token``.
    """

    def __init__(self, token: str, future: asyncio.Future[list[dict[str, Any]]]) -> None:
        self.token = token
        self._future = future

    def done(self) -> bool:
        """True when the acquisition completed, failed, or the connection dropped."""
        return self._future.done()

    async def wait(self, timeout: float | None = None) -> str:
        """Wait for the acquisition to complete.

        :param timeout: seconds, ``None`` to wait forever.
        :returns: the stored acquisition's ``reference_id``.
        :raises ScrutinyError: when the device or server reports a failure (``detail_msg``).
        :raises KatclientTimeoutError: when not done within ``timeout``.
        :raises KatclientConnectionError: when the connection dropped first.
        """
        informs = await _await(asyncio.shield(self._future), timeout, "datalogging acquisition")
        inform = informs[0]
        if not inform.get("success"):
            raise ScrutinyError(
                str(inform.get("detail_msg") or "acquisition failed"),
                "request_datalogging_acquisition",
                inform,
            )
        ref = inform.get("reference_id")
        if not isinstance(ref, str):
            raise ScrutinyProtocolError("acquisition completed without a reference_id", inform)
        return ref


async def _await(awaitable: Awaitable[Any], timeout: float | None, what: str) -> Any:
    if timeout is None:
        return await awaitable
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise KatclientTimeoutError(f"{what}: no answer within {timeout} s") from None


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Mark a future's exception as seen so asyncio does not log it when nobody awaited it.
    if not future.cancelled():
        future.exception()


class _Connection:
    __slots__ = ("stream", "decoder", "server_time_zero", "tasks", "host", "port")

    def __init__(self, stream: IOStream, host: str, port: int) -> None:
        self.stream = stream
        self.decoder = MessageDecoder()
        self.server_time_zero: float | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.host = host
        self.port = port

    def send(self, message: Mapping[str, Any]) -> None:
        data = encode_message(message)
        try:
            self.stream.write(data)
        except StreamClosedError as exc:
            raise KatclientConnectionError(f"connection to {self.host}:{self.port} is closed") from exc


class ScrutinyClient:
    """Asynchronous client of one Scrutiny server (Tornado ``IOStream``).

    Call :meth:`start` (or ``await`` :meth:`connect`) inside a running event loop; the client then
    connects, reconnects with backoff when the server goes away, and re-subscribes what was
    subscribed.  :meth:`close` ends every task and socket.

    :param host: server host name or address.
    :param port: server API port.
    :param timeout: default request timeout in seconds (``None`` = forever).
    :param write_timeout: default timeout of writes that reach the device, in seconds.
    :param status_interval: seconds between status polls.
    :param connect_timeout: seconds allowed to set up the TCP connection.
    :param reconnect: reconnect after a lost or failed connection.
    :param backoff: the reconnect backoff (default: 0.5 s initial, 10 s max).
    :param stream_factory: coroutine function ``(host, port) -> IOStream``; defaults to
        ``tornado.tcpclient.TCPClient``.  Lets tests run on virtual-time socket pairs.
    :raises InvalidUsage: on a bad parameter.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
        status_interval: float = STATUS_INTERVAL,
        connect_timeout: float = CONNECT_TIMEOUT,
        reconnect: bool = True,
        backoff: ExponentialRandomBackoff | None = None,
        stream_factory: StreamFactory | None = None,
    ) -> None:
        if status_interval <= 0:
            raise InvalidUsage("status_interval must be > 0 seconds")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.write_timeout = write_timeout
        self.status_interval = status_interval
        self.connect_timeout = connect_timeout
        self.reconnect = reconnect
        self.backoff = backoff if backoff is not None else ExponentialRandomBackoff(0.5, 10.0, 2.0, 0.5)
        self._stream_factory = stream_factory if stream_factory is not None else self._tcp_connect
        self.stats = ClientStats()

        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._wake: asyncio.Event | None = None
        self._conn: _Connection | None = None
        self._last_error: BaseException | None = None
        self._reqid = 0
        self._pending: dict[int, _Pending] = {}
        self._tokens: dict[str, _TokenWait] = {}
        self._status: ServerStatus | None = None
        self._connect_waiters: list[asyncio.Future[None]] = []
        self._status_waiters: list[
            tuple[Callable[[ServerStatus], bool], bool, asyncio.Future[ServerStatus]]
        ] = []
        self._subs: dict[str, Subscription] = {}
        self._id_to_path: dict[str, str] = {}
        self._info_cache: dict[str, WatchableInfo] = {}
        self._latest: dict[str, WatchableValue] = {}
        self._value_waiters: dict[str, list[asyncio.Future[WatchableValue]]] = {}
        self._value_callbacks: list[ValueCallback] = []
        self._event_callbacks: list[EventCallback] = []
        self._restore_wanted: asyncio.Event | None = None
        self._sfd_reload: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def _tcp_connect(self, host: str, port: int) -> IOStream:
        stream = await TCPClient().connect(
            host, port, timeout=self.connect_timeout, max_buffer_size=MAX_READ_BUFFER
        )
        stream.set_nodelay(True)
        return stream

    def start(self) -> None:
        """Start connecting in the background (idempotent; needs a running event loop).

        :raises InvalidUsage: after :meth:`close`.
        """
        if self._closing:
            raise InvalidUsage("the client was closed")
        if self._task is None:
            self._wake = asyncio.Event()
            self._restore_wanted = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="scrutiny-client")

    async def connect(self, timeout: float | None = CONNECT_TIMEOUT, wait_status: bool = True) -> None:
        """Start, then wait until connected (and, by default, until the first status arrived).

        :param timeout: seconds for each wait, ``None`` for forever.
        :param wait_status: also wait for the first server status.
        :raises KatclientTimeoutError: when not connected in time.
        :raises KatclientConnectionError: when the connection failed and ``reconnect`` is off.
        """
        self.start()
        await self.until_connected(timeout)
        if wait_status:
            await self.until_status(lambda s: True, timeout)

    async def close(self) -> None:
        """Disconnect and end every task; fails requests in flight with KatclientConnectionError."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        conn = self._conn
        if conn is not None:
            conn.stream.close()
        task = self._task
        if task is not None and not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), self.connect_timeout + 1.0)
            except asyncio.TimeoutError:  # pragma: no cover - only when a stream factory hangs
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._fail_waiters(KatclientConnectionError("the client was closed"))

    async def __aenter__(self) -> ScrutinyClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True while connected and welcomed by the server."""
        return self._conn is not None and self._conn.server_time_zero is not None

    @property
    def server_time_zero(self) -> float | None:
        """The server's time origin (epoch seconds) from the current connection's ``welcome``."""
        return self._conn.server_time_zero if self._conn is not None else None

    @property
    def status(self) -> ServerStatus | None:
        """The latest server status, ``None`` when not connected or none arrived yet."""
        return self._status

    @property
    def subscriptions(self) -> Mapping[str, Subscription]:
        """The wanted subscriptions by path (read-only view; includes inactive ones)."""
        return dict(self._subs)

    def latest_value(self, path: str) -> WatchableValue | None:
        """The last update received for a subscribed ``path``, or ``None``."""
        return self._latest.get(path)

    # ------------------------------------------------------------------ callbacks and waits

    def add_value_callback(self, callback: ValueCallback) -> None:
        """Call ``callback(updates)`` with the records of each ``watchable_update`` (from the reader)."""
        self._value_callbacks.append(callback)

    def remove_value_callback(self, callback: ValueCallback) -> None:
        """Undo :meth:`add_value_callback` (no error when absent)."""
        if callback in self._value_callbacks:
            self._value_callbacks.remove(callback)

    def add_event_callback(self, callback: EventCallback) -> None:
        """Call ``callback(event)`` for every :data:`~katclient.devices.scrutiny.events.ScrutinyEvent`."""
        self._event_callbacks.append(callback)

    def remove_event_callback(self, callback: EventCallback) -> None:
        """Undo :meth:`add_event_callback` (no error when absent)."""
        if callback in self._event_callbacks:
            self._event_callbacks.remove(callback)

    async def until_connected(self, timeout: float | None = None) -> None:
        """Wait until connected and welcomed.

        :raises KatclientTimeoutError: after ``timeout`` seconds.
        :raises KatclientConnectionError: when closed, or the connection failed without ``reconnect``.
        """
        if self.connected:
            return
        if self._closing or (self._task is not None and self._task.done()):
            raise KatclientConnectionError(f"not connected to {self.host}:{self.port}: {self._last_error}")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._connect_waiters.append(fut)
        try:
            await _await(fut, timeout, f"connecting to {self.host}:{self.port}")
        finally:
            if fut in self._connect_waiters:
                self._connect_waiters.remove(fut)

    async def until_status(
        self,
        predicate: Callable[[ServerStatus], bool],
        timeout: float | None = None,
        *,
        pushed_only: bool = False,
    ) -> ServerStatus:
        """Wait for a server status satisfying ``predicate`` (the current one counts).

        :param predicate: test applied to each status.
        :param timeout: seconds, ``None`` for forever.
        :param pushed_only: only consider new statuses pushed by the server (``reqid`` null).
        :returns: the matching status.
        :raises KatclientTimeoutError: after ``timeout`` seconds.
        :raises KatclientConnectionError: when the client is closed while waiting.
        """
        if not pushed_only and self._status is not None and predicate(self._status):
            return self._status
        return await self._wait_status(self._add_status_waiter(predicate, pushed_only), timeout)

    def _add_status_waiter(
        self, predicate: Callable[[ServerStatus], bool], pushed_only: bool
    ) -> tuple[Callable[[ServerStatus], bool], bool, asyncio.Future[ServerStatus]]:
        if self._closing:
            raise KatclientConnectionError("the client was closed")
        entry = (predicate, pushed_only, asyncio.get_running_loop().create_future())
        self._status_waiters.append(entry)
        return entry

    async def _wait_status(
        self,
        entry: tuple[Callable[[ServerStatus], bool], bool, asyncio.Future[ServerStatus]],
        timeout: float | None,
    ) -> ServerStatus:
        try:
            result: ServerStatus = await _await(entry[2], timeout, "waiting for a server status")
            return result
        finally:
            if entry in self._status_waiters:
                self._status_waiters.remove(entry)

    async def until_device_ready(self, timeout: float | None = None) -> ServerStatus:
        """Wait until a device is connected and ready (status ``connected_ready``).

        :raises KatclientTimeoutError: after ``timeout`` seconds.
        """
        return await self.until_status(lambda s: s.device_ready, timeout)

    # ------------------------------------------------------------------ connection loop

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._closing:
            try:
                stream = await self._stream_factory(self.host, self.port)
            except Exception as exc:
                self._last_error = exc
                logger.info("cannot connect to Scrutiny server %s:%s: %s", self.host, self.port, exc)
                if not self.reconnect:
                    self._fail_connect_waiters(KatclientConnectionError(f"cannot connect: {exc}"))
                    return
                self.backoff.failed()
                await self._sleep(self.backoff.delay)
                continue
            if self._closing:
                stream.close()
                break
            conn = _Connection(stream, self.host, self.port)
            self._conn = conn
            reason = "connection closed"
            try:
                reason = await self._read_loop(conn)
            finally:
                await self._teardown(conn, reason)
            if not self.reconnect:
                self._fail_connect_waiters(KatclientConnectionError(f"disconnected: {reason}"))
                return
            if not self._closing:
                await self._sleep(self.backoff.delay)

    async def _sleep(self, delay: float) -> None:
        assert self._wake is not None
        try:
            await asyncio.wait_for(self._wake.wait(), delay)
        except asyncio.TimeoutError:
            pass

    async def _read_loop(self, conn: _Connection) -> str:
        stream = conn.stream
        decoder = conn.decoder
        while True:
            try:
                chunk = await stream.read_bytes(READ_CHUNK_SIZE, partial=True)
            except StreamClosedError as exc:
                err = exc.real_error or stream.error
                return "closed by the client" if self._closing else f"server closed the connection ({err})"
            for item in decoder.feed(chunk):
                if isinstance(item, FrameError):
                    self.stats.frame_errors += 1
                    logger.warning("dropped a frame from %s:%s: %s", self.host, self.port, item.detail)
                    continue
                self.stats.messages += 1
                try:
                    self._dispatch(conn, item)
                except Exception:  # never let one message kill the reader
                    self.stats.bad_messages += 1
                    logger.exception("error handling Scrutiny message %.200r", item)
            if len(chunk) >= READ_CHUNK_SIZE:
                # More data is likely buffered and Tornado then completes reads without suspending:
                # let the other tasks run so a flood cannot starve them.
                await asyncio.sleep(0)

    async def _teardown(self, conn: _Connection, reason: str) -> None:
        if self._conn is conn:
            self._conn = None
        conn.stream.close()
        for task in conn.tasks:
            task.cancel()
        if conn.tasks:
            await asyncio.gather(*conn.tasks, return_exceptions=True)
        error = KatclientConnectionError(f"lost connection to {self.host}:{self.port}: {reason}")
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
                _retrieve(pending.future)
        self._pending.clear()
        for wait in self._tokens.values():
            if not wait.future.done():
                wait.future.set_exception(error)
                _retrieve(wait.future)
        self._tokens.clear()
        self._id_to_path.clear()
        self._info_cache.clear()
        for sub in self._subs.values():
            sub.server_id = None
        self._sfd_reload = None
        previous, self._status = self._status, None
        welcomed = conn.server_time_zero is not None
        for event in status_events(previous, None):
            self._emit(event)
        if welcomed:
            logger.info("disconnected from Scrutiny server %s:%s: %s", self.host, self.port, reason)
            self._emit(ServerDisconnected(self.host, self.port, reason))

    def _fail_connect_waiters(self, error: BaseException) -> None:
        self._last_error = error
        for fut in self._connect_waiters:
            if not fut.done():
                fut.set_exception(error)
                _retrieve(fut)

    def _fail_waiters(self, error: BaseException) -> None:
        self._fail_connect_waiters(error)
        for _, _, fut in self._status_waiters:
            if not fut.done():
                fut.set_exception(error)
                _retrieve(fut)
        for futs in self._value_waiters.values():
            for vfut in futs:
                if not vfut.done():
                    vfut.set_exception(error)
                    _retrieve(vfut)

    def _emit(self, event: ScrutinyEvent) -> None:
        for callback in list(self._event_callbacks):
            try:
                callback(event)
            except Exception:
                logger.exception("Scrutiny event callback %r failed on %r", callback, event)

    # ------------------------------------------------------------------ dispatch (runs in the reader)

    def _dispatch(self, conn: _Connection, msg: dict[str, Any]) -> None:
        cmd = msg.get("cmd")
        if cmd == "watchable_update":
            self._on_values(conn, msg)
            return
        if cmd == "inform_server_status":
            self._on_status(msg)
        elif cmd == "welcome":
            self._on_welcome(conn, msg)
            return
        elif cmd in _TOKEN_INFORMS:
            self._on_token_inform(msg)
            return
        elif cmd == "inform_datalogging_list_changed":
            ref = msg.get("reference_id")
            self._emit(DataloggingListChanged(str(msg.get("action")), ref if isinstance(ref, str) else None))
            return
        reqid = msg.get("reqid")
        if reqid is None:
            if cmd != "inform_server_status":
                logger.debug("ignoring unsolicited Scrutiny message %r", cmd)
            return
        pending = self._pending.get(reqid) if isinstance(reqid, int) else None
        if pending is None or pending.future.done():
            self.stats.late_replies += 1
            return
        fut = pending.future
        if cmd == "error":
            text = msg.get("msg")
            request_cmd = msg.get("request_cmd")
            fut.set_exception(
                ScrutinyError(
                    str(text) if text is not None else "error",
                    request_cmd if isinstance(request_cmd, str) else pending.cmd,
                    msg,
                )
            )
            _retrieve(fut)
            return
        if cmd != pending.expected:
            fut.set_exception(ScrutinyProtocolError(f"expected {pending.expected}, got {cmd!r}", msg))
            _retrieve(fut)
            return
        pending.last_activity = asyncio.get_running_loop().time()
        done = True
        if pending.on_reply is not None:
            try:
                done = pending.on_reply(msg)
            except KatclientError as exc:
                fut.set_exception(exc)
                _retrieve(fut)
                return
        if done:
            fut.set_result(msg)

    def _on_welcome(self, conn: _Connection, msg: dict[str, Any]) -> None:
        if conn.server_time_zero is not None:
            logger.warning("second welcome from %s:%s ignored", self.host, self.port)
            return
        conn.server_time_zero = parse_welcome(msg)
        self.backoff.success()
        self.stats.connects += 1
        logger.info("connected to Scrutiny server %s:%s", self.host, self.port)
        loop = asyncio.get_running_loop()
        conn.tasks.append(loop.create_task(self._poll_status(conn), name="scrutiny-status"))
        conn.tasks.append(loop.create_task(self._maintain(conn), name="scrutiny-resubscribe"))
        if self._subs and self._restore_wanted is not None:
            self._restore_wanted.set()
        for fut in self._connect_waiters:
            if not fut.done():
                fut.set_result(None)
        self._emit(ServerConnected(self.host, self.port, conn.server_time_zero))

    def _on_values(self, conn: _Connection, msg: dict[str, Any]) -> None:
        updates = msg.get("updates")
        if not isinstance(updates, list):
            self.stats.bad_messages += 1
            return
        zero = conn.server_time_zero or 0.0
        id_to_path = self._id_to_path
        batch: list[WatchableValue] = []
        for record in updates:
            if type(record) is not dict:
                self.stats.bad_messages += 1
                continue
            sid = record.get("id")
            if not isinstance(sid, str):
                self.stats.bad_messages += 1
                continue
            path = id_to_path.get(sid)
            if path is None:
                self.stats.unknown_updates += 1
                continue
            t = record.get("t")
            value = record.get("v")
            if not isinstance(t, (int, float)) or not (value is None or isinstance(value, (int, float))):
                self.stats.bad_messages += 1
                continue
            reason = record.get("r")
            raw = record.get("d")
            batch.append(
                WatchableValue(
                    path,
                    sid,
                    value,
                    zero + t / 1e6,
                    float(t),
                    reason if isinstance(reason, str) else None,
                    raw if isinstance(raw, str) else None,
                )
            )
        if not batch:
            return
        latest = self._latest
        for wv in batch:
            latest[wv.path] = wv
        for callback in self._value_callbacks:
            try:
                callback(batch)
            except Exception:
                logger.exception("Scrutiny value callback %r failed", callback)
        if self._value_waiters:
            for wv in batch:
                futs = self._value_waiters.get(wv.path)
                if futs:
                    for fut in futs:
                        if not fut.done():
                            fut.set_result(wv)

    def _on_status(self, msg: dict[str, Any]) -> None:
        try:
            status = parse_server_status(msg)
        except ScrutinyProtocolError as exc:
            self.stats.bad_messages += 1
            logger.warning("bad server status from %s:%s: %s", self.host, self.port, exc)
            return
        pushed = msg.get("reqid") is None
        previous, self._status = self._status, status
        events = status_events(previous, status)
        # On the first status of a connection every id is fresh (the teardown dropped the old ones).
        session_changed = previous is not None and previous.device_session_id != status.device_session_id
        sfd_changed = previous is not None and previous.sfd_firmware_id != status.sfd_firmware_id
        if pushed and self._sfd_reload is not None and status.sfd_firmware_id == self._sfd_reload:
            sfd_changed = True  # the same SFD was loaded again: new var/alias ids (load_sfd)
            self._sfd_reload = None
        if session_changed:
            self._forget_ids(lambda info: info.depends_on_device_session)
        if sfd_changed:
            self._forget_ids(lambda info: info.depends_on_sfd)
        self._emit(StatusUpdated(status))
        for event in events:
            self._emit(event)
        restore = any(isinstance(e, (DeviceReady, SFDLoaded)) for e in events) or (
            sfd_changed and status.sfd_firmware_id is not None
        )
        if restore and self._restore_wanted is not None and any(not s.active for s in self._subs.values()):
            self._restore_wanted.set()
        for predicate, pushed_only, fut in list(self._status_waiters):
            if fut.done() or (pushed_only and not pushed):
                continue
            try:
                matched = predicate(status)
            except Exception as exc:
                fut.set_exception(exc)
                _retrieve(fut)
                continue
            if matched:
                fut.set_result(status)

    def _forget_ids(self, dead: Callable[[WatchableInfo], bool]) -> None:
        for sub in self._subs.values():
            if sub.server_id is not None and (sub.info is None or dead(sub.info)):
                self._id_to_path.pop(sub.server_id, None)
                sub.server_id = None
        for path in [p for p, info in self._info_cache.items() if dead(info)]:
            del self._info_cache[path]

    def _on_token_inform(self, msg: dict[str, Any]) -> None:
        token = msg.get("request_token")
        wait = self._tokens.get(token) if isinstance(token, str) else None
        if wait is None or wait.inform_cmd != msg.get("cmd"):
            return  # e.g. a write completion for another client's write to a watched entry (1.4)
        wait.received.append(msg)
        if len(wait.received) >= wait.expected:
            del self._tokens[token]  # type: ignore[arg-type]
            if not wait.future.done():
                wait.future.set_result(wait.received)

    # ------------------------------------------------------------------ background tasks

    async def _poll_status(self, conn: _Connection) -> None:
        while self._conn is conn:
            try:
                await self._request("get_server_status", None, self.timeout, expected="inform_server_status")
            except KatclientConnectionError:
                return
            except KatclientError as exc:
                logger.warning("status poll of %s:%s failed: %s", self.host, self.port, exc)
            await asyncio.sleep(self.status_interval)

    async def _maintain(self, conn: _Connection) -> None:
        wanted = self._restore_wanted
        assert wanted is not None
        while self._conn is conn:
            await wanted.wait()
            wanted.clear()
            try:
                await self._restore_subscriptions()
            except KatclientConnectionError:
                return
            except KatclientError as exc:
                logger.warning("re-subscribing on %s:%s failed: %s; retrying", self.host, self.port, exc)
                await asyncio.sleep(self.status_interval)
                wanted.set()

    async def _restore_subscriptions(self) -> None:
        status = self._status
        device_ready = status is not None and status.device_ready
        sfd_loaded = status is not None and status.sfd_firmware_id is not None
        by_rate: dict[float | None, list[str]] = {}
        for sub in self._subs.values():
            if sub.active:
                continue
            info = sub.info
            if info is not None:
                if info.depends_on_device_session and not device_ready:
                    continue
                if info.depends_on_sfd and not sfd_loaded:
                    continue
            by_rate.setdefault(sub.rate, []).append(sub.path)
        restored: list[str] = []
        missing: list[str] = []
        for rate, paths in by_rate.items():
            remaining = list(paths)
            while remaining:
                try:
                    infos = await self._subscribe_request(remaining, rate, self.timeout)
                except ScrutinyError as exc:
                    match = _UNKNOWN_WATCHABLE_RE.match(exc.msg)
                    if match is None or match.group(1) not in remaining:
                        raise
                    remaining.remove(match.group(1))  # all-or-nothing (1.4): drop it, retry the rest
                    missing.append(match.group(1))
                    continue
                restored.extend(p for p in remaining if p in infos)
                break
        if restored or missing:
            self._emit(SubscriptionsRestored(tuple(restored), tuple(missing)))

    # ------------------------------------------------------------------ request machinery

    def _timeout(self, timeout: Timeout, default: float | None) -> float | None:
        if isinstance(timeout, _Default):
            return default
        if timeout is not None and timeout < 0:
            raise InvalidUsage("timeout must be >= 0 seconds or None")
        return timeout

    def _require_connection(self) -> _Connection:
        conn = self._conn
        if conn is None or conn.server_time_zero is None:
            raise KatclientConnectionError(f"not connected to the Scrutiny server at {self.host}:{self.port}")
        return conn

    def _next_reqid(self) -> int:
        self._reqid = (self._reqid + 1) % REQID_MODULO
        return self._reqid

    async def _request(
        self,
        cmd: str,
        fields: Mapping[str, Any] | None,
        timeout: float | None,
        *,
        expected: str | None = None,
        on_reply: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        conn = self._require_connection()
        if len(self._pending) >= MAX_PENDING_REQUESTS:
            raise KatclientError(f"too many Scrutiny requests in flight (limit {MAX_PENDING_REQUESTS})")
        loop = asyncio.get_running_loop()
        reqid = self._next_reqid()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        pending = _Pending(cmd, expected or f"response_{cmd}", fut, on_reply, loop.time())
        self._pending[reqid] = pending
        try:
            message: dict[str, Any] = {"cmd": cmd, "reqid": reqid}
            if fields:
                message.update(fields)
            conn.send(message)
            if timeout is None:
                return await fut
            while True:
                # A multi-part reply (lists, downloads) keeps the request alive while parts arrive.
                remaining = pending.last_activity + timeout - loop.time()
                if remaining <= 0:
                    raise KatclientTimeoutError(f"{cmd}: no answer within {timeout} s")
                done, _ = await asyncio.wait((fut,), timeout=remaining)
                if done:
                    return fut.result()
        finally:
            if self._pending.get(reqid) is pending:
                del self._pending[reqid]

    async def request(
        self, cmd: str, fields: Mapping[str, Any] | None = None, *, timeout: Timeout = DEFAULT
    ) -> dict[str, Any]:
        """Send any command and return its ``response_<cmd>`` message (the raw dict).

        :param cmd: the command name (scrutiny.md 1.4).
        :param fields: the request fields besides ``cmd`` and ``reqid``.
        :param timeout: seconds, ``None`` for forever, :data:`DEFAULT` for the client's.
        :raises ScrutinyError: on an ``error`` reply.
        :raises KatclientTimeoutError: when no reply came in time.
        :raises KatclientConnectionError: when not connected or the connection dropped.
        """
        return await self._request(cmd, fields, self._timeout(timeout, self.timeout))

    async def _two_phase(
        self,
        cmd: str,
        fields: Mapping[str, Any],
        inform_cmd: str,
        timeout: float | None,
        *,
        count_key: str | None = None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        wait = _TokenWait(inform_cmd, loop.create_future(), 1)
        tokens: list[str] = []

        def on_reply(msg: dict[str, Any]) -> bool:
            # Runs in the reader: the token is known before the inform (sent later) is read.
            token = msg.get("request_token")
            if not isinstance(token, str):
                raise ScrutinyProtocolError(f"{msg.get('cmd')} without a request_token", msg)
            if count_key is not None:
                count = msg.get(count_key)
                if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                    raise ScrutinyProtocolError(f"{msg.get('cmd')}: bad {count_key}", msg)
                wait.expected = count
            if len(self._tokens) >= MAX_PENDING_REQUESTS:
                raise KatclientError(f"too many Scrutiny operations in flight (limit {MAX_PENDING_REQUESTS})")
            if wait.expected == 0:
                wait.future.set_result([])
            else:
                self._tokens[token] = wait
                tokens.append(token)
            return True

        start = loop.time()
        try:
            reply = await self._request(cmd, fields, timeout, on_reply=on_reply)
            remaining = None if timeout is None else max(0.0, timeout - (loop.time() - start))
            informs: list[dict[str, Any]] = await _await(wait.future, remaining, cmd)
            return reply, informs
        finally:
            for token in tokens:
                if self._tokens.get(token) is wait:
                    del self._tokens[token]

    # ------------------------------------------------------------------ server and device

    async def get_server_status(self, *, timeout: Timeout = DEFAULT) -> ServerStatus:
        """Ask for a fresh server status (``get_server_status``, answered by ``inform_server_status``).

        :raises KatclientTimeoutError, KatclientConnectionError, ScrutinyProtocolError:
        """
        reply = await self._request(
            "get_server_status", None, self._timeout(timeout, self.timeout), expected="inform_server_status"
        )
        return parse_server_status(reply)

    async def get_device_info(self, *, timeout: Timeout = DEFAULT) -> DeviceInfo | None:
        """The connected device's description, or ``None`` when no device is ready (1.4)."""
        reply = await self._request("get_device_info", None, self._timeout(timeout, self.timeout))
        return parse_device_info(reply)

    async def get_server_stats(self, *, timeout: Timeout = DEFAULT) -> ServerStats:
        """The server's statistics (``get_server_stats``)."""
        reply = await self._request("get_server_stats", None, self._timeout(timeout, self.timeout))
        return parse_server_stats(reply)

    async def echo(self, payload: str, *, timeout: Timeout = DEFAULT) -> str:
        """Round-trip a string through the server (``echo``)."""
        reply = await self._request("echo", {"payload": payload}, self._timeout(timeout, self.timeout))
        return str(reply.get("payload"))

    async def set_demo_mode(self, enable: bool, *, timeout: Timeout = DEFAULT) -> bool:
        """Start (a fresh) or stop the server's emulated demo device; returns whether it is on."""
        reply = await self._request(
            "demo_mode", {"enable": bool(enable)}, self._timeout(timeout, self.timeout)
        )
        return bool(reply.get("enabled"))

    async def set_throttling(
        self, update_rate: float | None, *, timeout: Timeout = DEFAULT
    ) -> tuple[bool, float | None]:
        """Limit value updates sent to this connection to ``update_rate`` per second (``None``/0: off).

        :returns: ``(enabled, update_rate)`` as the server reports them.
        """
        reply = await self._request(
            "set_throttling", {"update_rate": update_rate}, self._timeout(timeout, self.timeout)
        )
        rate = reply.get("update_rate")
        return bool(reply.get("enabled")), float(rate) if isinstance(rate, (int, float)) else None

    async def set_link_config(
        self, link_type: str, link_config: Mapping[str, Any], *, timeout: Timeout = DEFAULT
    ) -> None:
        """Change how the server reaches the device (``set_link_config``; stops demo mode)."""
        await self._request(
            "set_link_config",
            {"link_type": link_type, "link_config": dict(link_config)},
            self._timeout(timeout, self.timeout),
        )

    # ------------------------------------------------------------------ watchables

    async def get_watchable_count(self, *, timeout: Timeout = DEFAULT) -> WatchableCount:
        """How many vars, aliases, RPVs and var factories the server has."""
        reply = await self._request("get_watchable_count", None, self._timeout(timeout, self.timeout))
        return parse_watchable_count(reply)

    async def list_watchables(
        self,
        types: Iterable[WatchableType] | None = None,
        name_patterns: Iterable[str] | None = None,
        *,
        max_per_response: int = 500,
        timeout: Timeout = DEFAULT,
    ) -> WatchableList:
        """List watchables (``get_watchable_list``; several replies are gathered).

        :param types: restrict to these types (default: all).
        :param name_patterns: fnmatch globs on the path, case-sensitive (default: all).
        :param max_per_response: entries per reply chunk.
        :param timeout: seconds without a chunk before giving up.
        :raises ScrutinyError: on a bad filter.
        :raises KatclientError: when the listing exceeds ``MAX_LIST_ENTRIES``.
        """
        fields: dict[str, Any] = {"max_per_response": int(max_per_response)}
        filt: dict[str, Any] = {}
        if types is not None:
            filt["type"] = [WatchableType(t).value for t in types]
        if name_patterns is not None:
            filt["name"] = list(name_patterns)
        if filt:
            fields["filter"] = filt
        acc = [WatchableList()]

        def on_reply(msg: dict[str, Any]) -> bool:
            part, done = parse_watchable_list_part(msg)
            acc[0] = acc[0].merged(part)
            if len(acc[0]) + len(acc[0].var_factory) > MAX_LIST_ENTRIES:
                raise KatclientError(f"watchable list exceeds {MAX_LIST_ENTRIES} entries")
            return done

        await self._request(
            "get_watchable_list", fields, self._timeout(timeout, self.timeout), on_reply=on_reply
        )
        return acc[0]

    async def get_watchable_info(
        self, paths: Iterable[str], *, timeout: Timeout = DEFAULT
    ) -> dict[str, WatchableInfo]:
        """Detailed definitions of ``paths`` without subscribing (all-or-nothing).

        :raises ScrutinyError: ``Unknown watchable : <path>`` when one path does not exist.
        """
        path_list = list(paths)
        reply = await self._request(
            "get_watchable_info", {"watchables": path_list}, self._timeout(timeout, self.timeout)
        )
        infos = parse_watchable_info_map(reply, "info")
        self._cache_infos(infos)
        return infos

    def _cache_infos(self, infos: Mapping[str, WatchableInfo]) -> None:
        if len(self._info_cache) + len(infos) > MAX_INFO_CACHE:
            self._info_cache.clear()
        for path, info in infos.items():
            if info.server_id is not None:
                self._info_cache[path] = info

    async def _subscribe_request(
        self, paths: list[str], rate: float | None, timeout: float | None
    ) -> dict[str, WatchableInfo]:
        fields: dict[str, Any] = {"watchables": paths}
        if rate is not None:
            fields["rate"] = rate
        result: dict[str, WatchableInfo] = {}

        def on_reply(msg: dict[str, Any]) -> bool:
            # Runs in the reader, so ids are mapped before the first update (sent after) is read.
            infos = parse_watchable_info_map(msg, "subscribed")
            for path in paths:
                info = infos.get(path)
                sub = self._subs.get(path)
                if info is None or info.server_id is None or sub is None:
                    continue
                if sub.server_id is not None and sub.server_id != info.server_id:
                    self._id_to_path.pop(sub.server_id, None)
                sub.info = info
                sub.server_id = info.server_id
                self._id_to_path[info.server_id] = path
            self._cache_infos(infos)
            result.update(infos)
            return True

        await self._request("subscribe_watchable", fields, timeout, on_reply=on_reply)
        return result

    async def subscribe(
        self, paths: Iterable[str], rate: float | None = None, *, timeout: Timeout = DEFAULT
    ) -> dict[str, WatchableInfo]:
        """Subscribe to value updates of ``paths`` (one ``subscribe_watchable``, all-or-nothing).

        Subscriptions are kept across reconnects and device/SFD changes: the client subscribes
        them again when they exist again (event ``SubscriptionsRestored``).

        :param paths: watchable paths.
        :param rate: update rate in Hz (> 0), ``None`` for as fast as possible.
        :returns: the detailed definition of each path.
        :raises ScrutinyError: ``Unknown watchable : <path>``; nothing is subscribed then.
        :raises InvalidUsage: on a bad rate.
        """
        path_list = list(dict.fromkeys(paths))
        if rate is not None and not rate > 0:
            raise InvalidUsage("rate must be > 0 Hz or None")
        created = []
        for path in path_list:
            sub = self._subs.get(path)
            if sub is None:
                self._subs[path] = Subscription(path, rate)
                created.append(path)
            else:
                sub.rate = rate
                sub.temporary = False
        try:
            return await self._subscribe_request(path_list, rate, self._timeout(timeout, self.timeout))
        except BaseException:
            for path in created:
                sub = self._subs.get(path)
                if sub is not None and not sub.active:
                    del self._subs[path]
            raise

    async def unsubscribe(self, paths: Iterable[str], *, timeout: Timeout = DEFAULT) -> None:
        """Stop updates of ``paths`` (unknown or inactive paths are just forgotten).

        A path that a :meth:`read_value` is waiting on stays subscribed until that read ends.

        :raises ScrutinyError: when the server refuses (the paths are forgotten anyway).
        """
        active = []
        for path in dict.fromkeys(paths):
            sub = self._subs.get(path)
            if sub is not None and self._value_waiters.get(path):
                # A read_value is waiting on this subscription: let it end it when done.
                sub.temporary = True
                continue
            sub = self._subs.pop(path, None)
            self._latest.pop(path, None)
            if sub is not None and sub.server_id is not None:
                self._id_to_path.pop(sub.server_id, None)
                active.append(path)
        if active and self.connected:
            await self._request(
                "unsubscribe_watchable", {"watchables": active}, self._timeout(timeout, self.timeout)
            )

    async def set_update_rate(
        self, paths: Iterable[str], rate: float | None, *, timeout: Timeout = DEFAULT
    ) -> dict[str, float | None]:
        """Change the update rate of subscribed ``paths`` (``change_subscription_update_rate``).

        :returns: the effective rate per path (the fastest any client asked for; ``None`` = max).
        :raises InvalidUsage: when a path is not actively subscribed, or on a bad rate.
        """
        if rate is not None and not rate > 0:
            raise InvalidUsage("rate must be > 0 Hz or None")
        changes = []
        by_id: dict[str, str] = {}
        for path in paths:
            sub = self._subs.get(path)
            if sub is None or sub.server_id is None:
                raise InvalidUsage(f"{path!r} is not actively subscribed")
            changes.append({"id": sub.server_id, "rate": rate})
            by_id[sub.server_id] = path
        reply = await self._request(
            "change_subscription_update_rate", {"changes": changes}, self._timeout(timeout, self.timeout)
        )
        for path in by_id.values():
            self._subs[path].rate = rate
        rates = reply.get("effective_rates")
        if not isinstance(rates, dict):
            raise ScrutinyProtocolError(
                "response_change_subscription_update_rate without effective_rates", reply
            )
        return {
            by_id[i]: (float(r) if isinstance(r, (int, float)) else None)
            for i, r in rates.items()
            if i in by_id
        }

    async def read_value(self, path: str, *, timeout: Timeout = DEFAULT) -> WatchableValue:
        """Wait for the next update of ``path`` (subscribing for the duration when not subscribed).

        :raises ScrutinyError: when the path does not exist.
        :raises KatclientTimeoutError: when no update came in time.
        """
        seconds = self._timeout(timeout, self.timeout)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[WatchableValue] = loop.create_future()
        self._value_waiters.setdefault(path, []).append(fut)
        temporary = path not in self._subs
        start = loop.time()
        try:
            if temporary:
                await self.subscribe([path], timeout=seconds)
                self._subs[path].temporary = True
            remaining = None if seconds is None else max(0.0, seconds - (loop.time() - start))
            result: WatchableValue = await _await(fut, remaining, f"reading {path}")
            return result
        finally:
            futs = self._value_waiters.get(path)
            if futs is not None:
                futs.remove(fut)
                if not futs:
                    del self._value_waiters[path]
            sub = self._subs.get(path)
            if temporary and sub is not None and sub.temporary:
                try:
                    await self.unsubscribe([path])
                except KatclientError as exc:
                    logger.debug("temporary unsubscribe of %s failed: %s", path, exc)

    @staticmethod
    def _check_value(value: object) -> None:
        if not isinstance(value, (int, float, bool, str)):
            raise InvalidUsage(f"cannot write a {type(value).__name__}; use int, float, bool or str")

    async def write(self, path: str, value: WriteValue, *, timeout: Timeout = DEFAULT) -> None:
        """Write one watchable by path; returns once the device confirmed (``write_single_watchable``).

        :param value: a number, bool, or a string the server parses (``"true"``, ``"0x10"``, ``"2*pi"``).
        :raises ScrutinyError: with the server's message (``Unknown watchable path ...``,
            ``Invalid value``) or the device's ``failure_reason``.
        """
        self._check_value(value)
        reply = await self._request(
            "write_single_watchable",
            {"server_path": path, "value": value},
            self._timeout(timeout, self.write_timeout),
        )
        if not reply.get("success"):
            raise ScrutinyError(
                str(reply.get("failure_reason") or "write failed"), "write_single_watchable", reply
            )

    async def write_raw(self, path: str, data: bytes, *, timeout: Timeout = DEFAULT) -> None:
        """Write the raw bytes of a var (or alias of a var), left-padded with zeros by the server.

        :raises ScrutinyError: with the server's or device's reason.
        """
        reply = await self._request(
            "write_single_watchable_by_data",
            {"server_path": path, "data": base64.b64encode(data).decode("ascii")},
            self._timeout(timeout, self.write_timeout),
        )
        if not reply.get("success"):
            raise ScrutinyError(
                str(reply.get("failure_reason") or "write failed"), "write_single_watchable_by_data", reply
            )

    async def _server_ids(self, paths: Sequence[str], timeout: float | None) -> dict[str, str]:
        ids: dict[str, str] = {}
        unknown = []
        for path in paths:
            sub = self._subs.get(path)
            info = self._info_cache.get(path)
            if sub is not None and sub.server_id is not None:
                ids[path] = sub.server_id
            elif info is not None and info.server_id is not None:
                ids[path] = info.server_id
            else:
                unknown.append(path)
        if unknown:
            for path, info in (
                await self.get_watchable_info(dict.fromkeys(unknown), timeout=timeout)
            ).items():
                if info.server_id is not None:
                    ids[path] = info.server_id
        return ids

    async def write_batch(
        self,
        writes: Mapping[str, WriteValue] | Sequence[tuple[str, WriteValue]],
        *,
        timeout: Timeout = DEFAULT,
    ) -> list[WriteResult]:
        """Write several watchables in order, in one ``write_watchable`` request; returns when the
        device confirmed every write (one ``inform_write_completion`` each).

        :param writes: ``(path, value)`` pairs (a path may repeat) or a mapping.
        :returns: one result per write, in order.
        :raises ScrutinyBatchWriteError: when any write failed (it carries every result).
        :raises ScrutinyError: when the request is refused (e.g. ``Unknown watchable : <path>``).
        :raises InvalidUsage: for more than ``MAX_BATCH_WRITE`` writes or a bad value.
        """
        items = list(writes.items()) if isinstance(writes, Mapping) else list(writes)
        if len(items) > MAX_BATCH_WRITE:
            raise InvalidUsage(f"at most {MAX_BATCH_WRITE} writes per batch")
        for _, value in items:
            self._check_value(value)
        if not items:
            return []
        seconds = self._timeout(timeout, self.write_timeout)
        paths = [p for p, _ in items]
        for attempt in range(2):
            ids = await self._server_ids(paths, seconds)
            updates = [{"batch_index": i, "watchable": ids[p], "value": v} for i, (p, v) in enumerate(items)]
            try:
                _, informs = await self._two_phase(
                    "write_watchable",
                    {"updates": updates},
                    "inform_write_completion",
                    seconds,
                    count_key="count",
                )
                break
            except ScrutinyError as exc:
                if attempt == 0 and exc.msg.startswith("Unknown watchable ID"):
                    for path in paths:  # ids went stale (SFD or session changed): look them up again
                        self._info_cache.pop(path, None)
                    continue
                raise
        zero = self.server_time_zero or 0.0
        by_index = {m.get("batch_index"): m for m in informs}
        results = []
        for i, (path, _) in enumerate(items):
            m = by_index.get(i, {})
            t = m.get("completion_server_time_us")
            t_us = float(t) if isinstance(t, (int, float)) else None
            results.append(
                WriteResult(
                    path,
                    bool(m.get("success")),
                    str(m.get("failure_reason") or ""),
                    t_us,
                    None if t_us is None else zero + t_us / 1e6,
                )
            )
        if not all(r.success for r in results):
            raise ScrutinyBatchWriteError(results)
        return results

    # ------------------------------------------------------------------ memory, user commands

    @staticmethod
    def _check_int(name: str, value: object, minimum: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise InvalidUsage(f"{name} must be an integer >= {minimum}")
        return value

    async def read_memory(self, address: int, size: int, *, timeout: Timeout = DEFAULT) -> bytes:
        """Read device memory (two phases: token, then ``inform_memory_read_complete``).

        :raises ScrutinyError: with the server's ``detail_msg`` (``Forbidden region``,
            ``Size too big`` above 16383 bytes, ...).
        """
        self._check_int("address", address, 0)
        self._check_int("size", size, 1)
        _, informs = await self._two_phase(
            "read_memory",
            {"address": address, "size": size},
            "inform_memory_read_complete",
            self._timeout(timeout, self.timeout),
        )
        inform = informs[0]
        if not inform.get("success"):
            raise ScrutinyError(str(inform.get("detail_msg") or "memory read failed"), "read_memory", inform)
        data = inform.get("data")
        if not isinstance(data, str):
            raise ScrutinyProtocolError("successful memory read without data", inform)
        return decode_b64(data, "inform_memory_read_complete")

    async def write_memory(self, address: int, data: bytes, *, timeout: Timeout = DEFAULT) -> None:
        """Write device memory (two phases: token, then ``inform_memory_write_complete``).

        :raises ScrutinyError: with the server's ``detail_msg`` (``Forbidden``, ``Read only``, ...).
        """
        self._check_int("address", address, 0)
        if not data:
            raise InvalidUsage("data must not be empty")
        _, informs = await self._two_phase(
            "write_memory",
            {"address": address, "data": base64.b64encode(bytes(data)).decode("ascii")},
            "inform_memory_write_complete",
            self._timeout(timeout, self.write_timeout),
        )
        inform = informs[0]
        if not inform.get("success"):
            raise ScrutinyError(
                str(inform.get("detail_msg") or "memory write failed"), "write_memory", inform
            )

    async def user_command(
        self, subfunction: int, data: bytes = b"", *, timeout: Timeout = DEFAULT
    ) -> UserCommandResponse:
        """Run a device user command (``user_command``, answered on completion).

        :raises ScrutinyError: e.g. ``Device responded with code FailureToProceed``.
        :raises InvalidUsage: when ``subfunction`` is not in 0..255.
        """
        self._check_int("subfunction", subfunction, 0)
        if subfunction > MAX_SUBFUNCTION:
            raise InvalidUsage(f"subfunction must be <= {MAX_SUBFUNCTION}")
        reply = await self._request(
            "user_command",
            {"subfunction": subfunction, "data": base64.b64encode(bytes(data)).decode("ascii")},
            self._timeout(timeout, self.write_timeout),
        )
        return parse_user_command(reply)

    # ------------------------------------------------------------------ SFD

    async def get_installed_sfds(self, *, timeout: Timeout = DEFAULT) -> dict[str, SFDInfo]:
        """The SFDs installed on the server, by firmware id."""
        reply = await self._request("get_installed_sfd", None, self._timeout(timeout, self.timeout))
        return parse_installed_sfds(reply)

    async def get_loaded_sfd(self, *, timeout: Timeout = DEFAULT) -> SFDInfo | None:
        """The loaded SFD, or ``None``."""
        reply = await self._request("get_loaded_sfd", None, self._timeout(timeout, self.timeout))
        return parse_loaded_sfd(reply)

    async def load_sfd(self, firmware_id: str, *, timeout: Timeout = DEFAULT) -> ServerStatus:
        """Load an installed SFD.  The server never answers ``load_sfd`` (1.2); this returns once a
        pushed status shows it loaded.  Loading the SFD that is already loaded reloads it (new ids).

        :returns: the status that showed it loaded.
        :raises KatclientTimeoutError: when no status showed it (e.g. an unknown id: the server
            ignores those silently).
        :raises InvalidUsage: when ``firmware_id`` is not 32 hex characters.
        """
        if not FIRMWARE_ID_RE.match(firmware_id):
            raise InvalidUsage("firmware_id must be 32 hex characters")
        conn = self._require_connection()
        seconds = self._timeout(timeout, self.timeout)
        fw = firmware_id.lower()
        entry = self._add_status_waiter(lambda s: s.sfd_firmware_id == fw, True)
        if self._status is not None and self._status.sfd_firmware_id == fw:
            self._sfd_reload = fw
        try:
            conn.send({"cmd": "load_sfd", "reqid": self._next_reqid(), "firmware_id": fw})
            status = await self._wait_status(entry, seconds)
        except KatclientTimeoutError:
            raise KatclientTimeoutError(
                f"SFD {fw} was not loaded within {seconds} s (not installed?)"
            ) from None
        return status

    async def install_sfd(
        self, sfd: bytes | str | os.PathLike[str], *, timeout: Timeout = DEFAULT
    ) -> SFDInfo:
        """Install an SFD file on the server (``upload_sfd_init`` then ``upload_sfd_data`` chunks).

        :param sfd: the file's content, or its path.
        :returns: the installed SFD's info.
        :raises InvalidUsage: when it is not an SFD or is too large.
        :raises ScrutinyError: when the server refuses it.
        """
        data = (
            sfd
            if isinstance(sfd, bytes)
            else await asyncio.get_running_loop().run_in_executor(None, _read_file, os.fspath(sfd))
        )
        if len(data) > MAX_SFD_SIZE:
            raise InvalidUsage(f"SFD is larger than {MAX_SFD_SIZE} bytes")
        firmware_id = read_sfd_firmware_id(data)
        seconds = self._timeout(timeout, self.timeout)
        init = await self._request(
            "upload_sfd_init", {"firmware_id": firmware_id, "total_size": len(data)}, seconds
        )
        token = init.get("token")
        if not isinstance(token, str):
            raise ScrutinyProtocolError("response_upload_sfd_init without a token", init)
        reply: dict[str, Any] = {}
        for index, start in enumerate(range(0, len(data), SFD_UPLOAD_CHUNK)):
            chunk = base64.b64encode(data[start : start + SFD_UPLOAD_CHUNK]).decode("ascii")
            reply = await self._request(
                "upload_sfd_data",
                {"token": token, "file_chunk": {"chunk_index": index, "data": chunk}},
                seconds,
            )
        if not reply.get("completed") or reply.get("sfd_info") is None:
            raise ScrutinyProtocolError("SFD upload did not complete", reply)
        return parse_sfd_info(reply["sfd_info"], "response_upload_sfd_data")

    async def uninstall_sfds(self, firmware_ids: Iterable[str], *, timeout: Timeout = DEFAULT) -> None:
        """Uninstall SFDs (unloading the loaded one if listed).

        :raises ScrutinyError: e.g. ``Firmware ID <id> is not installed`` (nothing is uninstalled).
        """
        await self._request(
            "uninstall_sfd", {"firmware_id_list": list(firmware_ids)}, self._timeout(timeout, self.timeout)
        )

    async def download_sfd(self, firmware_id: str, *, timeout: Timeout = DEFAULT) -> bytes:
        """Download an installed SFD file (``download_sfd``, several chunk replies).

        :raises ScrutinyError: ``No firmware with ID <id>``.
        """
        chunks: dict[int, bytes] = {}
        total = [-1]

        def on_reply(msg: dict[str, Any]) -> bool:
            size = msg.get("total_size")
            chunk = msg.get("file_chunk")
            if not isinstance(size, int) or not 0 < size <= MAX_SFD_SIZE or not isinstance(chunk, dict):
                raise ScrutinyProtocolError("bad response_download_sfd", msg)
            total[0] = size
            index = chunk.get("chunk_index")
            if not isinstance(index, int) or not isinstance(chunk.get("data"), str):
                raise ScrutinyProtocolError("bad response_download_sfd chunk", msg)
            chunks[index] = decode_b64(chunk["data"], "response_download_sfd")
            received = sum(len(c) for c in chunks.values())
            if received > size:
                raise ScrutinyProtocolError("response_download_sfd sent more than total_size", msg)
            return received == size

        await self._request(
            "download_sfd",
            {"firmware_id": firmware_id},
            self._timeout(timeout, self.timeout),
            on_reply=on_reply,
        )
        return b"".join(chunks[i] for i in sorted(chunks))

    # ------------------------------------------------------------------ datalogging

    async def start_datalog(
        self, config: DataloggingConfig, *, timeout: Timeout = DEFAULT
    ) -> DataloggingRequest:
        """Request an acquisition; returns once the server accepted it (first phase).

        :returns: a handle whose :meth:`DataloggingRequest.wait` gives the reference id.
        :raises ScrutinyError: when the server refuses the configuration.
        """
        loop = asyncio.get_running_loop()
        wait = _TokenWait("inform_datalogging_acquisition_complete", loop.create_future(), 1)
        handle: list[DataloggingRequest] = []

        def on_reply(msg: dict[str, Any]) -> bool:
            token = msg.get("request_token")
            if not isinstance(token, str):
                raise ScrutinyProtocolError(
                    "response_request_datalogging_acquisition without a request_token", msg
                )
            if len(self._tokens) >= MAX_PENDING_REQUESTS:
                raise KatclientError(f"too many Scrutiny operations in flight (limit {MAX_PENDING_REQUESTS})")
            self._tokens[token] = wait
            handle.append(DataloggingRequest(token, wait.future))
            return True

        await self._request(
            "request_datalogging_acquisition",
            config.to_request(),
            self._timeout(timeout, self.timeout),
            on_reply=on_reply,
        )
        return handle[0]

    async def acquire(self, config: DataloggingConfig, *, timeout: float | None = None) -> str:
        """Run an acquisition to completion.

        :param timeout: seconds for the whole acquisition, ``None`` for forever.
        :returns: the stored acquisition's reference id.
        :raises ScrutinyError: when refused or failed.
        """
        request = await self.start_datalog(config)
        try:
            return await request.wait(timeout)
        finally:
            if not request.done():
                self._tokens.pop(request.token, None)

    async def list_acquisitions(
        self,
        *,
        firmware_id: str | None = None,
        before: float | None = None,
        count: int = 500,
        reference_id: str | None = None,
        timeout: Timeout = DEFAULT,
    ) -> list[AcquisitionInfo]:
        """Stored acquisitions, newest first.

        :param firmware_id: only those made with this firmware.
        :param before: only those made before this time (epoch seconds).
        :param count: at most this many (0..10000).
        :param reference_id: only this one (the other filters are then ignored).
        """
        fields: dict[str, Any]
        if reference_id is not None:
            fields = {"reference_id": reference_id}
        else:
            fields = {"count": count, "firmware_id": firmware_id, "before_timestamp": before}
        reply = await self._request(
            "list_datalogging_acquisitions", fields, self._timeout(timeout, self.timeout)
        )
        return parse_acquisition_list(reply)

    async def read_acquisition(
        self, reference_id: str, *, timeout: Timeout = DEFAULT
    ) -> DataloggingAcquisition:
        """The content of a stored acquisition.

        :raises ScrutinyError: ``Failed to read acquisition. ...`` for an unknown id.
        """
        reply = await self._request(
            "read_datalogging_acquisition_content",
            {"reference_id": reference_id},
            self._timeout(timeout, self.timeout),
        )
        return parse_acquisition_content(reply)

    async def update_acquisition(
        self,
        reference_id: str,
        *,
        name: str | None = None,
        axis_names: Mapping[int, str] | None = None,
        timeout: Timeout = DEFAULT,
    ) -> None:
        """Rename a stored acquisition and/or its Y axes (by axis id)."""
        fields: dict[str, Any] = {"reference_id": reference_id}
        if name is not None:
            fields["name"] = name
        if axis_names is not None:
            fields["axis_name"] = [{"id": i, "name": n} for i, n in axis_names.items()]
        await self._request("update_datalogging_acquisition", fields, self._timeout(timeout, self.timeout))

    async def delete_acquisition(self, reference_id: str, *, timeout: Timeout = DEFAULT) -> None:
        """Delete one stored acquisition."""
        await self._request(
            "delete_datalogging_acquisition",
            {"reference_id": reference_id},
            self._timeout(timeout, self.timeout),
        )

    async def delete_all_acquisitions(self, *, timeout: Timeout = DEFAULT) -> None:
        """Delete every stored acquisition."""
        await self._request("delete_all_datalogging_acquisition", None, self._timeout(timeout, self.timeout))


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(MAX_SFD_SIZE + 1)
