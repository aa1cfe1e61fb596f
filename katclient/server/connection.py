"""One client connection of a :class:`~katclient.server.DeviceServer`: reading, writing, sampling.

Sources: KATCP v5 spec sections 2 (framing) and 3.5.3 (sampling is per client);
protocols/katcp.md 1.1 (a server answers an unparsable line with ``#log error`` and
keeps the connection), 1.7 (strategies end with the connection) and 4 section 2.4
(aiokatcp drops clients whose write backlog grows too large, so one stalled client
cannot slow the others or exhaust memory).

Design (STYLE.md habit 9): one reader task per connection feeds the bounded
:class:`~katclient.protocol.Parser`; each request runs as its own task, at most
``max_in_flight`` at a time (reading pauses at the limit, so nothing queues without
bound).  Everything written goes to a per-connection list of byte strings that is
flushed once per event-loop iteration with a single ``stream.write``; sensor updates
from the samplers append preformatted ``#sensor-status`` lines to it (the hot path).
The stream's ``max_write_buffer_size`` is the backlog bound: a write beyond it
disconnects the client with a reason.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError

from katclient.protocol import (
    Address,
    KatcpSyntaxError,
    Message,
    MessageType,
    Parser,
    Reading,
    Sampling,
    encode_timestamp,
    escape,
)
from katclient.server.sampling import Sampler, create_sampler
from katclient.server.sensor import Sensor

if TYPE_CHECKING:
    from katclient.server.server import DeviceServer

__all__ = ["ClientConnection", "format_address", "READ_CHUNK_SIZE", "CLOSE_FLUSH_TIMEOUT"]

logger = logging.getLogger(__name__)

#: Bytes asked of the socket per read.  Also bounds how many requests one read can
#: parse at once (the parsed lines of one chunk are dispatched before the next read).
READ_CHUNK_SIZE: Final = 64 * 1024

#: Seconds a closing connection waits for its last bytes (``#disconnect``) to drain
#: before the socket is closed anyway.
CLOSE_FLUSH_TIMEOUT: Final = 1.0

#: Malformed lines logged at WARNING per connection; later ones are logged at DEBUG
#: (every one still gets its ``#log error`` inform) so a garbage flood cannot flood logs.
MAX_BAD_LINE_WARNINGS: Final = 10

_REQUEST: Final = MessageType.REQUEST


def format_address(address: object) -> str:
    """``host:port`` (``[v6]:port``) for a socket address tuple, else ``str(address)``."""
    if isinstance(address, tuple) and len(address) >= 2:
        return str(Address(str(address[0]), int(address[1])))
    return str(address)


class ClientConnection:
    """A connected client.  Created by :meth:`DeviceServer.handle_stream`.

    :ivar server: the owning :class:`~katclient.server.DeviceServer`.
    :ivar stream: the Tornado :class:`~tornado.iostream.IOStream`.
    :ivar address: the peer address as given by the listener, usually ``(host, port)``.
    :ivar samplers: sensor name -> running :class:`~katclient.server.sampling.Sampler`.
    """

    def __init__(
        self,
        server: DeviceServer,
        stream: IOStream,
        address: object,
        *,
        max_line_length: int,
        max_backlog: int,
        max_in_flight: int,
    ) -> None:
        self.server = server
        self.stream = stream
        self.address = address
        self.samplers: dict[str, Sampler] = {}
        self._loop = asyncio.get_running_loop()
        self._parser = Parser(max_line_length)
        self._max_backlog = max_backlog
        self._max_in_flight = max_in_flight
        self._out: list[bytes] = []
        self._tasks: set[asyncio.Future[None]] = set()
        self._slot: asyncio.Future[None] | None = None
        self._last_write: asyncio.Future[None] | None = None
        self._closed = False
        self._bad_lines = 0
        self._done: asyncio.Future[None] = self._loop.create_future()
        stream.max_write_buffer_size = max_backlog
        self.major = server.protocol.major
        if self.major >= 5:
            self.send_status = self._send_status_v5
        else:
            self.send_status = self._send_status_v4
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<ClientConnection {format_address(self.address)}{' closed' if self._closed else ''}>"

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (or closing)."""
        return self._closed

    @property
    def in_flight(self) -> int:
        """Request handler tasks of this client still running."""
        return len(self._tasks)

    def start(self) -> None:
        """Start the reader task (called by the server after the connect informs)."""
        self._reader = self._loop.create_task(self._read_loop())

    # -- writing -----------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue bytes (whole lines) for the client; flushed once per loop iteration.

        Dropped silently when the connection is closed.
        """
        if self._closed:
            return
        out = self._out
        if not out:
            self._loop.call_soon(self._flush)
        out.append(data)

    def write_message(self, msg: Message) -> None:
        """Queue one message."""
        self.write(bytes(msg))

    def _send_status_v5(self, sensor: Sensor, reading: Reading) -> None:
        # The hot path: samplers call this for every reported update (katcp.md 1.6).
        out = self._out
        if not out:
            self._loop.call_soon(self._flush)
        out.append(sensor.status_line(reading))

    def _send_status_v4(self, sensor: Sensor, reading: Reading) -> None:
        self.write(sensor.status_line_v4(reading))

    def _flush(self) -> None:
        out = self._out
        if not out or self._closed:
            out.clear()
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        try:
            self._last_write = self.stream.write(data)
        except StreamBufferFullError:
            self._too_slow(len(data))
        except StreamClosedError:
            self._shutdown()

    def _too_slow(self, pending: int) -> None:
        reason = f"Client too slow: write backlog exceeded {self._max_backlog} bytes, disconnecting."
        logger.warning("%s: %s (%d more bytes pending)", self, reason, pending)
        # Best effort: the socket's own buffer is most likely full too, and the stream may
        # have stopped mid-line, hence the leading newline.  Never blocks.
        line = b"\n#disconnect " + escape(reason.encode("ascii")) + b"\n"
        try:
            sock = self.stream.socket
            if sock is not None:
                sock.send(line)
        except (OSError, ValueError):
            pass
        self._shutdown()
        self.stream.close()

    # -- reading -----------------------------------------------------------------------
    async def _read_loop(self) -> None:
        stream = self.stream
        parser = self._parser
        dispatch = self.server._dispatch
        try:
            while not self._closed:
                data = await stream.read_bytes(READ_CHUNK_SIZE, partial=True)
                for item in parser.feed(data):
                    if isinstance(item, KatcpSyntaxError):
                        self._bad_line(item)
                    elif item[0] is not _REQUEST:
                        logger.debug("%s: ignoring %s from a client", self, item.mtype.name.lower())
                    else:
                        if len(self._tasks) >= self._max_in_flight:
                            await self._wait_for_slot()
                        if self._closed:
                            return
                        try:
                            dispatch(self, item)
                        except Exception:  # a bug, not the client's fault: keep serving
                            logger.exception("%s: internal error handling %r", self, item)
        except StreamClosedError:
            pass
        except Exception:
            logger.exception("%s: reader failed; closing the connection", self)
        finally:
            self._shutdown()
            self.stream.close()

    async def _wait_for_slot(self) -> None:
        while len(self._tasks) >= self._max_in_flight and not self._closed:
            self._slot = self._loop.create_future()
            await self._slot

    def add_task(self, task: asyncio.Future[None]) -> None:
        """Count a running request handler task against this client's in-flight limit."""
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        slot = self._slot
        if slot is not None and not slot.done():
            slot.set_result(None)

    def _bad_line(self, exc: KatcpSyntaxError) -> None:
        self._bad_lines += 1
        level = logging.WARNING if self._bad_lines <= MAX_BAD_LINE_WARNINGS else logging.DEBUG
        logger.log(level, "%s: malformed line: %s", self, exc)
        self.write(
            b"#log error %s katclient.server %s\n"
            % (encode_timestamp(self.server.clock(), self.major), escape(str(exc).encode("utf-8", "replace")))
        )

    # -- sampling ----------------------------------------------------------------------
    def set_sampling(self, sensor: Sensor, sampling: Sampling) -> None:
        """Replace this client's strategy for ``sensor`` and start it (which sends the current
        reading, unless the strategy is ``none``)."""
        old = self.samplers.pop(sensor.name, None)
        if old is not None:
            old.close()
        sampler = create_sampler(sensor, sampling, self.send_status, self._loop)
        if sampler is not None:
            self.samplers[sensor.name] = sampler
            sampler.start()

    def get_sampling(self, sensor: Sensor) -> Sampler | None:
        """This client's running sampler for ``sensor`` (this very object), or ``None``."""
        sampler = self.samplers.get(sensor.name)
        return sampler if sampler is not None and sampler.sensor is sensor else None

    def drop_sensor(self, sensor: Sensor) -> bool:
        """Stop sampling ``sensor`` (this very object).  Returns whether it was sampled."""
        sampler = self.samplers.get(sensor.name)
        if sampler is None or sampler.sensor is not sensor:
            return False
        del self.samplers[sensor.name]
        sampler.close()
        return True

    def clear_samplers(self) -> list[Sensor]:
        """Stop every strategy of this client; returns the sensors that were sampled."""
        samplers = list(self.samplers.values())
        self.samplers.clear()
        for s in samplers:
            s.close()
        return [s.sensor for s in samplers]

    # -- closing -----------------------------------------------------------------------
    def _shutdown(self) -> None:
        """Mark closed, stop sampling and tell the server (idempotent); the stream stays open."""
        if self._closed:
            return
        self._closed = True
        self._out.clear()
        sensors = self.clear_samplers()
        slot = self._slot
        if slot is not None and not slot.done():
            slot.set_result(None)
        self.server._connection_closed(self, sensors)
        if not self._done.done():
            self._done.set_result(None)

    async def aclose(self, reason: str | None = None, timeout: float | None = CLOSE_FLUSH_TIMEOUT) -> None:
        """Close gracefully: send ``#disconnect <reason>`` (if given) after anything queued,
        wait up to ``timeout`` seconds for it to drain, then close the socket.
        """
        if not self._closed:
            if reason is not None:
                self.write(b"#disconnect " + escape(reason.encode("utf-8")) + b"\n")
            self._flush()
        last = self._last_write
        self._shutdown()
        if last is not None and not last.done() and not self.stream.closed():
            await asyncio.wait([last], timeout=timeout)
        self.stream.close()
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            await asyncio.wait([reader], timeout=timeout)

    def close(self) -> None:
        """Close at once (queued output is dropped)."""
        self._shutdown()
        self.stream.close()

    async def wait_closed(self) -> None:
        """Wait until the connection has closed."""
        await asyncio.shield(self._done)
