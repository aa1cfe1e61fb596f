"""One KATCP client connection over a Tornado ``IOStream``.

Sources: KATCP v5 spec sections 2.4 (message ids, informs belonging to a request) and
3.2 (``#version-connect``); protocols/katcp.md 1.2 (mids; name matching without flag
``I``), 1.3/1.4 (protocol detection, v4 vs v5) and 2.8/2.9 (katcp-python's failure
"replies" and the missing negotiation timeout, which katclient does not repeat).

The connection owns exactly one reader task feeding a sans-I/O
:class:`~katclient.protocol.Parser` (STYLE.md habit 9); request timeouts live on the
request futures, never on reads.  Replies are matched by message id when the device
has flag ``I`` (one counter per connection, wrapping at 2**31-1 and skipping ids
still in flight), otherwise by name (oldest pending request of that name first).
Timeouts and disconnects raise :class:`KatclientTimeoutError` and
:class:`KatclientConnectionError`; a late reply after a timeout is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import logging
from collections.abc import Callable
from typing import Any, Final

from tornado.iostream import IOStream, StreamClosedError

from katclient.protocol import (
    MAX_MID,
    V4,
    InvalidUsage,
    KatclientConnectionError,
    KatclientTimeoutError,
    KatcpSyntaxError,
    Message,
    MessageType,
    Parser,
    ProtocolError,
    ProtocolFlags,
    encode_argument,
    escape,
    parse_line,
)
from katclient.protocol.parser import DEFAULT_MAX_LINE_LENGTH

__all__ = ["Connection", "DEFAULT_REQUEST_TIMEOUT", "READ_CHUNK", "MAX_WRITE_BUFFER"]

logger = logging.getLogger(__name__)

#: Timeout for a request when neither the call nor the device's hint gives one (seconds;
#: katcp-python's AsyncClient default, katcp.md 2.8).
DEFAULT_REQUEST_TIMEOUT: Final = 5.0
#: Bytes asked of the socket per read: large enough to carry hundreds of
#: ``#sensor-status`` lines per wake-up.
READ_CHUNK: Final = 256 * 1024
#: Largest outgoing backlog before the connection is declared broken (katcp-python's
#: client caps its write buffer at 4 MiB, katcp.md 1.1).
MAX_WRITE_BUFFER: Final = 4 * 1024 * 1024
#: Chunks smaller than this (bytes) trigger the :attr:`Connection.coalesce_delay` pause.
COALESCE_BELOW: Final = 16 * 1024
#: Request names whose validated ``?name`` head is cached (a caller inventing names without
#: end only empties the cache now and then).
MAX_CACHED_HEADS: Final = 1024
#: Most informs kept for one request: ``?sensor-list`` of a 100k-sensor device fits;
#: a device that streams informs for ever cannot exhaust memory.
MAX_INFORMS_PER_REQUEST: Final = 1_000_000

ReplyAndInforms = tuple[Message, list[Message]]


class _Pending:
    __slots__ = ("name", "mid", "on_wire_mid", "future", "informs", "raw_head", "deadline")

    def __init__(self, name: str, mid: int, on_wire_mid: bool, future: asyncio.Future[ReplyAndInforms]) -> None:
        self.name = name
        self.mid = mid
        self.on_wire_mid = on_wire_mid
        self.future = future
        self.informs: list[Message] = []
        self.raw_head: bytes | None = None
        self.deadline = 0.0


class _Batch:
    __slots__ = ("results", "left", "future")

    def __init__(self, n: int, future: asyncio.Future[list[Message]]) -> None:
        self.results: list[Any] = [None] * n
        self.left = n
        self.future = future


class _BatchSlot:
    """The future-like end of one request of a batch (no asyncio object per request)."""

    __slots__ = ("batch", "index", "_done")

    def __init__(self, batch: _Batch, index: int) -> None:
        self.batch = batch
        self.index = index
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: ReplyAndInforms) -> None:
        self._done = True
        batch = self.batch
        batch.results[self.index] = result[0]
        batch.left -= 1
        if batch.left == 0 and not batch.future.done():
            batch.future.set_result(batch.results)

    def set_exception(self, exc: BaseException) -> None:
        self._done = True
        if not self.batch.future.done():
            self.batch.future.set_exception(exc)


class Connection:
    """A KATCP connection: sends requests, matches replies, routes informs.

    :param stream: a connected Tornado ``IOStream``.
    :param on_inform: called with every inform that does not belong to a pending
        request (``#version-connect``, ``#interface-changed``, ``#log``...).
    :param on_close: called once, with the error that closed the connection (or ``None``
        for a local close), after every pending request has failed.
    :param line_batch: optional ``line_batch(lines, slow)``: receives each read's list of
        complete lines (``bytes``, or a :class:`KatcpSyntaxError` for an over-long line) and
        must call ``slow(line)`` for every item it does not handle itself, in stream order
        (the inspecting client's ``#sensor-status`` fast path).
    :param max_line_length: the parser's limit in bytes (terminator included).
    :param protocol: flags to use from the start (``preset_protocol_flags``), else ``None``
        to detect them from ``#version-connect``/``#version``.
    """

    def __init__(
        self,
        stream: IOStream,
        on_inform: Callable[[Message], None],
        on_close: Callable[[BaseException | None], None],
        *,
        line_batch: Callable[[list[bytes | KatcpSyntaxError], Callable[[bytes | KatcpSyntaxError], None]], None]
        | None = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        protocol: ProtocolFlags | None = None,
        address: tuple[str, int] | None = None,
    ) -> None:
        self.stream = stream
        self.address = address
        self._on_inform = on_inform
        self._on_close = on_close
        self._line_batch = line_batch
        self._parser = Parser(max_line_length)
        self._preset = protocol is not None
        #: Negotiated protocol, or ``None`` until the device announced it.
        self.protocol: ProtocolFlags | None = protocol
        #: ``#version-connect`` informs received, as ``{"katcp-protocol": ["5.0-IM"], ...}``.
        self.versions: dict[str, list[str]] = {}
        self.protocol_known = asyncio.Event()
        if protocol is not None:
            self.protocol_known.set()
        self._by_mid: dict[int, _Pending] = {}
        self._by_name: dict[str, collections.deque[_Pending]] = {}
        self._next_mid = 1
        # Inform head (b"#name[mid]") -> request keeping its informs as raw lines (raw_informs).
        self._raw: dict[bytes, _Pending] = {}
        self._deadlines: list[tuple[float, int, float]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._heads: dict[str, bytes] = {}
        self._out: list[bytes] = []
        #: Seconds to pause reading after a small chunk (0: never).  The inspecting client
        #: sets it during a sync, when thousands of informs arrive: fewer, larger reads cost
        #: far less CPU than one wake-up per TCP segment (bench/ sync profile).
        self.coalesce_delay = 0.0
        self._closed = False
        self.close_reason: BaseException | None = None
        stream.max_write_buffer_size = MAX_WRITE_BUFFER
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    # -- properties ---------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once the connection ended (either side)."""
        return self._closed

    @property
    def pending_count(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._by_mid)

    # -- sending ------------------------------------------------------------------------
    def _allocate_mid(self) -> int:
        mid = self._next_mid
        while mid in self._by_mid:
            mid = mid + 1 if mid < MAX_MID else 1
        self._next_mid = mid + 1 if mid < MAX_MID else 1
        return mid

    async def request(
        self,
        name: str,
        *args: Any,
        timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        use_mid: bool | None = None,
        mid: int | None = None,
        raw_informs: bool = False,
    ) -> ReplyAndInforms:
        """Send ``?name args`` and wait for its reply.

        :param name: request name.
        :param args: arguments (bytes, or values for :func:`~katclient.protocol.encode_argument`).
        :param timeout: seconds to wait for the reply; ``None`` waits for ever.
        :param use_mid: put a message id on the wire; ``None`` means "when the device has
            flag ``I``" (katcp.md 1.2).
        :param mid: a specific message id (implies ``use_mid``); it must not be in flight.
        :param raw_informs: with a mid on the wire, keep this request's informs as their raw
            ``bytes`` lines (split them with :func:`~katclient.protocol.parser.split_arguments`):
            inspection of 10,000 sensors then builds no ``Message`` per inform.
        :returns: ``(reply, informs)``; the reply may be ``ok``, ``fail`` or ``invalid``.
        :raises KatclientTimeoutError: no reply within ``timeout`` seconds (a late reply is dropped).
        :raises KatclientConnectionError: not connected, or the connection closed before the reply.
        :raises InvalidUsage: for a bad name, mid or argument.
        """
        if self._closed:
            raise KatclientConnectionError(f"not connected: cannot send ?{name}") from self.close_reason
        if use_mid is None:
            use_mid = mid is not None or (self.protocol is not None and self.protocol.message_ids)
        if mid is None:
            mid = self._allocate_mid()
        elif type(mid) is not int or not 1 <= mid <= MAX_MID:
            raise InvalidUsage(f"message id must be an int in 1..{MAX_MID}, got {mid!r}")
        elif mid in self._by_mid:
            raise KatclientConnectionError(f"message id {mid} is already in flight")
        head = self._head(name)
        tail = self._tail(args)
        line = (b"%s[%d]%s\n" % (head, mid, tail)) if use_mid else head + tail + b"\n"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ReplyAndInforms] = loop.create_future()
        pending = self._add_pending(name, mid, use_mid, future)
        if use_mid and raw_informs:
            pending.raw_head = b"#%s[%d]" % (name.encode("ascii"), mid)
            self._raw[pending.raw_head] = pending
        if timeout is not None:
            self._arm_deadline(pending, loop.time() + timeout, timeout, loop)
        try:
            if len(self._by_mid) <= 1 and not self._out:
                self.stream.write(line)  # a lone request: no added latency
            else:
                # Others are in flight: join this loop iteration's requests into one send().
                if not self._out:
                    loop.call_soon(self._flush)
                self._out.append(line)
        except StreamClosedError as exc:
            self._forget(pending)
            raise KatclientConnectionError(f"connection lost sending ?{name}") from exc
        except Exception as exc:  # e.g. StreamBufferFullError: the peer stopped reading
            self._forget(pending)
            self.close(exc)
            raise KatclientConnectionError(f"cannot send ?{name}: {exc}") from exc
        return await future

    async def request_batch(
        self, name: str, arg_lists: list[tuple[Any, ...]], timeout: float | None = DEFAULT_REQUEST_TIMEOUT
    ) -> list[Message]:
        """Send many ``?name args`` in one write and return their replies, in order.

        Pipelining with no task, future or timer per request: what subscribing thousands of
        sensors one by one needs (devices without flag ``B``).

        :param arg_lists: the arguments of each request.
        :param timeout: seconds for the whole batch; ``None`` waits for ever.
        :returns: one reply per request (``ok``, ``fail`` or ``invalid``); informs are dropped.
        :raises KatclientTimeoutError: a reply did not come in time.
        :raises KatclientConnectionError: not connected, or the connection dropped.
        """
        if self._closed:
            raise KatclientConnectionError(f"not connected: cannot send ?{name}") from self.close_reason
        if not arg_lists:
            return []
        use_mid = self.protocol is not None and self.protocol.message_ids
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Message]] = loop.create_future()
        batch = _Batch(len(arg_lists), future)
        head = self._head(name)
        # Encode every argument first: a bad one raises before anything is registered or sent.
        tails = [self._tail(args) for args in arg_lists]
        lines = []
        deadline = None if timeout is None else loop.time() + timeout
        for i, tail in enumerate(tails):
            mid = self._allocate_mid()
            pending = self._add_pending(name, mid, use_mid, _BatchSlot(batch, i))
            lines.append((b"%s[%d]%s" % (head, mid, tail)) if use_mid else head + tail)
            if deadline is not None and timeout is not None:
                self._arm_deadline(pending, deadline, timeout, loop)
        lines.append(b"")
        try:
            self.stream.write(b"\n".join(lines))
        except Exception as exc:
            self.close(exc)
            raise KatclientConnectionError(f"cannot send ?{name}: {exc}") from exc
        return await future

    def _head(self, name: str) -> bytes:
        """``b"?name"``, validated and cached per name (the cache is bounded)."""
        head = self._heads.get(name)
        if head is None:
            Message(MessageType.REQUEST, name)  # raises InvalidUsage for a bad name
            if len(self._heads) >= MAX_CACHED_HEADS:
                self._heads.clear()
            head = self._heads[name] = b"?" + name.encode("ascii")
        return head

    @staticmethod
    def _tail(args: tuple[Any, ...]) -> bytes:
        """The escaped arguments, each preceded by a space (empty without arguments)."""
        return b"".join([b" " + escape(a if type(a) is bytes else encode_argument(a)) for a in args])

    def _add_pending(self, name: str, mid: int, use_mid: bool, future: Any) -> _Pending:
        pending = _Pending(name, mid, use_mid, future)
        self._by_mid[mid] = pending
        if not use_mid:
            self._by_name.setdefault(name, collections.deque()).append(pending)
        return pending

    def _arm_deadline(
        self, pending: _Pending, deadline: float, timeout: float, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Record ``pending``'s deadline; one timer per connection fires at the earliest one."""
        pending.deadline = deadline
        heapq.heappush(self._deadlines, (deadline, pending.mid, timeout))  # numbers only: no reply kept alive
        if len(self._deadlines) > 2 * len(self._by_mid) + 1024:
            self._compact_deadlines()
        if self._timer is None or deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._sweep)

    def _forget(self, pending: _Pending) -> None:
        self._by_mid.pop(pending.mid, None)
        if pending.raw_head is not None:
            self._raw.pop(pending.raw_head, None)
        if not pending.on_wire_mid:
            queue = self._by_name.get(pending.name)
            if queue is not None:
                try:
                    queue.remove(pending)
                except ValueError:
                    pass
                if not queue:
                    del self._by_name[pending.name]

    def _flush(self) -> None:
        out = self._out
        if not out or self._closed:
            out.clear()
            return
        data = b"".join(out)
        out.clear()
        try:
            self.stream.write(data)
        except Exception as exc:  # closed or over the bound: the pending requests fail
            self.close(exc)

    def _compact_deadlines(self) -> None:
        """Drop the heap entries of answered requests (bounded: at most 2x the requests in flight)."""
        by_mid = self._by_mid
        live = [e for e in self._deadlines if (p := by_mid.get(e[1])) is not None and p.deadline == e[0]]
        heapq.heapify(live)
        self._deadlines = live

    def _sweep(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        heap = self._deadlines
        by_mid = self._by_mid
        while heap and heap[0][0] <= now:
            deadline, mid, timeout = heapq.heappop(heap)
            pending = by_mid.get(mid)
            if pending is not None and pending.deadline == deadline and not pending.future.done():
                self._expire(pending, timeout)
        if heap:
            self._timer_at = heap[0][0]
            self._timer = loop.call_at(self._timer_at, self._sweep)

    def _expire(self, pending: _Pending, timeout: float) -> None:
        self._forget(pending)
        if not pending.future.done():
            pending.future.set_exception(
                KatclientTimeoutError(f"request ?{pending.name} timed out after {timeout:g} s")
            )

    # -- receiving ----------------------------------------------------------------------
    async def _read_loop(self) -> None:
        stream = self.stream
        parser = self._parser
        batch = self._line_batch
        handle = self._handle_line
        error: BaseException | None = None
        try:
            while True:
                data = await stream.read_bytes(READ_CHUNK, partial=True)
                lines = parser.feed_lines(data)
                if batch is not None:
                    batch(lines, handle)
                else:
                    for line in lines:
                        handle(line)
                if self.coalesce_delay and len(data) < COALESCE_BELOW:
                    # A peer trickling many small writes (aiokatcp's server writes each
                    # #sensor-status alone): let the kernel buffer fill instead of waking
                    # for every segment.  Only set while syncing.
                    await asyncio.sleep(self.coalesce_delay)
        except StreamClosedError as exc:
            error = exc.real_error or ConnectionResetError("connection closed by peer")
        except asyncio.CancelledError:
            error = None
        except Exception as exc:  # a bug in a handler must not leave the connection half-alive
            logger.exception("%s: unexpected error in reader", self._peer())
            error = exc
        self._teardown(error)

    def _handle_line(self, line: bytes | KatcpSyntaxError) -> None:
        """Parse and dispatch one line; a bad line is logged and dropped (nothing else is lost)."""
        if type(line) is not bytes:
            logger.warning("%s: %s; line discarded", self._peer(), line)
            return
        if line[0] == 33 and self._fast_reply(line):  # b"!"
            return
        if self._raw and line[0] == 35:  # b"#"
            pending = self._raw.get(line[: line.find(b" ")])
            if pending is not None:
                if len(pending.informs) < MAX_INFORMS_PER_REQUEST:
                    pending.informs.append(line)  # type: ignore[arg-type]
                return
        try:
            msg = parse_line(line)
        except KatcpSyntaxError as exc:
            logger.warning("%s: malformed line ignored: %s", self._peer(), exc)
            return
        self._dispatch(msg)

    def _fast_reply(self, line: bytes) -> bool:
        """Match a plain ``!name[mid] args`` reply without the general parser.

        Only lines with no escape (92), tab (9), NUL or ESC, single spaces and a digits-only
        mid of a pending request take this path; everything else returns ``False``.
        """
        if 92 in line or 9 in line or 0 in line or 27 in line:
            return False
        head, _, rest = line.partition(b" ")
        lb = head.find(b"[")
        if lb < 2 or head[-1] != 93 or not head[lb + 1 : -1].isdigit():  # 93: "]"
            return False
        pending = self._by_mid.get(int(head[lb + 1 : -1]))
        if (
            pending is None
            or not pending.on_wire_mid
            or pending.name.encode("ascii") != head[1:lb]
            or b"  " in rest
            or rest.endswith(b" ")
        ):
            return False
        args = tuple(rest.split(b" ")) if rest else ()
        self._handle_reply(Message._make(MessageType.REPLY, pending.name, pending.mid, args))
        return True

    def _peer(self) -> str:
        if self.address is None:
            return "katcp"
        return f"{self.address[0]}:{self.address[1]}"

    def _dispatch(self, msg: Message) -> None:
        mtype = msg[0]
        if mtype is MessageType.REPLY:
            self._handle_reply(msg)
        elif mtype is MessageType.INFORM:
            pending = self._owner_of_inform(msg)
            if pending is not None:
                if len(pending.informs) < MAX_INFORMS_PER_REQUEST:
                    pending.informs.append(msg)
                return
            self._handle_protocol_inform(msg)
            self._on_inform(msg)
        else:
            logger.warning("%s: ignoring request from the device: %s", self._peer(), msg)

    def _owner_of_inform(self, msg: Message) -> _Pending | None:
        mid = msg[2]
        if mid is not None:
            pending = self._by_mid.get(mid)
            if pending is not None and pending.on_wire_mid and pending.name == msg[1]:
                return pending
            return None
        queue = self._by_name.get(msg[1])
        if queue:
            return queue[0]
        return None

    def _handle_reply(self, msg: Message) -> None:
        mid = msg[2]
        pending: _Pending | None
        if mid is not None:
            pending = self._by_mid.get(mid)
            if pending is None or not pending.on_wire_mid or pending.name != msg[1]:
                logger.debug("%s: dropping reply with no pending request: %s", self._peer(), msg)
                return
        else:
            queue = self._by_name.get(msg[1])
            if not queue:
                logger.debug("%s: dropping reply with no pending request: %s", self._peer(), msg)
                return
            pending = queue[0]
        self._forget(pending)
        if not pending.future.done():
            pending.future.set_result((msg, pending.informs))

    def _handle_protocol_inform(self, msg: Message) -> None:
        name = msg[1]
        if name == "version-connect" and msg[3]:
            args = msg.text_arguments()
            self.versions.setdefault(args[0], []).extend(args[1:])
            if args[0] == "katcp-protocol" and len(args) > 1:
                self._set_protocol(args[1])
        elif name in ("version", "build-state") and self.protocol is None:
            self.versions.setdefault(name, []).extend(msg.text_arguments())
            self._set_detected(V4)

    def _set_protocol(self, text: str) -> None:
        try:
            flags = ProtocolFlags.parse(text)
        except ProtocolError as exc:
            logger.warning("%s: %s; ignored", self._peer(), exc)
            return
        if self._preset:
            if flags != self.protocol:
                logger.warning(
                    "%s: device announces %s but flags were preset to %s; keeping the preset",
                    self._peer(), flags, self.protocol,
                )
            return
        self._set_detected(flags)

    def _set_detected(self, flags: ProtocolFlags) -> None:
        if self.protocol is not None and self.protocol != flags:
            logger.warning("%s: protocol changed from %s to %s", self._peer(), self.protocol, flags)
        self.protocol = flags
        self.protocol_known.set()

    def assume_protocol(self, flags: ProtocolFlags) -> None:
        """Use ``flags`` because the device never announced its protocol (negotiation timeout)."""
        if self.protocol is None:
            self.protocol = flags
            self.protocol_known.set()

    # -- closing ------------------------------------------------------------------------
    def close(self, reason: BaseException | None = None) -> None:
        """Close the socket and fail every pending request with :class:`KatclientConnectionError`."""
        if self._closed:
            return
        self.close_reason = reason
        self.stream.close()
        # The reader sees StreamClosedError and tears down; make it prompt if it is not reading.
        self._reader.cancel()
        self._teardown(reason)

    def _teardown(self, error: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        if self.close_reason is None:
            self.close_reason = error
        if not self.stream.closed():
            self.stream.close()
        pendings = list(self._by_mid.values())
        self._by_mid.clear()
        self._by_name.clear()
        self._raw.clear()
        self._deadlines.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pending in pendings:
            if not pending.future.done():
                exc = KatclientConnectionError(f"connection lost while waiting for !{pending.name}")
                exc.__cause__ = error
                pending.future.set_exception(exc)
        try:
            self._on_close(self.close_reason)
        except Exception:
            logger.exception("%s: error in close callback", self._peer())

    async def wait_closed(self) -> None:
        """Wait until the reader task ended."""
        if not self._reader.done():
            try:
                await asyncio.shield(self._reader)
            except asyncio.CancelledError:
                if not self._reader.cancelled():
                    raise
