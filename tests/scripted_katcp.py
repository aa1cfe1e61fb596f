"""A scriptable raw KATCP server for client fault tests.

It speaks just enough KATCP (``?help``, ``?sensor-list``, ``?sensor-sampling``,
``?sensor-value``, ``?watchdog``) over asyncio streams, records every request it
receives, and lets a test override any request with a coroutine or misbehave on
purpose (no ``#version-connect``, garbage lines, dropped connections).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from katclient.protocol import Message, Parser, encode_timestamp, format_message


@dataclass
class FakeSensor:
    name: str
    type: str = "float"
    value: bytes = b"1.5"
    description: str = "a sensor"
    units: str = "V"
    params: tuple[bytes, ...] = ()
    status: bytes = b"nominal"


Handler = Callable[["ScriptedConnection", Message], Awaitable[None]]


@dataclass
class ScriptedServer:
    protocol: str | None = "5.0-IM"  # None: send no #version-connect at all
    v4: bool = False  # announce with #version/#build-state and use ms timestamps
    sensors: dict[str, FakeSensor] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=lambda: {"watchdog": "Check the device is alive."})
    handlers: dict[str, Handler] = field(default_factory=dict)
    connect_lines: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.received: list[Message] = []
        self.received_at: list[float] = []
        self.connections: list[ScriptedConnection] = []
        self.connected = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.port = 0

    def add_sensor(self, name: str, **kw: object) -> FakeSensor:
        s = FakeSensor(name, **kw)  # type: ignore[arg-type]
        self.sensors[name] = s
        return s

    def count(self, name: str) -> int:
        return sum(1 for m in self.received if m.name == name)

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        for c in list(self.connections):
            c.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = ScriptedConnection(self, reader, writer)
        self.connections.append(conn)
        self.connected.set()
        try:
            await conn.run()
        finally:
            if conn in self.connections:
                self.connections.remove(conn)
            conn.close()

    def ts(self) -> bytes:
        return encode_timestamp(time.time(), 4 if self.v4 else 5)


class ScriptedConnection:
    def __init__(self, server: ScriptedServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.parser = Parser()

    def send(self, *msgs: Message) -> None:
        if not self.writer.is_closing():
            self.writer.write(b"".join(format_message(m) for m in msgs))

    def send_raw(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()

    async def run(self) -> None:
        srv = self.server
        if srv.v4:
            self.send(Message.inform("version", "scripted-1.0"), Message.inform("build-state", "scripted-1.0.0"))
        elif srv.protocol is not None:
            self.send(Message.inform("version-connect", "katcp-protocol", srv.protocol))
        for line in srv.connect_lines:
            self.send_raw(line)
        while True:
            data = await self.reader.read(65536)
            if not data:
                return
            for msg in srv_parse(self.parser, data):
                srv.received.append(msg)
                srv.received_at.append(time.monotonic())
                handler = srv.handlers.get(msg.name)
                if handler is not None:
                    asyncio.ensure_future(handler(self, msg))
                else:
                    self.default(msg)

    def default(self, msg: Message) -> None:
        srv = self.server
        args = msg.text_arguments()
        if msg.name == "help":
            names = [args[0]] if args else sorted(srv.requests)
            for n in names:
                if n not in srv.requests:
                    self.send(Message.reply_to_request(msg, "fail", "Unknown request."))
                    return
                self.send(Message.inform_for_request(msg, n, srv.requests[n]))
            self.send(Message.reply_to_request(msg, "ok", len(names)))
        elif msg.name == "sensor-list":
            names = [args[0]] if args else sorted(srv.sensors)
            for n in names:
                s = srv.sensors.get(n)
                if s is None:
                    self.send(Message.reply_to_request(msg, "fail", "Unknown sensor name."))
                    return
                self.send(Message.inform_for_request(msg, s.name, s.description, s.units, s.type, *s.params))
            self.send(Message.reply_to_request(msg, "ok", len(names)))
        elif msg.name in ("sensor-sampling", "sensor-value"):
            names = args[0].split(",") if args else sorted(srv.sensors)
            for n in names:
                s = srv.sensors.get(n)
                if s is None:
                    self.send(Message.reply_to_request(msg, "fail", "Unknown sensor name."))
                    return
            for n in names:
                s = srv.sensors[n]
                name = "sensor-status" if msg.name == "sensor-sampling" else "sensor-value"
                inform = Message.inform(name, srv.ts(), 1, s.name, s.status, s.value)
                if msg.name == "sensor-value":
                    inform = Message.inform_for_request(msg, srv.ts(), 1, s.name, s.status, s.value)
                self.send(inform)
            self.send(Message.reply_to_request(msg, "ok", *msg.arguments))
        elif msg.name == "watchdog":
            self.send(Message.reply_to_request(msg, "ok"))
        else:
            self.send(Message.reply_to_request(msg, "invalid", "Unknown request."))

    def update(self, name: str, value: bytes, status: bytes = b"nominal") -> None:
        s = self.server.sensors[name]
        s.value, s.status = value, status
        self.send(Message.inform("sensor-status", self.server.ts(), 1, name, status, value))


def srv_parse(parser: Parser, data: bytes) -> list[Message]:
    return [m for m in parser.feed(data) if isinstance(m, Message)]
