"""Test helpers for device servers: a raw line client and a virtual-time runner.

These know nothing of katclient's inspecting client; they speak KATCP lines with the
sans-I/O :class:`~katclient.protocol.Parser`, so a server can be tested on its own
(STYLE.md habit 6: message tests through an in-memory client/server pair).

* :func:`run_virtual` runs a coroutine on an ``async_solipsism`` event loop, where
  sleeps and timeouts take no wall-clock time (STYLE.md habit 9).  It needs the
  ``async-solipsism`` package (a test dependency).
* :class:`LineClient` connects over TCP (:meth:`LineClient.connect`) or over a socket
  pair straight into :meth:`DeviceServer.handle_stream` (:meth:`LineClient.pair`), which
  works on both real and virtual-time loops.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar, cast

from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

from katclient.protocol import (
    KatclientConnectionError,
    KatclientTimeoutError,
    KatcpSyntaxError,
    Message,
    MessageType,
    Parser,
    format_message,
)
from katclient.server.connection import ClientConnection
from katclient.server.server import DeviceServer

__all__ = ["LineClient", "run_virtual", "MAX_QUEUED_MESSAGES"]

_T = TypeVar("_T")

#: Messages a :class:`LineClient` holds before it stops reading (then the server's
#: backlog grows, as with any slow client).  Big enough for a 10,000-sensor listing.
MAX_QUEUED_MESSAGES: Final = 200_000

_fake_ports = itertools.count(40000)


def run_virtual(main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``main()`` to completion on a fresh ``async_solipsism`` loop (virtual time).

    :raises ImportError: when async-solipsism is not installed.
    """
    import async_solipsism

    loop = async_solipsism.EventLoop()
    try:
        return cast(_T, loop.run_until_complete(main()))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class LineClient:
    """A minimal KATCP client for tests: send lines, read parsed messages.

    Replies, and informs carrying a pending request's name and mid, go to that request
    (:meth:`request`); every other message is queued for :meth:`next_message`, so a
    background task may consume asynchronous informs while requests are in flight.

    :ivar stream: the underlying :class:`~tornado.iostream.IOStream`.
    :ivar errors: malformed lines received (as :class:`~katclient.protocol.KatcpSyntaxError`).
    """

    def __init__(self, stream: IOStream) -> None:
        self.stream = stream
        self.errors: list[KatcpSyntaxError] = []
        self._parser = Parser()
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue(MAX_QUEUED_MESSAGES)
        self._pending: dict[tuple[str, int | None], tuple[list[Message], asyncio.Future[Message]]] = {}
        self._mid = itertools.count(1)
        self._closed = False
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, host: str, port: int) -> LineClient:
        """Connect over TCP."""
        stream = await TCPClient().connect(host, port)
        return cls(stream)

    @classmethod
    def pair(cls, server: DeviceServer) -> tuple[LineClient, ClientConnection]:
        """Connect to ``server`` through a socket pair and :meth:`DeviceServer.handle_stream`
        (a real ``socket.socketpair`` or, on an async-solipsism loop, its in-memory one).
        """
        loop = asyncio.get_running_loop()
        if type(loop).__module__.startswith("async_solipsism"):
            import async_solipsism

            a, b = async_solipsism.socketpair()
        else:
            a, b = socket.socketpair()
        conn = server.handle_stream(IOStream(b), ("127.0.0.1", next(_fake_ports)))
        return cls(IOStream(a)), conn

    async def _read(self) -> None:
        try:
            while True:
                data = await self.stream.read_bytes(65536, partial=True)
                for item in self._parser.feed(data):
                    if isinstance(item, KatcpSyntaxError):
                        self.errors.append(item)
                        continue
                    pending = self._pending.get((item.name, item.mid))
                    if pending is None or item.mtype is MessageType.REQUEST:
                        await self._queue.put(item)
                    elif item.mtype is MessageType.INFORM:
                        pending[0].append(item)
                    else:
                        del self._pending[(item.name, item.mid)]
                        if not pending[1].done():
                            pending[1].set_result(item)
        except StreamClosedError:
            pass
        finally:
            self._closed = True
            for _, future in self._pending.values():
                if not future.done():
                    future.set_exception(KatclientConnectionError("connection closed by the server"))
            self._pending.clear()
            await self._queue.put(None)

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes (lines or not)."""
        self.stream.write(data)

    def send(self, name: str, *args: Any, mid: int | None = None) -> Message:
        """Send a request ``?name[mid] args`` without waiting for its reply; returns it."""
        msg = Message.request(name, *args, mid=mid)
        self.stream.write(format_message(msg))
        return msg

    async def next_message(self, timeout: float | None = 5.0) -> Message:
        """The next message that does not belong to a pending :meth:`request`.

        :raises KatclientConnectionError: when the server closed the connection.
        :raises KatclientTimeoutError: when nothing arrives within ``timeout`` seconds.
        """
        try:
            msg = await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            raise KatclientTimeoutError(f"no message within {timeout} s") from None
        if msg is None:
            self._queue.put_nowait(None)  # keep reporting the close
            raise KatclientConnectionError("connection closed by the server")
        return msg

    def queued(self) -> list[Message]:
        """Take every message already queued for :meth:`next_message`, without waiting."""
        out: list[Message] = []
        while not self._queue.empty():
            msg = self._queue.get_nowait()
            if msg is None:
                self._queue.put_nowait(None)
                break
            out.append(msg)
        return out

    async def wait_for(self, predicate: Callable[[Message], bool], timeout: float | None = 5.0) -> Message:
        """Read until a message satisfies ``predicate`` (earlier messages are dropped)."""

        async def run() -> Message:
            while True:
                msg = await self.next_message(None)
                if predicate(msg):
                    return msg

        try:
            return await asyncio.wait_for(run(), timeout)
        except asyncio.TimeoutError:
            raise KatclientTimeoutError(f"no matching message within {timeout} s") from None

    async def wait_inform(self, name: str, timeout: float | None = 5.0) -> Message:
        """Read until an inform called ``name`` arrives."""
        return await self.wait_for(lambda m: m.mtype is MessageType.INFORM and m.name == name, timeout)

    async def request(
        self, name: str, *args: Any, mid: int | None | bool = True, timeout: float | None = 5.0
    ) -> tuple[Message, list[Message]]:
        """Send a request and collect its informs and reply.

        :param mid: ``True`` for the next message id, ``None``/``False`` for none, or an int.
        :returns: ``(reply, informs)``.
        :raises KatclientTimeoutError: without a reply within ``timeout`` seconds.
        :raises KatclientConnectionError: when the connection closes first.
        """
        use_mid = next(self._mid) if mid is True else (mid or None)
        key = (name, use_mid)
        if key in self._pending:
            raise KatclientConnectionError(f"?{name} with mid {use_mid} is already pending")
        if self._closed:
            raise KatclientConnectionError("connection closed by the server")
        informs: list[Message] = []
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[key] = (informs, future)
        self.send(name, *args, mid=use_mid)
        try:
            reply = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise KatclientTimeoutError(f"?{name}: no reply within {timeout} s") from None
        finally:
            self._pending.pop(key, None)
        return reply, informs

    async def wait_closed(self, timeout: float | None = 5.0) -> None:
        """Wait until the server closes the connection."""
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Close the connection and stop the reader."""
        self.stream.close()
        try:
            await self._reader
        except (StreamClosedError, asyncio.CancelledError):
            pass
