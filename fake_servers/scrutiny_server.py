"""A fake Scrutiny Debugger server (scrutinydebugger 0.16.0 API) with an emulated demo device.

Wire-faithful to protocols/scrutiny.md section 1: the ``<SCRUTINY size=.. flags=ch>`` framing
(zlib + MD5, bare ``NaN``), the same commands, field names, error messages and pushes as the
real server, the two-phase operations (``request_token`` then ``inform_*``), the silent
``load_sfd``, the all-or-nothing subscribe, ``watchable_update`` records without ``d`` for RPVs
and with ``r`` for invalid values, and status pushes only on the transitions of section 1.3.
The emulated device and SFDs are in :mod:`fake_servers.scrutiny_device`.

Unlike the real server, a client that stops reading does not stall the others: value updates
for it are coalesced (newest value per entry) while its output backlog is high, and the client
is dropped if even its replies pile up (section 3.2 describes the real server's stall).

Run ``python -m fake_servers.scrutiny_server --port 8765``; it prints ``listening on HOST:PORT``.
From tests: ``host, port = await FakeScrutinyServer().start()``, then ``await fake.stop()``;
``start()`` again rebinds the same port, like a restarted server process.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import fnmatch
import functools
import logging
import math
import socket
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tornado.iostream import IOStream, StreamClosedError
from tornado.netutil import bind_sockets
from tornado.tcpserver import TCPServer

from fake_servers._common import base_parser, serve_until_signalled
from fake_servers.scrutiny_device import (
    DEMO_FIRMWARE_ID,
    SFD,
    AliasDef,
    Datalogger,
    DeviceAccessError,
    EmulatedDevice,
    ExprError,
    SFDFormatError,
    VarDef,
    coerce_value,
    decode_value,
    encode_value,
    make_demo_sfd,
    make_test_sfd,
    parse_math_expr,
)
from katclient.devices.scrutiny.framing import (
    INTERCHUNK_TIMEOUT,
    STREAM_MTU,
    FrameError,
    MessageDecoder,
    encode_message,
)
from katclient.errors import InvalidUsage

__all__ = ["FakeScrutinyServer", "main"]

logger = logging.getLogger(__name__)

#: Bytes read from a client socket at a time (the real server reads 4096).
READ_SIZE = 65536
#: Output backlog (bytes written but not yet sent) above which value updates to that client are
#: held back and coalesced, so a slow reader does not grow memory or slow the others.
SOFT_BACKLOG = 256 * 1024
#: Output backlog above which a client that does not read is disconnected (replies still pile up).
HARD_BACKLOG = 16 * 1024 * 1024
#: Most device operations (writes, memory accesses, user commands) queued at once.
MAX_DEVICE_OPS = 10_000
#: Most stored acquisitions kept (oldest dropped beyond), bounding memory of a long-running fake.
MAX_ACQUISITIONS = 1000
#: Most SFD uploads in progress per connection.
MAX_UPLOADS = 4
#: Largest SFD accepted by upload (``SFD_MAX_UPLOAD_SIZE``).
SFD_MAX_UPLOAD_SIZE = 64 * 1024 * 1024
#: Bytes per ``response_download_sfd`` chunk (the real ``STREAM_MTU // 2 - 256``).
DOWNLOAD_CHUNK = STREAM_MTU // 2 - 256
#: Largest datalogging timeout / hold time in seconds (``floor((2**32 - 1) * 1e-7)``).
DATALOGGING_MAX_TIME = math.floor((2**32 - 1) * 1e-7)

_CONDITION_OPERANDS = {
    "true": 0,
    "eq": 2,
    "neq": 2,
    "lt": 2,
    "let": 2,
    "gt": 2,
    "get": 2,
    "cmt": 2,
    "within": 3,
}
_X_AXIS_TYPES = ("index", "ideal_time", "measured_time", "signal")
_LINK_TYPES = ("none", "udp", "serial", "rtt", "canbus", "dummy")


class _Invalid(Exception):
    """A request the real server would answer with ``{"cmd": "error", "msg": str(self)}``."""


def _field(req: Any, d: Any, name: str, types: type | tuple[type, ...], prefix: str = "") -> None:
    """The real ``assert_dict_key``: same checks, same messages (KeyError text keeps its quotes)."""
    types_t = types if isinstance(types, tuple) else (types,)
    key, _, rest = name.partition(".")
    part = f"{prefix}.{key}" if prefix else key
    if not isinstance(d, dict):
        raise _Invalid(f'Field {part} is expected to be a dictionary"')
    if key not in d:
        raise _Invalid(repr(f'Missing field "{part}"'))  # str(KeyError(...)) keeps the quotes
    if rest:
        _field(req, d[key], rest, types_t, part)
        return
    value = d[key]
    if not isinstance(value, types_t) or (isinstance(value, bool) and bool not in types_t):
        names = ", ".join(t.__name__ for t in types_t)
        raise _Invalid(
            f'Field {part} is expected to be of type "({names})" but found "{type(value).__name__}"'
        )


@dataclass
class _Entry:
    id: str
    path: str
    kind: str  # var, alias, rpv
    dtype: str
    var: VarDef | None = None
    alias: AliasDef | None = None
    target: _Entry | None = None
    rpvid: int | None = None
    enum: dict[str, Any] | None = None
    last_read: float = -math.inf

    def brief(self, with_type: bool) -> dict[str, Any]:
        d: dict[str, Any] = {"dtype": self.dtype, "path": self.path}
        if with_type:
            d["type"] = self.kind
        if self.enum is not None:
            d["enum"] = {"name": self.enum.get("name"), "values": self.enum.get("values")}
        return d

    def detailed(self) -> dict[str, Any]:
        d = self.brief(True)
        d["id"] = self.id
        if self.var is not None:
            d.update(address=self.var.address, bitoffset=self.var.bitoffset, bitsize=self.var.bitsize)
        elif self.alias is not None and self.target is not None:
            a = self.alias
            d.update(
                target=a.target,
                target_type=self.target.kind,
                gain=a.gain,
                bias=a.offset,
                min=a.min,
                max=a.max,
            )
        else:
            d["rpvid"] = self.rpvid
        return d

    @property
    def root(self) -> _Entry:
        return self.target if self.target is not None else self


@dataclass
class _Upload:
    token: str
    total_size: int
    data: bytearray = field(default_factory=bytearray)
    next_index: int = 0


class _Conn:
    def __init__(self, stream: IOStream, conn_id: str) -> None:
        self.stream = stream
        self.conn_id = conn_id
        self.decoder = MessageDecoder(STREAM_MTU, INTERCHUNK_TIMEOUT)
        self.watched: dict[str, float | None] = {}
        self.pending: dict[str, tuple[Any, dict[str, Any]]] = {}
        self.backlog = 0
        self.throttle: float | None = None
        self.budget = 0.0
        self.uploads: dict[str, _Upload] = {}
        self.closed = False


@dataclass
class _Acquisition:
    reference_id: str
    name: str | None
    timestamp: float
    firmware_id: str
    firmware_name: str | None
    trigger_index: int
    yaxes: list[dict[str, Any]]
    signals: list[dict[str, Any]]
    xdata: dict[str, Any]


@dataclass
class _ActiveAcquisition:
    conn: _Conn
    token: str
    request: dict[str, Any]
    logger: Datalogger
    signals: list[tuple[_Entry, str | None, int]]
    x_entry: _Entry | None
    download_step: int = -1


class _Listener(TCPServer):
    def __init__(self, owner: FakeScrutinyServer) -> None:
        super().__init__(max_buffer_size=4 * STREAM_MTU)
        self._owner = owner

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        await self._owner.handle_stream(stream, address)


class FakeScrutinyServer:
    """Fake Scrutiny server with the demo device.

    :param host: address to bind.
    :param port: port to bind (0 picks a free one; kept across :meth:`stop`/:meth:`start`).
    :param demo: start with the demo device connected (as ``peers/scrutiny_server.sh`` does).
    :param tick_period: seconds between device loop passes (the real emulator: about 10 ms).
    :param poll_period: seconds between reads of watched entries (about 50 Hz like the demo).
    :param install_test_sfd: pre-install the extra test SFD (``TEST_FIRMWARE_ID``).
    :param autoload: load the device's SFD when it connects (``autoload_sfd``).
    :param rand: random source for ``/rpv/x1000`` (for reproducible tests).
    :param soft_backlog: see :data:`SOFT_BACKLOG` (bytes).
    :param hard_backlog: see :data:`HARD_BACKLOG` (bytes).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        demo: bool = True,
        tick_period: float = 0.01,
        poll_period: float = 0.02,
        install_test_sfd: bool = True,
        autoload: bool = True,
        rand: Callable[[], float] | None = None,
        soft_backlog: int = SOFT_BACKLOG,
        hard_backlog: int = HARD_BACKLOG,
    ) -> None:
        self.soft_backlog = soft_backlog
        self.hard_backlog = hard_backlog
        self.host = host
        self.port = port
        self.demo = demo
        self.tick_period = tick_period
        self.poll_period = poll_period
        self.autoload = autoload
        self._rand = rand
        #: Installed SFDs by firmware id; survives restarts (the real server keeps them on disk).
        self.installed: dict[str, SFD] = {}
        if install_test_sfd:
            sfd = make_test_sfd(int(time.time()))
            self.installed[sfd.firmware_id] = sfd
        #: Stored acquisitions, oldest first; survives restarts.
        self.acquisitions: collections.OrderedDict[str, _Acquisition] = collections.OrderedDict()
        self._demo_sfd = make_demo_sfd(int(time.time()))
        self._listener: _Listener | None = None
        self._running = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conn_tasks: set[asyncio.Task[Any]] = set()
        self._conns: dict[str, _Conn] = {}
        self._reset_state()

    # ------------------------------------------------------------------ lifecycle

    def _reset_state(self) -> None:
        self.device: EmulatedDevice | None = None
        self.session_id: str | None = None
        self.loaded: SFD | None = None
        self.demo_active = False
        self.link_type = "dummy"
        self._entries: dict[str, _Entry] = {}
        self._by_path: dict[str, _Entry] = {}
        self._next_id = 0
        self._device_ops: collections.deque[Callable[[], None]] = collections.deque()
        self._acq: _ActiveAcquisition | None = None
        self._dl_state: tuple[str, float | None] = ("unavailable", None)
        self._last_poll = -math.inf
        self.invalid_request_count = 0
        self.unexpected_error_count = 0
        self.msg_received = 0
        self.msg_sent = 0
        self.device_session_count = 0
        self._reload_requested: str | None = None
        self._device_gone = False

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _server_time_us(self) -> float:
        return round((self._now() - self._mono_zero) * 1e6, 3)

    async def start(self, listen: bool = True) -> tuple[str, int]:
        """Start serving (the device loop, and the listener unless ``listen`` is false, in which
        case streams are handed in with :meth:`handle_stream`, e.g. on virtual time).

        :returns: the bound ``(host, port)``.
        :raises InvalidUsage: when already running.
        """
        if self._running:
            raise InvalidUsage("the fake Scrutiny server is already running")
        self._reset_state()
        self._running = True
        self._mono_zero = self._now()
        self.time_zero = time.time()
        if listen:
            sockets = bind_sockets(self.port, self.host)
            self.port = sockets[0].getsockname()[1]
            self._listener = _Listener(self)
            self._listener.add_sockets(sockets)
        self._spawn(self._tick_loop())
        if self.demo:
            self._start_demo()
        return self.host, self.port

    async def stop(self) -> None:
        """Stop listening and drop every client (abortively, as the real server's sockets linger 0)."""
        if not self._running:
            return
        self._running = False
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        for conn in list(self._conns.values()):
            conn.stream.close()  # ends its reader; the task then finishes by itself
        await asyncio.gather(*self._conn_tasks, return_exceptions=True)
        self._conns.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def client_count(self) -> int:
        """Number of connected clients."""
        return len(self._conns)

    # ------------------------------------------------------------------ device control (tests)

    def _start_demo(self) -> None:
        if self.device is not None:
            self.disconnect_device()
        self.demo_active = True
        self.link_type = "dummy"
        self.device = EmulatedDevice(self._now, self._rand) if self._rand else EmulatedDevice(self._now)
        self.session_id = uuid.uuid4().hex
        self.device_session_count += 1
        for rpvid, dtype in sorted(EmulatedDevice.rpv_types.items()):
            self._add_entry(_Entry(self._new_id(), f"/rpv/x{rpvid:04X}", "rpv", dtype, rpvid=rpvid))
        self._dl_state = ("unavailable", None)
        self._push_status()  # connected_ready, no SFD yet
        if self.autoload:
            self._autoload()
        self._set_dl_state("standby", None)

    def restart_device(self) -> None:
        """Start a fresh demo device: a new device session (as ``demo_mode`` ``enable`` does)."""
        self._start_demo()

    def disconnect_device(self) -> None:
        """The device goes away: RPVs die, the SFD is unloaded (autoload), the datalogger too."""
        if self.device is None:
            return
        if self._acq is not None:
            self._finish_acquisition(False, "Device disconnected")
        self._fail_device_ops()
        self.device = None
        self.session_id = None
        for entry in [e for e in self._entries.values() if e.kind == "rpv" or (e.root.kind == "rpv")]:
            self._remove_entry(entry)
        self._push_status()
        if self.autoload and self.loaded is not None:
            self._unload_sfd()
        self._set_dl_state("unavailable", None)

    def _fail_device_ops(self) -> None:
        ops, self._device_ops = self._device_ops, collections.deque()
        for op in ops:
            self._run_gone(op)

    # ------------------------------------------------------------------ datastore

    def _new_id(self) -> str:
        value = format(self._next_id, "x")
        self._next_id += 1
        return value

    def _add_entry(self, entry: _Entry) -> None:
        self._entries[entry.id] = entry
        self._by_path[entry.path] = entry

    def _remove_entry(self, entry: _Entry) -> None:
        self._entries.pop(entry.id, None)
        if self._by_path.get(entry.path) is entry:
            del self._by_path[entry.path]
        for conn in self._conns.values():
            conn.watched.pop(entry.id, None)
            conn.pending.pop(entry.id, None)

    def _load_sfd(self, sfd: SFD) -> None:
        for entry in [e for e in self._entries.values() if e.kind in ("var", "alias")]:
            self._remove_entry(entry)
        self.loaded = sfd
        for var in sfd.variables.values():
            self._add_entry(
                _Entry(
                    self._new_id(),
                    var.path,
                    "var",
                    var.dtype,
                    var=var,
                    enum=dict(var.enum) if var.enum is not None else None,
                )
            )
        for alias in sfd.aliases.values():
            target = self._by_path.get(alias.target)
            if target is None or target.kind == "alias":
                logger.warning("cannot add alias %s: no target %s", alias.path, alias.target)
                continue
            self._add_entry(
                _Entry(
                    self._new_id(),
                    alias.path,
                    "alias",
                    target.dtype,
                    alias=alias,
                    target=target,
                    enum=target.enum,
                )
            )
        self._push_status()

    def _unload_sfd(self) -> None:
        if self.loaded is None:
            return
        for entry in [e for e in self._entries.values() if e.kind in ("var", "alias")]:
            self._remove_entry(entry)
        self.loaded = None
        self._push_status()

    def _sfd_by_id(self, firmware_id: str) -> SFD | None:
        if firmware_id == DEMO_FIRMWARE_ID:
            return self._demo_sfd
        return self.installed.get(firmware_id)

    def _autoload(self) -> None:
        if self.device is not None and self.loaded is None:
            sfd = self._sfd_by_id(self.device.firmware_id)
            if sfd is not None:
                self._load_sfd(sfd)

    def _read_entry(self, entry: _Entry) -> tuple[Any, bytes | None, str | None]:
        """``(value, raw, invalid_reason)`` of an entry, read from the device now."""
        device = self.device
        if device is None:
            return None, None, None
        root = entry.root
        raw: bytes | None = None
        if root.var is not None:
            var = root.var
            if not device.readable(var.address, var.size):
                return None, None, "forbidden"
            raw = device.peek(var.address, var.size)
            value = decode_value(var.dtype, raw, self.loaded.endianness if self.loaded else "little")
            if var.bitoffset is not None and var.bitsize is not None and not isinstance(value, float):
                value = (int(value) >> var.bitoffset) & ((1 << var.bitsize) - 1)
        elif root.rpvid is not None:
            value = device.rpvs[root.rpvid]
        else:
            return None, None, None
        if entry.alias is not None and (entry.alias.gain is not None or entry.alias.offset is not None):
            value = float(value) * (entry.alias.gain if entry.alias.gain is not None else 1.0) + (
                entry.alias.offset or 0.0
            )
        return value, raw, None

    def _write_entry(self, entry: _Entry, value: int | float | bool) -> tuple[bool, str]:
        """Write a parsed value to an entry on the device; ``(success, failure_reason)``."""
        device = self.device
        if device is None:
            return False, "Stopped"
        if entry.alias is not None:
            a = entry.alias
            if a.min is not None:
                value = max(a.min, value)
            if a.max is not None:
                value = min(a.max, value)
            value = (float(value) - (a.offset or 0.0)) / (a.gain if a.gain is not None else 1.0)
        root = entry.root
        if root.var is not None:
            var = root.var
            if not device.writable(var.address, var.size):
                return False, "Not allowed"
            endian = self.loaded.endianness if self.loaded else "little"
            if var.bitoffset is not None and var.bitsize is not None:
                field_value = int(coerce_value(var.dtype, value, var.bitsize))
                field_value &= (1 << var.bitsize) - 1
                mask = ((1 << var.bitsize) - 1) << var.bitoffset
                current = int(decode_value(var.dtype, device.peek(var.address, var.size), endian))
                raw_int = (current & ~mask) | (field_value << var.bitoffset)
                device.poke(var.address, encode_value(var.dtype, raw_int, endian))
            else:
                device.poke(var.address, encode_value(var.dtype, coerce_value(var.dtype, value), endian))
            return True, ""
        if root.rpvid is not None:
            device.rpvs[root.rpvid] = coerce_value(root.dtype, value)
            return True, ""
        return False, "Not allowed"

    # ------------------------------------------------------------------ connections

    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        """Serve one client connection until it closes."""
        if not self._running:
            stream.close()
            return
        sock = stream.socket
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn = _Conn(stream, uuid.uuid4().hex)
        self._conns[conn.conn_id] = conn
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)
        try:
            self._send(conn, {"cmd": "welcome", "reqid": None, "server_time_zero_timestamp": self.time_zero})
            while not conn.closed:
                try:
                    chunk = await stream.read_bytes(READ_SIZE, partial=True)
                except StreamClosedError:
                    break
                for item in conn.decoder.feed(chunk, self._now()):
                    if isinstance(item, FrameError):
                        logger.error("client %s: %s", conn.conn_id, item.detail)
                        continue
                    self.msg_received += 1
                    self._process_request(conn, item)
                if len(chunk) >= READ_SIZE:
                    await asyncio.sleep(0)  # a flooding client must not starve the device loop
        finally:
            conn.closed = True
            stream.close()
            if self._conns.get(conn.conn_id) is conn:
                del self._conns[conn.conn_id]
            if task is not None:
                self._conn_tasks.discard(task)

    def _send(self, conn: _Conn, obj: dict[str, Any], droppable: bool = False) -> bool:
        """Queue ``obj`` to ``conn``; False when held back (droppable updates) or the client is gone."""
        if conn.closed:
            return False
        if droppable and conn.backlog > self.soft_backlog:
            return False
        data = encode_message(obj)
        if conn.backlog + len(data) > self.hard_backlog:
            logger.warning("client %s does not read; disconnecting it", conn.conn_id)
            conn.closed = True
            conn.stream.close()
            return False
        try:
            fut = conn.stream.write(data)
        except StreamClosedError:
            conn.closed = True
            return False
        conn.backlog += len(data)
        self.msg_sent += 1

        def done(f: Any, size: int = len(data)) -> None:
            conn.backlog -= size
            if not f.cancelled():
                f.exception()

        fut.add_done_callback(done)
        return True

    def _broadcast(self, obj: dict[str, Any]) -> None:
        for conn in list(self._conns.values()):
            self._send(conn, obj)

    def _status_msg(self, reqid: int | None) -> dict[str, Any]:
        ready = self.device is not None
        return {
            "cmd": "inform_server_status",
            "reqid": reqid,
            "device_status": "connected_ready" if ready else "disconnected",
            "device_session_id": self.session_id,
            "loaded_sfd_firmware_id": self.loaded.firmware_id if self.loaded is not None else None,
            "datalogging_status": {
                "datalogging_state": self._dl_state[0],
                "completion_ratio": self._dl_state[1],
            },
            "device_comm_link": {
                "link_type": self.link_type,
                "link_operational": self.link_type != "none",
                "link_config": {},
                "demo_mode": self.demo_active,
            },
        }

    def _push_status(self) -> None:
        if self._running:
            self._broadcast(self._status_msg(None))

    def _set_dl_state(self, state: str, ratio: float | None) -> None:
        if (state, ratio) != self._dl_state:
            self._dl_state = (state, ratio)
            self._push_status()

    # ------------------------------------------------------------------ request processing

    def _process_request(self, conn: _Conn, req: dict[str, Any]) -> None:
        try:
            _field(req, req, "cmd", str)
            self._reqid(req)
            cmd = req["cmd"]
            handler = getattr(self, "_cmd_" + cmd, None) if cmd.isidentifier() else None
            if handler is None:
                raise _Invalid(f"Unsupported command {cmd}")
            handler(conn, req)
        except _Invalid as exc:
            self.invalid_request_count += 1
            self._send(conn, self._error(req, str(exc)))
        except Exception:
            self.unexpected_error_count += 1
            logger.exception("unexpected error processing %.200r", req)
            self._send(conn, self._error(req, "Internal error"))

    @staticmethod
    def _reqid(req: dict[str, Any]) -> int | None:
        reqid = req.get("reqid")
        if reqid is not None and not isinstance(reqid, int):
            raise _Invalid("Invalid request ID")
        return reqid

    def _error(self, req: dict[str, Any], msg: str) -> dict[str, Any]:
        reqid = req.get("reqid")
        cmd = req.get("cmd", "<empty>")
        return {
            "cmd": "error",
            "reqid": reqid if isinstance(reqid, int) else None,
            "request_cmd": cmd,
            "msg": msg,
        }

    def _reply(self, conn: _Conn, req: dict[str, Any], **fields: Any) -> None:
        msg = {"cmd": "response_" + req["cmd"], "reqid": self._reqid(req)}
        msg.update(fields)
        self._send(conn, msg)

    def _queue_device_op(self, op: Callable[[], None]) -> None:
        if len(self._device_ops) >= MAX_DEVICE_OPS:
            raise _Invalid("Device request queue is full")
        self._device_ops.append(op)

    def _entry_by_path(self, path: Any, msg: str = "Unknown watchable : %s") -> _Entry:
        entry = self._by_path.get(path) if isinstance(path, str) else None
        if entry is None:
            raise _Invalid(msg % str(path))
        return entry

    @staticmethod
    def _parse_write_value(value: Any) -> int | float | bool:
        if isinstance(value, str):
            text = value.lower().strip()
            if text == "true":
                value = True
            elif text == "false":
                value = False
            else:
                try:
                    value = parse_math_expr(text)
                except ExprError:
                    value = None
        if value is None or not isinstance(value, (int, float, bool)) or not math.isfinite(value):
            raise _Invalid("Invalid value")
        return value

    # -- misc

    def _cmd_echo(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "payload", str)
        self._reply(conn, req, payload=req["payload"])

    def _cmd_get_server_status(self, conn: _Conn, req: dict[str, Any]) -> None:
        self._send(conn, self._status_msg(self._reqid(req)))

    def _cmd_get_device_info(self, conn: _Conn, req: dict[str, Any]) -> None:
        device = self.device
        info = None
        if device is not None:
            info = {
                "session_id": self.session_id,
                "device_id": device.firmware_id,
                "display_name": device.display_name,
                "max_tx_data_size": device.max_tx_data_size,
                "max_rx_data_size": device.max_rx_data_size,
                "max_bitrate_bps": device.max_bitrate_bps,
                "rx_timeout_us": device.rx_timeout_us,
                "heartbeat_timeout_us": device.heartbeat_timeout_us,
                "address_size_bits": device.address_size_bits,
                "protocol_major": 1,
                "protocol_minor": 0,
                "supported_feature_map": {
                    "memory_write": True,
                    "datalogging": True,
                    "user_command": True,
                    "_64bits": True,
                },
                "forbidden_memory_regions": [
                    {"start": r.start, "end": r.end, "size": r.size} for r in device.forbidden
                ],
                "readonly_memory_regions": [
                    {"start": r.start, "end": r.end, "size": r.size} for r in device.readonly
                ],
                "datalogging_capabilities": {
                    "buffer_size": Datalogger.BUFFER_SIZE,
                    "encoding": "raw",
                    "max_nb_signal": 32,
                    "sampling_rates": [
                        {"identifier": 0, "name": "Python thread", "frequency": None, "type": "variable_freq"}
                    ],
                },
                "char_bit": 8,
            }
        self._reply(conn, req, available=info is not None, device_info=info)

    def _cmd_get_server_stats(self, conn: _Conn, req: dict[str, Any]) -> None:
        uptime = self._now() - self._mono_zero
        self._reply(
            conn,
            req,
            uptime=uptime,
            invalid_request_count=self.invalid_request_count,
            unexpected_error_count=self.unexpected_error_count,
            client_count=len(self._conns),
            to_all_clients_datarate_byte_per_sec=0.0,
            from_any_client_datarate_byte_per_sec=0.0,
            msg_received=self.msg_received,
            msg_sent=self.msg_sent,
            device_session_count=self.device_session_count,
            to_device_datarate_byte_per_sec=0.0,
            from_device_datarate_byte_per_sec=0.0,
            device_request_per_sec=0.0,
        )

    def _cmd_demo_mode(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "enable", bool)
        if req["enable"]:
            self._start_demo()
        else:
            self.demo_active = False
            self.disconnect_device()
        self._reply(conn, req, enabled=self.demo_active)

    def _cmd_set_link_config(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "link_type", str)
        _field(req, req, "link_config", dict)
        if req["link_type"] not in _LINK_TYPES:
            raise _Invalid(
                f"Link configuration is not good for given link type. Unknown link type {req['link_type']}"
            )
        self.demo_active = False
        self.disconnect_device()
        self.link_type = req["link_type"]
        self._reply(conn, req)
        self._push_status()

    def _cmd_set_throttling(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "update_rate", (float, int, type(None)))
        rate = req["update_rate"]
        if rate is not None:
            rate = float(rate)
            if rate < 0 or not math.isfinite(rate):
                raise _Invalid("update rate is not a valid value")
        conn.throttle = rate if rate else None
        conn.budget = 0.0
        self._reply(conn, req, enabled=conn.throttle is not None, update_rate=conn.throttle)

    # -- watchables

    def _cmd_get_watchable_count(self, conn: _Conn, req: dict[str, Any]) -> None:
        counts = collections.Counter(e.kind for e in self._entries.values())
        self._reply(
            conn,
            req,
            qty={"var": counts["var"], "alias": counts["alias"], "rpv": counts["rpv"], "var_factory": 0},
        )

    def _cmd_get_watchable_list(self, conn: _Conn, req: dict[str, Any]) -> None:
        max_per = 1000
        if "max_per_response" in req:
            _field(req, req, "max_per_response", int)
            max_per = req["max_per_response"]
        kinds: list[str] = []
        names: list[str] | None = None
        filt = req.get("filter")
        if isinstance(filt, dict):
            if isinstance(filt.get("type"), list):
                for t in filt["type"]:
                    if t not in ("var", "alias", "rpv"):
                        raise _Invalid(f'Unsupported type filter :"{t}"')
                    kinds.append(t)
            if "name" in filt:
                if isinstance(filt["name"], list) and all(isinstance(n, str) for n in filt["name"]):
                    names = filt["name"]
                elif isinstance(filt["name"], str):
                    names = [filt["name"]]
                else:
                    raise _Invalid("Invalid name filter")
        kinds = kinds or ["var", "alias", "rpv"]
        order = [k for k in ("rpv", "alias", "var") if k in kinds]
        selected = [
            e
            for k in order
            for e in self._entries.values()
            if e.kind == k and (names is None or any(fnmatch.fnmatchcase(e.path, n) for n in names))
        ]
        step = max(1, max_per)
        chunks = [selected[i : i + step] for i in range(0, len(selected), step)] or [[]]
        for index, chunk in enumerate(chunks):
            content: dict[str, list[Any]] = {"var": [], "alias": [], "rpv": [], "var_factory": []}
            for entry in chunk:
                content[entry.kind].append(entry.brief(False))
            qty = {k: len(v) for k, v in content.items()}
            qty = {"var": qty["var"], "alias": qty["alias"], "rpv": qty["rpv"], "var_factory": 0}
            self._reply(conn, req, qty=qty, content=content, done=index == len(chunks) - 1)

    def _details(self, paths: list[Any]) -> dict[str, Any]:
        return {str(p): self._entry_by_path(p).detailed() for p in paths}

    def _cmd_get_watchable_info(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "watchables", list)
        self._reply(conn, req, info=self._details(req["watchables"]))

    def _cmd_subscribe_watchable(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "watchables", list)
        rate = None
        if "rate" in req:
            _field(req, req, "rate", (type(None), float, int))
            if req["rate"] is not None:
                rate = float(req["rate"])
        subscribed = self._details(req["watchables"])  # all-or-nothing: checks every path first
        if rate is not None and rate <= 0:  # the real datastore raises: reported as "Internal error"
            raise ValueError(f"invalid update rate {rate}")
        for path in req["watchables"]:
            conn.watched[self._by_path[path].id] = rate
        self._reply(conn, req, subscribed=subscribed)

    def _cmd_unsubscribe_watchable(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "watchables", list)
        entries = [self._entry_by_path(p) for p in req["watchables"]]
        for entry in entries:
            conn.watched.pop(entry.id, None)
            conn.pending.pop(entry.id, None)
        self._reply(conn, req, unsubscribed=req["watchables"])

    def _effective_rate(self, entry_id: str) -> float | None:
        rates = [c.watched[entry_id] for c in self._conns.values() if entry_id in c.watched]
        if not rates or any(r is None for r in rates):
            return None
        return max(r for r in rates if r is not None)

    def _cmd_change_subscription_update_rate(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "changes", list)
        effective: dict[str, float | None] = {}
        for change in req["changes"]:
            _field(req, change, "id", str)
            _field(req, change, "rate", (type(None), float, int))
            rate = None if change["rate"] is None else float(change["rate"])
            if change["id"] not in self._entries:
                raise _Invalid(
                    f"Cannot change update rate : 'Entry with ID {change['id']} not found in datastore'"
                )
            if change["id"] not in conn.watched:
                raise _Invalid(
                    f"Cannot change update rate : Entry {change['id']} is not watched by this client"
                )
            if rate is not None and rate <= 0:
                raise _Invalid("Cannot change update rate : Update rate must be a positive value")
            conn.watched[change["id"]] = rate
            effective[change["id"]] = self._effective_rate(change["id"])
        self._reply(conn, req, effective_rates=effective)

    def _complete_write(self, conn: _Conn, token: str, index: int, entry: _Entry, value: Any) -> None:
        if self._device_gone or entry.id not in self._entries:
            ok, reason = False, "Stopped"
        else:
            ok, reason = self._write_entry(entry, value)
        msg = {
            "cmd": "inform_write_completion",
            "reqid": None,
            "watchable": entry.id,
            "request_token": token,
            "batch_index": index,
            "success": ok,
            "completion_server_time_us": self._server_time_us(),
            "failure_reason": reason,
        }
        targets = {c.conn_id: c for c in self._conns.values() if entry.id in c.watched}
        targets[conn.conn_id] = conn
        for target in targets.values():
            self._send(target, msg)

    def _cmd_write_watchable(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "updates", list)
        parsed = []
        for update in req["updates"]:
            _field(req, update, "batch_index", int)
            _field(req, update, "watchable", str)
            if "value" not in update:
                raise _Invalid('Missing "value" field')
            value = self._parse_write_value(update["value"])
            entry = self._entries.get(update["watchable"])
            if entry is None:
                raise _Invalid(f"Unknown watchable ID {update['watchable']}")
            parsed.append((update["batch_index"], entry, value))
        if len({i for i, _, _ in parsed}) != len(parsed):
            raise _Invalid("Duplicate batch_index in request")
        token = uuid.uuid4().hex
        for index, entry, value in parsed:
            self._queue_device_op(functools.partial(self._complete_write, conn, token, index, entry, value))
        self._reply(conn, req, request_token=token, count=len(parsed))

    def _cmd_write_single_watchable(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "server_path", str)
        if "value" not in req:
            raise _Invalid('Missing "value" field')
        value = self._parse_write_value(req["value"])
        entry = self._entry_by_path(req["server_path"], "Unknown watchable path %s")
        reqid = self._reqid(req)

        def op() -> None:
            ok, reason = (False, "Stopped") if self._device_gone else self._write_entry(entry, value)
            self._send(
                conn,
                {
                    "cmd": "response_write_single_watchable",
                    "reqid": reqid,
                    "success": ok,
                    "failure_reason": reason,
                },
            )

        self._queue_device_op(op)

    def _cmd_write_single_watchable_by_data(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "server_path", str)
        _field(req, req, "data", str)
        entry = self._entry_by_path(req["server_path"], "Unknown watchable ID %s")
        data = self._b64(req["data"])
        if not data:
            raise _Invalid('"data" field is not valid')
        var = entry.root.var
        if var is None:
            raise _Invalid(f"No memory address tied to watchable {req['server_path']}")
        if len(data) > var.size:
            raise _Invalid(f"Data too long. {var.size} required, got {len(data)}")
        padded = bytes(var.size - len(data)) + data
        reqid = self._reqid(req)

        def op() -> None:
            ok, reason = self._device_write(var.address, padded)
            self._send(
                conn,
                {
                    "cmd": "response_write_single_watchable_by_data",
                    "reqid": reqid,
                    "success": ok,
                    "failure_reason": reason,
                },
            )

        self._queue_device_op(op)

    # -- memory and user commands

    @staticmethod
    def _b64(text: str) -> bytes:
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid('"data" field is not a valid base64 string') from None

    def _device_write(self, address: int, data: bytes) -> tuple[bool, str]:
        if self._device_gone or self.device is None:
            return False, "Stopping communication with device"
        try:
            self.device.write(address, data)
        except DeviceAccessError as exc:
            return False, str(exc)
        return True, ""

    def _cmd_read_memory(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "address", int)
        _field(req, req, "size", int)
        if req["address"] < 0:
            raise _Invalid('"address" field is not valid')
        if req["size"] <= 0:
            raise _Invalid('"size" field is not valid')
        token = uuid.uuid4().hex
        address, size = req["address"], req["size"]

        def op() -> None:
            data: bytes | None = None
            detail: str | None = None
            if self._device_gone or self.device is None:
                detail = "Stopping communication with device"
            else:
                try:
                    data = self.device.read(address, size)
                except DeviceAccessError as exc:
                    detail = str(exc)
            self._send(
                conn,
                {
                    "cmd": "inform_memory_read_complete",
                    "reqid": None,
                    "request_token": token,
                    "success": data is not None,
                    "data": base64.b64encode(data).decode("ascii") if data is not None else None,
                    "detail_msg": detail,
                    "completion_server_time_us": self._server_time_us(),
                },
            )

        self._queue_or_fail(op)
        self._reply(conn, req, request_token=token)

    def _queue_or_fail(self, op: Callable[[], None]) -> None:
        if self.device is None:
            asyncio.get_running_loop().call_soon(self._run_gone, op)
        else:
            self._queue_device_op(op)

    def _run_gone(self, op: Callable[[], None]) -> None:
        self._device_gone = True
        try:
            op()
        finally:
            self._device_gone = False

    def _cmd_write_memory(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "address", int)
        _field(req, req, "data", str)
        data = self._b64(req["data"])
        if req["address"] < 0:
            raise _Invalid('"address" field is not valid')
        if not data:
            raise _Invalid('"data" field is not valid')
        token = uuid.uuid4().hex
        address = req["address"]

        def op() -> None:
            ok, reason = self._device_write(address, data)
            self._send(
                conn,
                {
                    "cmd": "inform_memory_write_complete",
                    "reqid": None,
                    "request_token": token,
                    "success": ok,
                    "completion_server_time_us": self._server_time_us(),
                    "detail_msg": None if ok else reason,
                },
            )

        self._queue_or_fail(op)
        self._reply(conn, req, request_token=token)

    def _cmd_user_command(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "subfunction", int)
        if not 0 <= req["subfunction"] <= 0xFF:
            raise _Invalid("Invalid subfunction")
        data = b""
        if "data" in req:
            _field(req, req, "data", str)
            data = self._b64(req["data"])
        if self.device is None:
            self._send(
                conn,
                self._error(
                    req, "Failed to request User Command: The connection to the device is not fully ready"
                ),
            )
            return
        subfunction = req["subfunction"]

        def op() -> None:
            if self._device_gone or self.device is None:
                self._send(conn, self._error(req, "Stopping communication with device"))
                return
            try:
                answer = self.device.user_command(subfunction, data)
            except DeviceAccessError as exc:
                self._send(conn, self._error(req, str(exc)))
                return
            self._reply(conn, req, subfunction=subfunction, data=base64.b64encode(answer).decode("utf8"))

        self._queue_device_op(op)

    # -- SFD

    def _sfd_info(self, sfd: SFD) -> dict[str, Any]:
        return {"firmware_id": sfd.firmware_id, "metadata": sfd.metadata, "filesize": len(sfd.data)}

    def _cmd_get_installed_sfd(self, conn: _Conn, req: dict[str, Any]) -> None:
        self._reply(conn, req, sfd_list=[self._sfd_info(s) for s in self.installed.values()])

    def _cmd_get_loaded_sfd(self, conn: _Conn, req: dict[str, Any]) -> None:
        sfd = self.loaded
        info = None
        if sfd is not None:
            installed = self.installed.get(sfd.firmware_id)
            info = {
                "firmware_id": sfd.firmware_id,
                "metadata": sfd.metadata,
                "filesize": len(installed.data) if installed is not None else None,
            }
        self._reply(conn, req, sfd=info)

    def _cmd_load_sfd(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "firmware_id", str)
        sfd = self._sfd_by_id(req["firmware_id"])
        if sfd is None:
            logger.error(
                "Cannot load SFD %s. Firmware ID %s is not installed", req["firmware_id"], req["firmware_id"]
            )
            return  # no response at all, as the real server (scrutiny.md 1.2)
        self._reload_requested = sfd.firmware_id  # applied on the next device loop pass

    def _cmd_uninstall_sfd(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "firmware_id_list", list)
        for fw in req["firmware_id_list"]:
            if not isinstance(fw, str):
                raise _Invalid("Given firmware_id must be a string")
            if len(fw) != 32 or any(c not in "0123456789abcdefABCDEF" for c in fw):
                raise _Invalid(
                    "Given firmware_id does not have the correct format. Expecting a 128bits hex string"
                )
            if fw not in self.installed:
                raise _Invalid(f"Firmware ID {fw} is not installed")
        for fw in req["firmware_id_list"]:
            del self.installed[fw]
            if self.loaded is not None and self.loaded.firmware_id == fw:
                self._unload_sfd()
        self._reply(conn, req)

    def _cmd_download_sfd(self, conn: _Conn, req: dict[str, Any]) -> None:
        _field(req, req, "firmware_id", str)
        sfd = self.installed.get(req["firmware_id"])
        if sfd is None:
            raise _Invalid(f"No firmware with ID {req['firmware_id']}")
        chunk = DOWNLOAD_CHUNK
        if "max_chunk_size" in req:
            if not isinstance(req["max_chunk_size"], int) or req["max_chunk_size"] <= 0:
                raise _Invalid("Invalid max_chunk_size")
            chunk = min(chunk, req["max_chunk_size"])
        for index, start in enumerate(range(0, len(sfd.data), chunk)):
            self._reply(
                conn,
                req,
                firmware_id=sfd.firmware_id,
                total_size=len(sfd.data),
                file_chunk={
                    "chunk_index": index,
                    "data": base64.b64encode(sfd.data[start : start + chunk]).decode("ascii"),
                },
            )

    def _cmd_upload_sfd_init(self, conn: _Conn, req: dict[str, Any]) -> None:
        if self._reqid(req) is None:
            raise _Invalid("Missing request ID")
        _field(req, req, "firmware_id", str)
        _field(req, req, "total_size", int)
        if req["total_size"] < 0:
            raise _Invalid("Invalid total_size")
        fw = req["firmware_id"]
        if len(fw) != 32 or any(c not in "0123456789abcdefABCDEF" for c in fw):
            raise _Invalid("Invalid firmware ID")
        if req["total_size"] > SFD_MAX_UPLOAD_SIZE:
            raise _Invalid(f"Size too big. Max={SFD_MAX_UPLOAD_SIZE}")
        if len(conn.uploads) >= MAX_UPLOADS:
            conn.uploads.pop(next(iter(conn.uploads)))
        token = uuid.uuid4().hex
        conn.uploads[token] = _Upload(token, req["total_size"])
        self._reply(conn, req, token=token, will_overwrite=fw.lower() in self.installed)

    def _cmd_upload_sfd_data(self, conn: _Conn, req: dict[str, Any]) -> None:
        if self._reqid(req) is None:
            raise _Invalid("Missing request ID")
        _field(req, req, "token", str)
        upload = conn.uploads.get(req["token"])
        if upload is None:
            raise _Invalid("Unknown token")

        def fail(msg: str) -> None:
            conn.uploads.pop(upload.token, None)
            raise _Invalid(msg)

        try:
            _field(req, req, "file_chunk.data", str)
            _field(req, req, "file_chunk.chunk_index", int)
        except _Invalid as exc:
            fail(str(exc))
        chunk = req["file_chunk"]
        if chunk["chunk_index"] != upload.next_index:
            fail(f"Unexpected chunk_index. Expected {upload.next_index}")
        try:
            data = base64.b64decode(chunk["data"], validate=True)
        except (binascii.Error, ValueError):
            fail("Invalid base64 data chunk")
        if len(upload.data) + len(data) > upload.total_size:
            fail("Size mismatch. Received more data than total_size")
        upload.data += data
        upload.next_index += 1
        info = None
        completed = len(upload.data) == upload.total_size
        if completed:
            conn.uploads.pop(upload.token, None)
            try:
                sfd = SFD.from_bytes(bytes(upload.data))
            except SFDFormatError as exc:
                raise _Invalid(str(exc)) from exc
            self.installed[sfd.firmware_id] = sfd
            info = self._sfd_info(sfd)
        self._reply(conn, req, completed=completed, actual_size=len(upload.data), sfd_info=info)

    # -- datalogging

    def _cmd_request_datalogging_acquisition(self, conn: _Conn, req: dict[str, Any]) -> None:
        if self.device is None:
            raise _Invalid("Device is not ready to receive a request")
        required: dict[str, type] = {
            "yaxes": list,
            "sampling_rate_id": int,
            "decimation": int,
            "timeout": float,
            "trigger_hold_time": float,
            "probe_location": float,
            "condition": str,
            "operands": list,
            "signals": list,
            "x_axis_type": str,
        }
        for name, expected in required.items():
            if name not in req:
                raise _Invalid(f"Missing field {name} in request")
            value = req[name]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                req[name] = value = float(value)
            if expected is int and isinstance(value, float):
                if int(value) != value:
                    raise _Invalid(f"Field {name} must be an integer")
                req[name] = value = int(value)
            if not isinstance(value, expected):
                raise _Invalid(f"Invalid field {name}")
        if req["sampling_rate_id"] != 0:
            raise _Invalid("Given sampling_rate_id is not supported for this device.")
        if req["decimation"] <= 0:
            raise _Invalid("decimation must be a positive integer")
        if req["timeout"] < 0:
            raise _Invalid("timeout must be a positive value or zero")
        if req["timeout"] > DATALOGGING_MAX_TIME:
            raise _Invalid(f"timeout must be smaller than {DATALOGGING_MAX_TIME}s")
        if req["trigger_hold_time"] < 0:
            raise _Invalid("trigger_hold_time must be a positive value or zero")
        if req["trigger_hold_time"] > DATALOGGING_MAX_TIME:
            raise _Invalid(f"trigger_hold_time must be a smaller than {DATALOGGING_MAX_TIME}s")
        if not 0 <= req["probe_location"] <= 1:
            raise _Invalid("probe_location must be a value between 0 and 1")
        if req["condition"] not in _CONDITION_OPERANDS:
            raise _Invalid(f"Unknown trigger condition {req['condition']}")
        if len(req["operands"]) != _CONDITION_OPERANDS[req["condition"]]:
            raise _Invalid(f"Bad number of condition operands for condition {req['condition']}")
        if req["x_axis_type"] not in _X_AXIS_TYPES:
            raise _Invalid("Unsupported X Axis type")
        x_entry = None
        if req["x_axis_type"] == "signal":
            xs = req.get("x_axis_signal")
            if not isinstance(xs, dict):
                raise _Invalid("Missing a valid x_axis_signal required when x_axis_type=watchable")
            if "path" not in xs:
                raise _Invalid("Missing x_axis_signal.path field")
            if not isinstance(xs["path"], str):
                raise _Invalid("Invalid x_axis_signal.path field")
            x_entry = self._entry_by_path(xs["path"], "Cannot find watchable with given path %s")
        elif req["x_axis_type"] == "ideal_time":
            raise _Invalid("Cannot use ideal time on variable frequency rate")
        operands: list[Callable[[], float]] = []
        for op in req["operands"]:
            if not isinstance(op, dict):
                raise _Invalid("Unknown operand type")
            if op.get("type") == "literal":
                if not isinstance(op.get("value"), (int, float, bool)):
                    raise _Invalid("Unsupported datatype for operand")
                operands.append(functools.partial(float, op["value"]))
            elif op.get("type") == "watchable":
                if not isinstance(op.get("value"), str):
                    raise _Invalid("Unsupported datatype for operand")
                entry = self._entry_by_path(op["value"], "Cannot find watchable with given path %s")
                operands.append(functools.partial(self._sample, entry))
            else:
                raise _Invalid("Unknown operand type")
        if len(req["signals"]) == 0:
            raise _Invalid("Missing watchable to log")
        axes: dict[int, dict[str, Any]] = {}
        for yaxis in req["yaxes"]:
            _field(req, yaxis, "name", str)
            _field(req, yaxis, "id", int)
            if yaxis["id"] in axes:
                raise _Invalid("Duplicate Y-Axis ID")
            axes[yaxis["id"]] = {"name": yaxis["name"], "id": yaxis["id"]}
        signals: list[tuple[_Entry, str | None, int]] = []
        for sig in req["signals"]:
            _field(req, sig, "path", str)
            entry = self._entry_by_path(sig["path"], "Cannot find watchable with given path : %s")
            name = sig.get("name")
            if not (name is None or isinstance(name, str)):
                raise _Invalid("Invalid signal name")
            if not isinstance(sig.get("axis_id"), int) or sig["axis_id"] not in axes:
                raise _Invalid("Invalid signal axis ID")
            signals.append((entry, name, sig["axis_id"]))
        if "name" in req and req["name"] is not None and not isinstance(req["name"], str):
            raise _Invalid("Invalid acquisition name")
        if self._acq is not None:
            self._finish_acquisition(False, "Acquisition got canceled")
        handles = [s[0] for s in signals] + ([x_entry] if x_entry is not None else [])
        sizes = [self._entry_size(e) for e in handles]
        dl = Datalogger(
            self._sample,
            handles,
            sizes,
            req["condition"],
            operands,
            req["decimation"],
            req["probe_location"],
            req["timeout"],
            req["trigger_hold_time"],
            req["x_axis_type"] == "measured_time",
        )
        token = uuid.uuid4().hex
        self._acq = _ActiveAcquisition(
            conn, token, dict(req, yaxes=list(axes.values())), dl, signals, x_entry
        )
        self._reply(conn, req, request_token=token)
        self._set_dl_state("waiting_for_trigger", None)

    @staticmethod
    def _entry_size(entry: _Entry) -> int:
        return int("".join(c for c in entry.dtype if c.isdigit())) // 8

    def _sample(self, entry: _Entry) -> float:
        value = self._read_entry(entry)[0] if entry.id in self._entries else None
        return float("nan") if value is None else float(value)

    def _datalog_tick(self) -> None:
        acq = self._acq
        if acq is None:
            return
        dl = acq.logger
        if acq.download_step < 0:
            dl.tick()
            if dl.done:
                acq.download_step = 0
                self._set_dl_state("downloading", None)
            elif dl.triggered:
                self._set_dl_state("acquiring", round(dl.completion, 6))
            return
        steps = 3
        if acq.download_step <= steps:
            self._set_dl_state("downloading", acq.download_step / steps)
            acq.download_step += 1
            return
        self._finish_acquisition(True, "")

    @staticmethod
    def _series(values: list[float]) -> list[Any]:
        return [v if math.isfinite(v) else str(v) for v in values]

    def _finish_acquisition(self, success: bool, detail: str) -> None:
        acq, self._acq = self._acq, None
        if acq is None:
            return
        reference_id = None
        if success:
            dl = acq.logger
            reference_id = uuid.uuid4().hex
            req = acq.request
            columns = list(zip(*dl.samples)) if dl.samples else [() for _ in range(len(acq.signals) + 1)]
            signals = [
                {
                    "name": name if name else "unnamed",
                    "watchable": {"path": entry.path, "type": entry.kind},
                    "data": self._series(list(columns[i])),
                    "axis_id": axis_id,
                }
                for i, (entry, name, axis_id) in enumerate(acq.signals)
            ]
            n = len(dl.samples)
            xdata: dict[str, Any]
            if req["x_axis_type"] == "index":
                xdata = {"name": "Index", "watchable": None, "data": [float(i) for i in range(n)]}
            elif req["x_axis_type"] == "measured_time":
                t0 = dl.times[0] if dl.times else 0.0
                xdata = {
                    "name": "Time (measured)",
                    "watchable": None,
                    "data": [round(t - t0, 7) for t in dl.times],
                }
            else:
                assert acq.x_entry is not None
                xs = req.get("x_axis_signal") or {}
                xdata = {
                    "name": xs.get("name") or "X-Axis",
                    "watchable": {"path": acq.x_entry.path, "type": acq.x_entry.kind},
                    "data": self._series(list(columns[len(acq.signals)])),
                }
            device_fw = self.device.firmware_id if self.device is not None else DEMO_FIRMWARE_ID
            sfd = self._sfd_by_id(device_fw)
            fw_name = None
            if sfd is not None and sfd.metadata.get("project_name"):
                fw_name = str(sfd.metadata["project_name"])
                if sfd.metadata.get("version"):
                    fw_name += f" V{sfd.metadata['version']}"
            self.acquisitions[reference_id] = _Acquisition(
                reference_id,
                req.get("name"),
                float(int(time.time())),
                device_fw,
                fw_name,
                max(0, dl.trigger_index or 0),
                req["yaxes"],
                signals,
                xdata,
            )
            while len(self.acquisitions) > MAX_ACQUISITIONS:
                self.acquisitions.popitem(last=False)
        self._send(
            acq.conn,
            {
                "cmd": "inform_datalogging_acquisition_complete",
                "reqid": None,
                "success": success,
                "reference_id": reference_id,
                "request_token": acq.token,
                "detail_msg": detail,
            },
        )
        if success:
            self._broadcast(
                {
                    "cmd": "inform_datalogging_list_changed",
                    "reqid": None,
                    "reference_id": reference_id,
                    "action": "new",
                }
            )
        self._set_dl_state("standby" if self.device is not None else "unavailable", None)

    def _acq_meta(self, acq: _Acquisition) -> dict[str, Any]:
        sfd = self._sfd_by_id(acq.firmware_id)
        return {
            "firmware_id": acq.firmware_id,
            "name": acq.name,
            "timestamp": acq.timestamp,
            "reference_id": acq.reference_id,
            "firmware_metadata": sfd.metadata if sfd is not None else None,
        }

    def _cmd_list_datalogging_acquisitions(self, conn: _Conn, req: dict[str, Any]) -> None:
        ref = None
        if "reference_id" in req:
            if req["reference_id"] is not None and not isinstance(req["reference_id"], str):
                raise _Invalid("Invalid reference ID")
            ref = req["reference_id"]
        if ref is None:
            _field(req, req, "count", int)
            fw = req.get("firmware_id")
            if fw is not None and not isinstance(fw, str):
                raise _Invalid("Invalid firmware ID")
            before = req.get("before_timestamp")
            if before is not None:
                _field(req, req, "before_timestamp", (int, float))
                if before < 0:
                    raise _Invalid("Invalid before_timestamp value")
            if not 0 <= req["count"] <= 10000:
                raise _Invalid("Invalid count value. Value must be between 0 and 10000")
            found = [
                a
                for a in reversed(self.acquisitions.values())
                if (fw is None or a.firmware_id == fw) and (before is None or a.timestamp < before)
            ]
            found = found[: req["count"]]
        else:
            found = [self.acquisitions[ref]] if ref in self.acquisitions else []
        self._reply(conn, req, acquisitions=[self._acq_meta(a) for a in found])

    def _get_acq(self, req: dict[str, Any], what: str) -> _Acquisition:
        _field(req, req, "reference_id", str)
        acq = self.acquisitions.get(req["reference_id"])
        if acq is None:
            raise _Invalid(f"Failed to {what}. No acquisition identified by ID {req['reference_id']}")
        return acq

    def _cmd_read_datalogging_acquisition_content(self, conn: _Conn, req: dict[str, Any]) -> None:
        acq = self._get_acq(req, "read acquisition")
        self._reply(
            conn,
            req,
            firmware_id=acq.firmware_id,
            firmware_name=acq.firmware_name,
            name="" if acq.name is None else acq.name,
            timestamp=acq.timestamp,
            reference_id=acq.reference_id,
            trigger_index=acq.trigger_index,
            signals=acq.signals,
            xdata=acq.xdata,
            yaxes=acq.yaxes,
        )

    def _cmd_update_datalogging_acquisition(self, conn: _Conn, req: dict[str, Any]) -> None:
        acq = self._get_acq(req, "update acquisition")
        if "name" in req:
            _field(req, req, "name", str)
        if "axis_name" in req:
            if not isinstance(req["axis_name"], list):
                raise _Invalid("Invalid axis name list")
            for item in req["axis_name"]:
                _field(req, item, "id", int)
                _field(req, item, "name", str)
                if not any(a["id"] == item["id"] for a in acq.yaxes):
                    raise _Invalid(f"Failed to update acquisition. No axis with ID {item['id']}")
        if "name" in req:
            acq.name = req["name"]
        for item in req.get("axis_name", []):
            for axis in acq.yaxes:
                if axis["id"] == item["id"]:
                    axis["name"] = item["name"]
        self._reply(conn, req)
        self._broadcast(
            {
                "cmd": "inform_datalogging_list_changed",
                "reqid": None,
                "reference_id": acq.reference_id,
                "action": "update",
            }
        )

    def _cmd_delete_datalogging_acquisition(self, conn: _Conn, req: dict[str, Any]) -> None:
        acq = self._get_acq(req, "delete acquisition")
        del self.acquisitions[acq.reference_id]
        self._reply(conn, req)
        self._broadcast(
            {
                "cmd": "inform_datalogging_list_changed",
                "reqid": None,
                "reference_id": acq.reference_id,
                "action": "delete",
            }
        )

    def _cmd_delete_all_datalogging_acquisition(self, conn: _Conn, req: dict[str, Any]) -> None:
        self.acquisitions.clear()
        self._reply(conn, req)
        self._broadcast(
            {
                "cmd": "inform_datalogging_list_changed",
                "reqid": None,
                "reference_id": None,
                "action": "delete_all",
            }
        )

    # ------------------------------------------------------------------ the device loop

    async def _tick_loop(self) -> None:
        while self._running:
            await asyncio.sleep(self.tick_period)
            try:
                self._tick()
            except Exception:  # keep serving the other clients whatever happens
                logger.exception("fake Scrutiny device loop error")

    def _tick(self) -> None:
        if self.device is not None:
            self.device.tick()
        ops, self._device_ops = self._device_ops, collections.deque()
        for op in ops:
            op()
        if self._reload_requested is not None:
            sfd = self._sfd_by_id(self._reload_requested)
            self._reload_requested = None
            if sfd is not None:
                self._load_sfd(sfd)
                if self.autoload and self.device is None:
                    self._unload_sfd()  # autoload unloads it again when no device is ready
        if self.autoload:
            self._autoload()
        self._datalog_tick()
        now = self._now()
        if now - self._last_poll >= self.poll_period:
            dt = now - self._last_poll if math.isfinite(self._last_poll) else self.poll_period
            self._last_poll = now
            self._poll(now)
            self._flush(dt)

    def _poll(self, now: float) -> None:
        watched: set[str] = set()
        for conn in self._conns.values():
            watched.update(conn.watched)
        if not watched:
            return
        t = self._server_time_us()
        for entry_id in watched:
            entry = self._entries.get(entry_id)
            if entry is None:
                continue
            rate = self._effective_rate(entry_id)
            if rate is not None and now - entry.last_read < 1.0 / rate:
                continue
            entry.last_read = now
            value, raw, reason = self._read_entry(entry)
            if value is None and reason is None:
                continue
            record: dict[str, Any] = {"id": entry.id, "v": value, "t": t}
            if raw is not None:
                record["d"] = base64.b64encode(raw).decode("ascii")
            if reason is not None:
                record["r"] = reason
            group = ("rpv", entry.root.rpvid) if entry.root.kind == "rpv" else "mem"
            for conn in self._conns.values():
                if entry_id in conn.watched:
                    conn.pending.pop(entry_id, None)  # newest value replaces an unsent one
                    conn.pending[entry_id] = (group, record)

    def _flush(self, dt: float) -> None:
        for conn in list(self._conns.values()):
            if not conn.pending or conn.backlog > self.soft_backlog:
                continue
            if conn.throttle is not None:
                conn.budget = min(conn.budget + conn.throttle * dt, conn.throttle + len(conn.pending))
                if conn.budget < len(conn.pending):
                    continue
                conn.budget -= len(conn.pending)
                groups: dict[Any, list[dict[str, Any]]] = {"all": [r for _, r in conn.pending.values()]}
            else:
                groups = {}
                for group, record in conn.pending.values():
                    groups.setdefault(group, []).append(record)
            conn.pending.clear()
            for records in groups.values():
                self._send(
                    conn, {"cmd": "watchable_update", "reqid": None, "updates": records}, droppable=True
                )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: serve until SIGINT/SIGTERM."""
    parser = base_parser("Fake Scrutiny Debugger server (0.16.0 API) with the demo device", 8765)
    parser.add_argument("--no-demo", action="store_true", help="start without the demo device")
    parser.add_argument("--no-test-sfd", action="store_true", help="do not pre-install the test SFD")
    args = parser.parse_args(argv)
    fake = FakeScrutinyServer(
        args.host, args.port, demo=not args.no_demo, install_test_sfd=not args.no_test_sfd
    )
    serve_until_signalled(fake.start, fake.stop, args.log_level)


if __name__ == "__main__":
    main()
