"""A fake EPICS/Phoebus scan server on ``tornado.web``, faithful on the wire.

Facts: protocols/scan-server.md sections 3 (endpoints, XML, errors, simulation, queue, execution)
and 4 (PyScanClient's requests, which this fake must serve unchanged).  Simulated devices hold a
value and a slew rate; a write moves the value toward the target at that rate.  Time runs
``speed`` times faster than the wall clock (``--speed 100`` makes a 5 s Delay take 50 ms), and every
time the fake reports (created, runtime, data times) is on that simulated clock.

Use from tests::

    fake = FakeScanServer(speed=100)
    host, port = await fake.start()
    ...
    await fake.stop()

or run ``python -m fake_servers.scan_server --port 4810 [--speed 10]``.

Known simplifications: no data-log persistence, so no ``Logged`` scans; the texts of ``command``
and of simulation lines follow the server's ``toString()`` forms closely but not character for
character; a Script command runs a Python callable registered with the fake.
"""

from __future__ import annotations

import asyncio
import decimal
import html
import logging
import math
import re
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from katclient.devices.scan.commands import (
    COMPARISONS,
    Command,
    CommandSequence,
    Comment,
    ConfigLog,
    Delay,
    If,
    Include,
    Log,
    Loop,
    Parallel,
    Script,
    Sequence,
    Set,
    Wait,
    addressed,
    comparison_name,
    parse_commands,
)
from katclient.devices.scan.model import ScanXMLError, parse_xml
from katclient.errors import InvalidUsage

__all__ = ["FakeScanServer", "FakeDevice", "java_double", "main"]

logger = logging.getLogger(__name__)

Value = int | float | str
ScriptFunction = Callable[["FakeScanServer", list[str]], None]

#: Version string reported by ``/server/info`` (the Phoebus version the notes describe).
SERVER_VERSION = "4.7.0"
#: Largest request body accepted, in bytes: scans are small XML documents.
MAX_BODY_BYTES = 16 * 1024 * 1024
#: Scans kept; at each submit the oldest *done* scans beyond this are removed (the server's
#: ``log_limit``).  Bounds memory of a long-running fake.
DEFAULT_LOG_LIMIT = 1000
#: Scans that may be not done at once (queued plus running); a submit beyond that fails with 400.
#: The real server has no such limit; the fake bounds its tasks and memory.
MAX_ACTIVE_SCANS = 1000
#: Samples a scan may log; beyond that the scan fails.  Bounds memory per scan.
MAX_SAMPLES_PER_SCAN = 200_000
#: Lines of one simulation log; beyond that the simulation stops with an ERROR line.
MAX_SIMULATION_LINES = 100_000
#: Include nesting accepted at submit (guards include cycles).
MAX_INCLUDE_DEPTH = 16
#: Real seconds between checks while waiting for a device condition (the real server uses monitors).
WAIT_POLL_REAL = 0.004
#: Simulated seconds per Delay slice; the server sleeps in 100 ms slices (section 3.10).
DELAY_SLICE = 0.1
#: Slew rate used by the simulation for devices without one, units/s (scan_config.xml default).
DEFAULT_SIM_SLEW = 0.05
#: With completion, the readback must match "right away": within this many simulated seconds.
COMPLETION_READBACK_TIME = 1.0

_JAVA_CLASS = {
    "comment": "CommentCommand", "config_log": "ConfigLogCommand", "delay": "DelayCommand",
    "set": "SetCommand", "wait": "WaitCommand", "log": "LogCommand", "loop": "LoopCommand",
    "parallel": "ParallelCommand", "sequence": "SequenceCommand", "if": "IfCommand",
    "include": "IncludeCommand", "script": "ScriptCommand",
}
_DONE = frozenset({"Aborted", "Failed", "Finished", "Logged"})
_C0 = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")


# --------------------------------------------------------------------------------------------------
# Formatting helpers (Java-like)
# --------------------------------------------------------------------------------------------------


def java_double(x: float) -> str:
    """Format a number as Java's ``Double.toString`` does (``5.0``, ``0.001``, ``1.0E7``, ``1.5E-4``)."""
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    a = abs(x)
    if 1e-3 <= a < 1e7:
        r = repr(x)
        return r if ("." in r or "e" in r) else r + ".0"
    sign, digits, exp = decimal.Decimal(repr(x)).normalize().as_tuple()
    ds = "".join(map(str, digits))
    exponent = len(ds) - 1 + int(exp)
    mantissa = ds[0] + "." + (ds[1:] or "0")
    return f"{'-' if sign else ''}{mantissa}E{exponent}"


def _jvalue(v: Value) -> str:
    """A value as the server prints it: numbers as Java doubles, text in double quotes."""
    return f'"{v}"' if isinstance(v, str) else java_double(v)


def _xml_text(text: str) -> str:
    """Escape text the way the server's writer does (C0 controls become '_', section 3.1)."""
    return html.escape(_C0.sub("_", text), quote=False)


def _hms(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


class _Xml:
    """Tiny indenting XML writer for replies (the server's XMLStreamWriter plus indenting wrapper)."""

    def __init__(self, declaration: bool = True) -> None:
        self.parts: list[str] = ['<?xml version="1.0" encoding="UTF-8"?>\n'] if declaration else []
        self.depth = 0

    def open(self, tag: str, attrs: str = "") -> None:
        self.parts.append(f"{'  ' * self.depth}<{tag}{attrs}>\n")
        self.depth += 1

    def close(self, tag: str) -> None:
        self.depth -= 1
        self.parts.append(f"{'  ' * self.depth}</{tag}>\n")

    def leaf(self, tag: str, text: object) -> None:
        self.parts.append(f"{'  ' * self.depth}<{tag}>{_xml_text(str(text))}</{tag}>\n")

    def text(self) -> str:
        return "".join(self.parts)


# --------------------------------------------------------------------------------------------------
# Devices and clock
# --------------------------------------------------------------------------------------------------


class _Clock:
    """Simulated epoch seconds, running ``speed`` times faster than the monotonic clock."""

    def __init__(self, speed: float) -> None:
        if not speed > 0:
            raise InvalidUsage(f"speed must be > 0, got {speed!r}")
        self.speed = float(speed)
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def now(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0) * self.speed

    def set_speed(self, speed: float) -> None:
        """Change the speed from now on (the simulated clock stays continuous)."""
        if not speed > 0:
            raise InvalidUsage(f"speed must be > 0, got {speed!r}")
        self._wall0, self._mono0 = self.now(), time.monotonic()
        self.speed = float(speed)

    def ms(self) -> int:
        return int(self.now() * 1000)

    def real(self, sim_seconds: float) -> float:
        return max(0.0, sim_seconds) / self.speed


@dataclass
class FakeDevice:
    """A simulated device.

    :param name: device name (also its alias).
    :param value: initial value (number or text).
    :param slew_rate: units per simulated second a write moves the value; None: writes are instant.
    :param follows: name of another device whose value this one reads (a readback, e.g. ``.RBV``).
    """

    name: str
    value: Value = 0.0
    slew_rate: float | None = None
    follows: str | None = None
    _start: float = field(default=0.0, repr=False)
    _t0: float = field(default=0.0, repr=False)
    _t_end: float = field(default=0.0, repr=False)

    def read(self, now: float) -> Value:
        if isinstance(self.value, str) or now >= self._t_end:
            return self.value
        frac = (now - self._t0) / (self._t_end - self._t0)
        return self._start + (float(self.value) - self._start) * frac

    def write(self, value: Value, now: float) -> float:
        """Start moving to ``value``; :returns: the simulated arrival time."""
        current = self.read(now)
        rate = self.slew_rate
        if isinstance(value, str) or isinstance(current, str) or not rate or rate <= 0 or math.isinf(rate):
            self.value, self._t0, self._t_end = value, now, now
            return now
        self._start = float(current)
        self.value = float(value)
        self._t0 = now
        self._t_end = now + abs(float(value) - self._start) / rate
        return self._t_end

    def arrival(self) -> float:
        return self._t_end


def _default_devices() -> list[FakeDevice]:
    return [
        FakeDevice("motor_x", 0.0, slew_rate=1.0),
        FakeDevice("motor_y", 0.0, slew_rate=1.0),
        FakeDevice("motor_x.RBV", 0.0, follows="motor_x"),
        FakeDevice("motor_y.RBV", 0.0, follows="motor_y"),
        FakeDevice("neutrons", 0.0),
        FakeDevice("setpoint", 0.0),
        FakeDevice("readback", 0.0, follows="setpoint"),
        FakeDevice("shutter", "closed"),
    ]


class _CommandError(Exception):
    """A command failed; the message becomes the scan's ``error`` (section 3.4)."""


def _as_number(v: Value) -> float | None:
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return float(v)


def _parse_list(text: str) -> list[Value]:
    inner = text.strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1]
    out: list[Value] = []
    for part in inner.split(","):
        p = part.strip()
        if len(p) >= 2 and p[0] == p[-1] and p[0] in "\"'":
            out.append(p[1:-1])
        elif p:
            n = _as_number(p)
            out.append(p if n is None else n)
    return out


def _compare(current: Value, comparison: str, desired: Value, tolerance: float, start: Value) -> bool:
    """Evaluate a Wait/If condition (section 3.10)."""
    if comparison in ("IN", "NOT_IN"):
        items = _parse_list(str(desired))
        cur = _as_number(current)
        hit = any((cur is not None and _as_number(i) == cur) or i == current for i in items)
        return hit if comparison == "IN" else not hit
    c, d = _as_number(current), _as_number(desired)
    if c is None or d is None:
        if comparison == "EQUALS":
            return str(current) == str(desired)
        if comparison == "UNEQUAL":
            return str(current) != str(desired)
        return False
    if comparison == "EQUALS":
        return abs(c - d) <= tolerance
    if comparison == "UNEQUAL":
        return abs(c - d) > tolerance
    if comparison == "ABOVE":
        return c > d
    if comparison == "AT_LEAST":
        return c >= d
    if comparison == "BELOW":
        return c < d
    if comparison == "AT_MOST":
        return c <= d
    s = _as_number(start) or 0.0
    if comparison == "INCREASE_BY":
        return c >= s + d
    if comparison == "DECREASE_BY":
        return c <= s - d
    return False


def _loop_values(loop: Loop, reverse_now: bool) -> list[float]:
    start, end, step = float(loop.start), float(loop.end), float(loop.step)
    lo, hi = min(start, end), max(start, end)
    n = int(math.ceil(abs(end - start) / abs(step) - 1e-9)) + 1 if step else 1
    ascending = step > 0
    reversing = (step > 0) != (end >= start) and start != end
    if reversing:
        ascending = (end >= start) != reverse_now
    vals = []
    for i in range(n):
        v = (lo + i * abs(step)) if ascending else (hi - i * abs(step))
        vals.append(min(hi, max(lo, v)))
    return vals


def _loop_steps(loop: Loop) -> int:
    if loop.step == 0:
        return 1
    return int(math.ceil(abs(float(loop.end) - float(loop.start)) / abs(float(loop.step)) - 1e-9)) + 1


# --------------------------------------------------------------------------------------------------
# Command descriptions (the server's toString forms)
# --------------------------------------------------------------------------------------------------


def _condition_detail(cmd: Set | Loop) -> str:
    text = ""
    if cmd.completion:
        text += " with completion"
        if cmd.timeout > 0:
            text += f" in {java_double(cmd.timeout)} sec"
    if cmd.wait:
        text += " (check for '" if cmd.completion else " (wait for '"
        text += cmd.device if cmd.readback is True else str(cmd.readback)
        text += "'"
        if isinstance(cmd, Set) and cmd.readback_value is not None:
            text += f" = {_jvalue(cmd.readback_value)}"
        if cmd.tolerance > 0:
            text += f" +-{java_double(cmd.tolerance)}"
        if cmd.timeout > 0 and not cmd.completion:
            text += f", {java_double(cmd.timeout)} sec timeout"
        text += ")"
    return text


def describe(cmd: Command) -> str:
    """The command's text as the server shows it in ``<command>`` and simulation lines."""
    if isinstance(cmd, Comment):
        return f"Comment '{cmd.text}'"
    if isinstance(cmd, ConfigLog):
        return f"Configure Log: automatic={'true' if cmd.automatic else 'false'}"
    if isinstance(cmd, Delay):
        return f"Delay {java_double(cmd.seconds)} sec"
    if isinstance(cmd, Set):
        return f"Set '{cmd.device}' = {_jvalue(cmd.value)}{_condition_detail(cmd)}"
    if isinstance(cmd, Wait):
        text = f"Wait for '{cmd.device}' {_cmp_label(cmd.comparison)} {_jvalue(cmd.value)}"
        if cmd.comparison == "EQUALS":
            text += f" (+-{java_double(cmd.tolerance or 0.1)})"
        if cmd.timeout > 0:
            text += f" ({java_double(cmd.timeout)} sec timeout)"
        return text
    if isinstance(cmd, Log):
        return "Log " + ", ".join(f"'{d}'" for d in cmd.devices)
    if isinstance(cmd, Loop):
        return (f"Loop '{cmd.device}' = {java_double(cmd.start)} ... {java_double(cmd.end)}, "
                f"step {java_double(cmd.step)}{_condition_detail(cmd)}")
    if isinstance(cmd, Parallel):
        return "Parallel" + (f" (timeout {java_double(cmd.timeout)} sec)" if cmd.timeout > 0 else "")
    if isinstance(cmd, Sequence):
        return "Sequence"
    if isinstance(cmd, If):
        text = f"If '{cmd.device}' {_cmp_label(cmd.comparison)} {_jvalue(cmd.value)}"
        if cmd.comparison == "EQUALS":
            text += f" (+-{java_double(cmd.tolerance)})"
        return text
    if isinstance(cmd, Include):
        return f"Include '{cmd.scan_file}'" + (f" ({cmd.macros})" if cmd.macros else "")
    if isinstance(cmd, Script):
        args = ", ".join(f"'{a}'" for a in cmd.arguments)
        return f"Script '{cmd.script}'" + (f" ({args})" if args else "")
    return type(cmd).__name__


def _cmp_label(name: str) -> str:
    return {"INCREASE_BY": "to increase by", "DECREASE_BY": "to decrease by"}.get(name, COMPARISONS[name])


# --------------------------------------------------------------------------------------------------
# The server's own command XML (GET /scan/{id}/commands): Java addXMLElements forms
# --------------------------------------------------------------------------------------------------


def _server_command_xml(w: _Xml, cmd: Command) -> None:
    w.open(cmd.tag)
    if isinstance(cmd, Comment):
        w.leaf("text", cmd.text)
    elif isinstance(cmd, ConfigLog):
        w.leaf("automatic", "true" if cmd.automatic else "false")
    elif isinstance(cmd, Delay):
        w.leaf("seconds", java_double(cmd.seconds))
    elif isinstance(cmd, (Set, Loop)):
        w.leaf("device", cmd.device)
        if isinstance(cmd, Set):
            w.leaf("value", _jvalue(cmd.value))
        else:
            w.leaf("start", java_double(cmd.start))
            w.leaf("end", java_double(cmd.end))
            w.leaf("step", java_double(cmd.step))
        if cmd.completion:
            w.leaf("completion", "true")
        if not cmd.wait:
            w.leaf("wait", "false")
        else:
            w.leaf("readback", cmd.device if cmd.readback is True else str(cmd.readback))
            if isinstance(cmd, Set) and cmd.readback_value is not None:
                w.leaf("readback_value", _jvalue(cmd.readback_value))
        tolerance = cmd.tolerance if cmd.wait else 0.1  # readXML's default when none was sent
        if tolerance > 0:
            w.leaf("tolerance", java_double(tolerance))
        if cmd.timeout > 0:
            w.leaf("timeout", java_double(cmd.timeout))
        if isinstance(cmd, Loop):
            _server_body_xml(w, cmd.body)
    elif isinstance(cmd, Wait):
        w.leaf("device", cmd.device)
        w.leaf("value", str(cmd.value) if cmd.comparison in ("IN", "NOT_IN") else _jvalue(cmd.value))
        w.leaf("comparison", cmd.comparison)
        w.leaf("tolerance", java_double(cmd.tolerance if cmd.tolerance > 0 else 0.1))
        if cmd.timeout > 0:
            w.leaf("timeout", java_double(cmd.timeout))
    elif isinstance(cmd, Log):
        w.open("devices")
        for d in cmd.devices:
            w.leaf("device", d)
        w.close("devices")
    elif isinstance(cmd, Parallel):
        if cmd.timeout > 0:
            w.leaf("timeout", java_double(cmd.timeout))
        _server_body_xml(w, cmd.body)
    elif isinstance(cmd, Sequence):
        _server_body_xml(w, cmd.body)
    elif isinstance(cmd, If):
        w.leaf("device", cmd.device)
        w.leaf("comparison", cmd.comparison)
        w.leaf("value", str(cmd.value) if cmd.comparison in ("IN", "NOT_IN") else _jvalue(cmd.value))
        w.leaf("tolerance", java_double(cmd.tolerance))
        _server_body_xml(w, cmd.body)
    elif isinstance(cmd, Include):
        w.leaf("scan_file", cmd.scan_file)
        w.leaf("macros", cmd.macros)
    elif isinstance(cmd, Script):
        w.leaf("path", cmd.script)
        w.open("arguments")
        for a in cmd.arguments:
            w.leaf("argument", a)
        w.close("arguments")
    if cmd.errhandler:
        w.leaf("error_handler", cmd.errhandler)
    w.close(cmd.tag)


def _server_body_xml(w: _Xml, body: Iterable[Command]) -> None:
    body = list(body)
    if not body:
        w.parts.append(f"{'  ' * w.depth}<body/>\n")
        return
    w.open("body")
    for c in body:
        _server_command_xml(w, c)
    w.close("body")


def server_commands_xml(commands: Iterable[Command]) -> str:
    """The ``<commands>`` document as the server re-serialises it (no declaration, indented)."""
    w = _Xml(declaration=False)
    w.open("commands")
    for c in commands:
        _server_command_xml(w, c)
    w.close("commands")
    return w.text()


# --------------------------------------------------------------------------------------------------
# Scans
# --------------------------------------------------------------------------------------------------


class _Aborted(Exception):
    pass


@dataclass
class _Active:
    address: int
    cmd: Command
    next_evt: asyncio.Event
    text: Callable[[], str]


@dataclass
class _Scan:
    id: int
    name: str
    created: int
    commands: CommandSequence
    includes: dict[int, CommandSequence]
    queued: bool
    pre_post: bool
    timeout: int
    deadline: float | None
    total: int
    state: str = "Idle"
    error: str | None = None
    performed: int = 0
    start: float | None = None
    end: float | None = None
    finish_estimate: float | None = None
    auto_log: bool = False
    serial: int = -1
    samples: list[tuple[int, str, int, Value]] = field(default_factory=list)
    active: list[_Active] = field(default_factory=list)
    permit: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    watchdog: asyncio.TimerHandle | None = None
    addresses: dict[int, int] = field(default_factory=dict)
    reverse_loops: dict[int, bool] = field(default_factory=dict)
    devices_used: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.state in _DONE


def _work_units(cmds: Iterable[Command], includes: Mapping[int, CommandSequence]) -> int:
    total = 0
    for c in cmds:
        if isinstance(c, Loop):
            body = _work_units(c.body, includes)
            total += _loop_steps(c) * (body if c.body else 1)
        elif isinstance(c, (Parallel, Sequence)):
            total += 1 + _work_units(c.body, includes)
        elif isinstance(c, If):
            total += _work_units(c.body, includes)
        elif isinstance(c, Include):
            total += _work_units(includes.get(id(c), ()), includes)
        else:
            total += 1
    return total


def _devices_of(cmds: Iterable[Command], includes: Mapping[int, CommandSequence], out: list[str]) -> None:
    for c in cmds:
        names: list[str] = []
        if isinstance(c, (Set, Loop)):
            names = [c.device] + ([str(c.readback)] if isinstance(c.readback, str) else [])
        elif isinstance(c, (Wait, If)):
            names = [c.device]
        elif isinstance(c, Log):
            names = list(c.devices)
        for n in names:
            if n and n not in out:
                out.append(n)
        if isinstance(c, Include):
            _devices_of(includes.get(id(c), ()), includes, out)
        _devices_of(c.body, includes, out)


class _SubmitError(Exception):
    """Submit/simulate failure: becomes the 400 ``<error>`` reply (section 3.6 item 1)."""


class _HttpError(tornado.web.HTTPError):
    """An error that becomes Jetty's HTML error page (section 3.6 item 2)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------------------------------
# The fake server
# --------------------------------------------------------------------------------------------------


class FakeScanServer:
    """A fake scan server (protocols/scan-server.md 3 and 4).

    :param host: address to bind (loopback by default).
    :param port: TCP port; 0 picks a free one.
    :param speed: simulated seconds per real second (> 0); 100 makes tests fast.
    :param devices: the simulated devices (default: motors ``motor_x``/``motor_y`` at 1 unit/s
        with ``.RBV`` readbacks, ``neutrons``, ``setpoint``/``readback`` and ``shutter``).
    :param auto_create: create an unknown device (value 0, instant) on first use; if False, using
        one fails the scan with "Device 'x' not connected".
    :param pre_scan: commands run before each scan with ``pre_post`` (not addressed, not counted).
    :param post_scan: commands run after each scan with ``pre_post``, even after abort/failure.
    :param include_files: scan files for ``Include``, name -> ``<commands>`` XML (``$(macro)``
        in it is replaced by the Include's macros).
    :param scripts: Script classes, name -> ``fn(server, arguments)``; an unknown one fails submit.
    :param log_limit: done scans kept (oldest removed at submit).
    :param reject_encoded_slash: answer a ``%2F`` in a scan path with 400 "Ambiguous URI path
        separator", as Jetty 11's default URI compliance is expected to (section 3.6).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        speed: float = 1.0,
        devices: Iterable[FakeDevice] | None = None,
        auto_create: bool = True,
        pre_scan: SequenceABC[Command] = (Comment("Pre-scan"),),
        post_scan: SequenceABC[Command] = (Comment("Post-scan"),),
        include_files: Mapping[str, str] | None = None,
        scripts: Mapping[str, ScriptFunction] | None = None,
        log_limit: int = DEFAULT_LOG_LIMIT,
        reject_encoded_slash: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.clock = _Clock(speed)
        self.devices: dict[str, FakeDevice] = {d.name: d for d in (devices if devices is not None
                                                                    else _default_devices())}
        self.auto_create = auto_create
        self.pre_scan = list(pre_scan)
        self.post_scan = list(post_scan)
        self.include_files = dict(include_files or {})
        self.scripts = dict(scripts or {})
        self.log_limit = log_limit
        self.reject_encoded_slash = reject_encoded_slash
        self.start_time = self.clock.ms()
        self.scans: OrderedDict[int, _Scan] = OrderedDict()
        self._next_id = 1
        self._queue: list[_Scan] = []
        self._queue_changed: asyncio.Event | None = None  # created in start(), inside the loop
        self._worker: asyncio.Task[None] | None = None
        self._server: HTTPServer | None = None
        #: Set when ``GET /server/shutdown`` was requested.
        self.shutdown_requested: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> tuple[str, int]:
        """Start serving; :returns: the bound ``(host, port)``."""
        self._queue_changed = asyncio.Event()
        self.shutdown_requested = asyncio.Event()
        app = tornado.web.Application(
            [
                (r"/server(/.*)?", _ServerHandler, {"fake": self}),
                (r"/scans(/.*)?", _ScansHandler, {"fake": self}),
                (r"/scan(/.*)?", _ScanHandler, {"fake": self}),
                (r"/simulate(/.*)?", _SimulateHandler, {"fake": self}),
            ],
            default_handler_class=_NotFoundHandler,
            default_handler_args={"fake": self},
            log_function=_log_request,
            compress_response=False,
        )
        sockets = bind_sockets(self.port, self.host)
        self._server = HTTPServer(app, max_body_size=MAX_BODY_BYTES, idle_connection_timeout=60)
        self._server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self._worker = asyncio.get_running_loop().create_task(self._queue_worker())
        return self.host, self.port

    async def stop(self) -> None:
        """Stop serving and cancel every scan task."""
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._server = None
        tasks = [t for t in [self._worker, *(s.task for s in self.scans.values())] if t is not None]
        for s in self.scans.values():
            if s.watchdog is not None:
                s.watchdog.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._worker = None

    def set_speed(self, speed: float) -> None:
        """Change how many simulated seconds pass per real second (sleeps already begun keep theirs)."""
        self.clock.set_speed(speed)

    # ------------------------------------------------------------------ devices
    def device(self, name: str) -> FakeDevice:
        """:returns: the device ``name`` (created if ``auto_create``).  :raises _CommandError: unknown."""
        dev = self.devices.get(name)
        if dev is None:
            if not self.auto_create:
                raise _CommandError(f"Device '{name}' not connected")
            dev = self.devices[name] = FakeDevice(name, 0.0)
        return dev

    def read(self, name: str) -> Value:
        """Current value of a device (through ``follows``)."""
        dev = self.device(name)
        if dev.follows:
            return self.device(dev.follows).read(self.clock.now())
        return dev.read(self.clock.now())

    def _target(self, name: str) -> FakeDevice:
        dev = self.device(name)
        return self.device(dev.follows) if dev.follows else dev

    # ------------------------------------------------------------------ submit
    def _resolve_includes(self, cmds: Iterable[Command], out: dict[int, CommandSequence], depth: int = 0) -> None:
        for c in cmds:
            if isinstance(c, Include):
                if depth >= MAX_INCLUDE_DEPTH:
                    raise _SubmitError(f"Include nesting deeper than {MAX_INCLUDE_DEPTH} at '{c.scan_file}'")
                text = self.include_files.get(c.scan_file)
                if text is None:
                    raise _SubmitError(f"Cannot open include file '{c.scan_file}'")
                for item in c.macros.split(","):
                    if "=" in item:
                        k, v = item.split("=", 1)
                        text = text.replace(f"$({k.strip()})", v.strip())
                try:
                    included = parse_commands(text)
                except ScanXMLError as e:
                    raise _SubmitError(f"Error in include file '{c.scan_file}': {e}") from e
                out[id(c)] = included
                self._resolve_includes(included, out, depth + 1)
            elif isinstance(c, Script) and c.script not in self.scripts:
                raise _SubmitError(f"Cannot load script class '{c.script}'")
            self._resolve_includes(c.body, out, depth)

    def _implement(self, body: bytes) -> tuple[CommandSequence, dict[int, CommandSequence]]:
        try:
            cmds = parse_commands(body)
        except ScanXMLError as e:
            raise _SubmitError(str(e)) from e
        includes: dict[int, CommandSequence] = {}
        self._resolve_includes(cmds, includes)
        return cmds, includes

    def submit(self, name: str, body: bytes, queue: bool, pre_post: bool, timeout: int,
               deadline: float | None) -> int:
        """Create a scan (section 3.3/3.9); :returns: its id.  :raises _SubmitError: bad commands."""
        cmds, includes = self._implement(body)
        active = sum(1 for s in self.scans.values() if not s.done)
        if active >= MAX_ACTIVE_SCANS:
            raise _SubmitError(f"Too many active scans ({active})")
        self._cull()
        scan = _Scan(id=self._next_id, name=name, created=self.clock.ms(), commands=cmds, includes=includes,
                     queued=queue, pre_post=pre_post, timeout=timeout, deadline=deadline,
                     total=_work_units(cmds, includes))
        self._next_id += 1
        scan.addresses = {id(c): a for a, c in addressed(cmds)}
        _devices_of(cmds, includes, scan.devices_used)
        scan.permit.set()
        self.scans[scan.id] = scan
        if queue:
            self._queue.append(scan)
            if self._queue_changed is not None:
                self._queue_changed.set()
        else:
            scan.task = asyncio.get_running_loop().create_task(self._execute(scan))
        logger.info("Submitted scan %d '%s' (queue=%s)", scan.id, name, queue)
        return scan.id

    def _cull(self) -> None:
        done = [s for s in self.scans.values() if s.done]
        excess = len(self.scans) - self.log_limit + 1
        for s in done[:max(0, excess)]:
            del self.scans[s.id]

    # ------------------------------------------------------------------ queue and execution
    async def _queue_worker(self) -> None:
        """The single "QueueHandler": runs the oldest Idle queued scan, one at a time (section 3.9)."""
        changed = self._queue_changed
        if changed is None:  # pragma: no cover - start() creates it first
            return
        while True:
            while not self._queue:
                changed.clear()
                await changed.wait()
            scan = self._queue.pop(0)
            if scan.done:  # aborted while Idle: passes through the queue and never runs
                continue
            scan.task = asyncio.get_running_loop().create_task(self._execute(scan))
            await asyncio.wait([scan.task])  # never raises for the scan's own outcome

    async def _execute(self, scan: _Scan) -> None:
        now = self.clock.now()
        if scan.deadline is not None and now >= scan.deadline:
            self._finish(scan, "Aborted", "Aborted (stale deadline)")
            return
        if scan.done:
            return
        scan.state = "Running"
        scan.start = now
        limit = None
        if scan.timeout > 0:
            limit = float(scan.timeout)
        elif scan.deadline is not None:
            limit = scan.deadline - now
        if limit is not None:
            scan.watchdog = asyncio.get_running_loop().call_later(
                self.clock.real(limit), self._abort, scan, "Aborted (deadline/timeout)")
        try:
            if scan.pre_post and self.pre_scan:
                await self._run_list(scan, self.pre_scan, addressed=False)
                scan.performed = 0
            await self._run_list(scan, scan.commands.commands, addressed=True)
            if scan.state in ("Running", "Paused"):
                scan.state = "Finished"
        except asyncio.CancelledError:
            if scan.state != "Aborted":
                raise  # the fake is stopping
            _uncancel()
        except _Aborted:
            pass
        except _CommandError as e:
            if scan.state != "Aborted":
                scan.state = "Failed"
                scan.error = str(e)
        except Exception as e:  # a bug or bad data: fail the scan, keep serving
            logger.exception("Scan %d failed unexpectedly", scan.id)
            scan.state = "Failed"
            scan.error = f"{type(e).__name__}: {e}"
        finally:
            if scan.watchdog is not None:
                scan.watchdog.cancel()
                scan.watchdog = None
        if scan.pre_post and self.post_scan:
            final = scan.state
            scan.state = "Running"
            scan.active.clear()
            scan.permit.set()
            try:
                await self._run_list(scan, self.post_scan, addressed=False)
            except asyncio.CancelledError:
                scan.state = final
                raise
            except Exception as e:
                logger.warning("Post-scan of scan %d failed: %s", scan.id, e)
            scan.state = final
        self._finish(scan, scan.state if scan.state in _DONE else "Failed", scan.error)

    def _finish(self, scan: _Scan, state: str, error: str | None) -> None:
        scan.state = state
        scan.error = error
        scan.end = self.clock.now()
        if scan.start is None:
            scan.start = scan.end
        scan.performed = scan.total
        scan.active.clear()
        scan.permit.set()

    def _abort(self, scan: _Scan, error: str = "Aborted") -> None:
        if scan.done:
            return
        if scan.state == "Idle":
            self._finish(scan, "Aborted", error)
            return
        scan.state = "Aborted"
        scan.error = error
        scan.permit.set()
        if scan.task is not None and not scan.task.done():
            scan.task.cancel()

    # ------------------------------------------------------------------ commands
    async def _checkpoint(self, scan: _Scan) -> None:
        """Pause point before each command (pausing is cooperative, section 3.9)."""
        if scan.state == "Aborted":
            raise _Aborted()
        if not scan.permit.is_set():
            await scan.permit.wait()
        if scan.state == "Aborted":
            raise _Aborted()

    async def _run_list(self, scan: _Scan, cmds: Iterable[Command], addressed: bool) -> None:
        for c in cmds:
            await self._run(scan, c, addressed)

    async def _run(self, scan: _Scan, cmd: Command, addressed: bool) -> None:
        await self._checkpoint(scan)
        address = scan.addresses.get(id(cmd), -1) if addressed else -1
        entry = _Active(address, cmd, asyncio.Event(), lambda: describe(cmd))
        scan.active.append(entry)
        try:
            await self._dispatch(scan, cmd, entry, addressed)
        finally:
            if scan.active and scan.active[-1] is entry:
                scan.active.pop()
            elif entry in scan.active:
                scan.active.remove(entry)

    def _credit(self, scan: _Scan, units: int = 1) -> None:
        scan.performed = min(scan.total, scan.performed + units)
        if scan.start is not None and scan.performed > 0 and scan.total > 0:
            runtime = self.clock.now() - scan.start
            estimate = scan.start + runtime * scan.total / scan.performed
            prev = scan.finish_estimate
            scan.finish_estimate = estimate if prev is None else (4 * prev + estimate) / 5

    def _log_value(self, scan: _Scan, names: list[str], serial: int | None = None) -> None:
        if serial is None:
            scan.serial += 1
            serial = scan.serial
        t = self.clock.ms()
        for n in names:
            if len(scan.samples) >= MAX_SAMPLES_PER_SCAN:
                raise _CommandError(f"Data log full ({MAX_SAMPLES_PER_SCAN} samples)")
            scan.samples.append((serial, n, t, self.read(n)))

    async def _sleep(self, sim_seconds: float) -> None:
        await asyncio.sleep(self.clock.real(sim_seconds))

    async def _wait_for(self, cond: Callable[[], bool], timeout: float, entry: _Active | None) -> bool:
        """Wait until ``cond()`` (or ``next``); :returns: False if ``timeout`` sim seconds passed first."""
        end = None if timeout <= 0 else self.clock.now() + timeout
        while True:
            if cond():
                return True
            if entry is not None and entry.next_evt.is_set():
                return True  # 'next': the caller clears the flag
            step = WAIT_POLL_REAL
            if end is not None:
                left = end - self.clock.now()
                if left <= 0:
                    return cond()
                step = min(step, self.clock.real(left))
            await asyncio.sleep(step)

    async def _dispatch(self, scan: _Scan, cmd: Command, entry: _Active, addressed: bool) -> None:
        if isinstance(cmd, Comment):
            logger.info("Scan %d: %s", scan.id, cmd.text)
            self._credit(scan)
        elif isinstance(cmd, ConfigLog):
            scan.auto_log = cmd.automatic
            self._credit(scan)
        elif isinstance(cmd, Delay):
            await self._delay(scan, cmd, entry)
            self._credit(scan)
        elif isinstance(cmd, Set):
            await self._write(scan, cmd.device, cmd.value, cmd.completion, cmd.wait, cmd.readback,
                              cmd.readback_value, cmd.tolerance, cmd.timeout, entry)
            self._credit(scan)
        elif isinstance(cmd, Wait):
            await self._wait(cmd, entry)
            self._credit(scan)
        elif isinstance(cmd, Log):
            self._log_value(scan, list(cmd.devices))
            self._credit(scan)
        elif isinstance(cmd, Loop):
            await self._loop(scan, cmd, entry, addressed)
        elif isinstance(cmd, Parallel):
            await self._parallel(scan, cmd, addressed)
            self._credit(scan)
        elif isinstance(cmd, Sequence):
            await self._run_list(scan, cmd.body, addressed)
            self._credit(scan)
        elif isinstance(cmd, If):
            current = self.read(cmd.device)
            if _compare(current, cmd.comparison, cmd.value, cmd.tolerance, current):
                await self._run_list(scan, cmd.body, addressed)
        elif isinstance(cmd, Include):
            await self._run_list(scan, scan.includes.get(id(cmd), CommandSequence()), False)
        elif isinstance(cmd, Script):
            try:
                self.scripts[cmd.script](self, list(cmd.arguments))
            except _CommandError:
                raise
            except Exception as e:
                raise _CommandError(f"Script '{cmd.script}' failed: {e}") from e
            self._credit(scan)

    async def _delay(self, scan: _Scan, cmd: Delay, entry: _Active) -> None:
        remaining = float(cmd.seconds)
        entry.text = lambda: f"Delay {java_double(cmd.seconds)} sec. Remaining: {_hms(math.ceil(remaining))}"
        while remaining > 0:
            if entry.next_evt.is_set():
                entry.next_evt.clear()
                return
            slice_ = min(remaining, DELAY_SLICE)
            t0 = self.clock.now()
            try:
                await asyncio.wait_for(entry.next_evt.wait(), self.clock.real(slice_))
            except asyncio.TimeoutError:
                pass
            remaining -= self.clock.now() - t0
            if not scan.permit.is_set():  # paused: the remaining time is frozen
                await scan.permit.wait()
            if scan.state == "Aborted":
                raise _Aborted()

    async def _write(self, scan: _Scan, device: str, value: Value, completion: bool, wait: bool,
                     readback: bool | str, readback_value: Value | None, tolerance: float, timeout: float,
                     entry: _Active | None) -> None:
        """WriteHelper (section 3.10): write, optional completion, optional readback check, auto-log."""
        target = self._target(device)
        rb_name = device if readback is True or readback is False else readback
        self.device(rb_name)
        arrival = target.write(value, self.clock.now())
        desired = value if readback_value is None else readback_value

        def matches() -> bool:
            return _compare(self.read(rb_name), "EQUALS", desired, tolerance, 0.0)

        if completion:
            ok = await self._wait_for(lambda: self.clock.now() >= arrival, timeout, entry)
            if not ok:
                raise _CommandError(f"Timeout while waiting for completion of {device} = {_jvalue(value)}")
            if wait and not await self._wait_for(matches, COMPLETION_READBACK_TIME, None):
                raise _CommandError(f"{rb_name} != {_jvalue(desired)} after completion")
        elif wait:
            if not await self._wait_for(matches, timeout, entry):
                raise _CommandError(f"Timeout while waiting for {rb_name} = {_jvalue(desired)}")
        if entry is not None and isinstance(entry.cmd, Set):
            entry.next_evt.clear()
        if scan.auto_log:
            self._log_value(scan, [rb_name])

    async def _wait(self, cmd: Wait, entry: _Active) -> None:
        start = self.read(cmd.device)
        tolerance = cmd.tolerance if cmd.tolerance > 0 else 0.1

        def holds() -> bool:
            return _compare(self.read(cmd.device), cmd.comparison, cmd.value, tolerance, start)

        ok = await self._wait_for(holds, cmd.timeout, entry)
        entry.next_evt.clear()
        if not ok:
            raise _CommandError(
                f"Timeout while waiting for {cmd.device} {_cmp_label(cmd.comparison)} {_jvalue(cmd.value)}")

    async def _loop(self, scan: _Scan, cmd: Loop, entry: _Active, addressed: bool) -> None:
        reversing = (float(cmd.step) > 0) != (float(cmd.end) >= float(cmd.start)) and cmd.start != cmd.end
        flip = scan.reverse_loops.get(id(cmd), False)
        values = _loop_values(cmd, flip)
        if reversing:
            scan.reverse_loops[id(cmd)] = not flip
        body_units = _work_units(cmd.body, scan.includes)
        tolerance = cmd.tolerance
        def step_text(v: float) -> Callable[[], str]:
            return lambda: f"{describe(cmd)} [{java_double(v)}]"

        for v in values:
            entry.text = step_text(v)
            entry.next_evt.clear()
            await self._write(scan, cmd.device, v, cmd.completion, cmd.wait, cmd.readback, None,
                              tolerance, cmd.timeout, entry)
            if entry.next_evt.is_set():  # 'next' while the loop itself was active: skip this step
                entry.next_evt.clear()
                self._credit(scan, body_units if cmd.body else 1)
                continue
            if cmd.body:
                await self._run_list(scan, cmd.body, addressed)
            else:
                self._credit(scan)

    async def _parallel(self, scan: _Scan, cmd: Parallel, addressed: bool) -> None:
        if not cmd.body:
            return
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self._run(scan, c, addressed)) for c in cmd.body]
        try:
            done, pending = await asyncio.wait(
                tasks, timeout=self.clock.real(cmd.timeout) if cmd.timeout > 0 else None,
                return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                exc = t.exception()
                if isinstance(exc, _CommandError):
                    raise _CommandError(f"{exc} (Parallel)") from exc
                if exc is not None:
                    raise exc
            if pending:
                raise _CommandError(f"Parallel time out ({java_double(cmd.timeout)} sec)")
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ control (PUT)
    def _targets(self, scan_id: int) -> list[_Scan]:
        if scan_id < 0:
            return [s for s in reversed(self.scans.values()) if not s.done]
        scan = self.scans.get(scan_id)
        if scan is None:
            raise _HttpError(400, f"Unknown scan ID {scan_id}")
        return [scan]

    def pause(self, scan_id: int) -> None:
        for s in self._targets(scan_id):
            if s.state == "Running":
                s.state = "Paused"
                s.permit.clear()

    def resume(self, scan_id: int) -> None:
        for s in self._targets(scan_id):
            if s.state == "Paused":
                s.state = "Running"
                s.permit.set()

    def abort(self, scan_id: int) -> None:
        for s in self._targets(scan_id):
            self._abort(s)

    def next(self, scan_id: int) -> None:
        for s in self._targets(scan_id):
            if s.active:
                entry = s.active[-1]
                if isinstance(entry.cmd, (Delay, Wait, Set, Loop)):
                    entry.next_evt.set()
                else:
                    logger.info("Scan %d: %s does not support 'next'", s.id, type(entry.cmd).__name__)

    def move(self, scan_id: int, steps: int) -> None:
        targets = self._targets(scan_id)
        for s in targets:
            if s.state != "Idle" or s not in self._queue:
                logger.info("Cannot move scan %d (state %s)", s.id, s.state)
                continue
            i = self._queue.index(s)
            j = min(len(self._queue) - 1, max(0, i - steps))
            self._queue.insert(j, self._queue.pop(i))

    def patch(self, scan_id: int, body: bytes) -> None:
        scans = self._targets(scan_id)
        try:
            root = parse_xml(body, what="patch")
        except ScanXMLError as e:
            raise _HttpError(400, str(e)) from e
        address_text = root.findtext("address")
        prop = root.findtext("property")
        if prop is None:
            raise _HttpError(400, "Missing <property> for patch")
        value = root.findtext("value") or ""
        try:
            address = int((address_text or "").strip())
        except ValueError:
            raise _HttpError(400, f"Invalid command address {address_text}") from None
        for s in scans:
            cmd = _find_for_patch(s.commands.commands, address)
            if cmd is None:
                raise _HttpError(400, f"Invalid command address {address}")
            try:
                _apply_patch(cmd, prop.strip(), value)
            except (InvalidUsage, ValueError, KeyError):
                raise _HttpError(400, f"Cannot update {prop} of {_JAVA_CLASS[cmd.tag]}") from None

    def delete(self, scan_id: int) -> None:
        scan = self.scans.get(scan_id)
        if scan is None:
            raise _HttpError(400, f"Unknown scan ID {scan_id}")
        if scan.done:
            del self.scans[scan_id]

    def clear(self) -> None:
        for sid in [s.id for s in self.scans.values() if s.done]:
            del self.scans[sid]

    # ------------------------------------------------------------------ replies
    def _scan_info_xml(self, w: _Xml, s: _Scan) -> None:
        now = self.clock.now()
        w.open("scan")
        w.leaf("id", s.id)
        w.leaf("name", s.name)
        w.leaf("created", s.created)
        w.leaf("state", s.state)
        if s.start is None:
            runtime = 0
        elif s.end is not None:
            runtime = int((s.end - s.start) * 1000)
        else:
            runtime = int((now - s.start) * 1000)
        w.leaf("runtime", runtime)
        if s.total > 0:
            w.leaf("total_work_units", s.total)
            w.leaf("performed_work_units", s.performed)
        if s.end is not None and s.state in _DONE:
            w.leaf("finish", int(s.end * 1000))
        elif s.finish_estimate is not None:
            w.leaf("finish", int(s.finish_estimate * 1000))
        if s.done:
            w.leaf("address", -1)
            w.leaf("command", "- end -")
        elif s.active:
            entry = s.active[-1]
            w.leaf("address", entry.address)
            w.leaf("command", entry.text())
        else:
            w.leaf("address", -1)
            w.leaf("command", "")
        if s.error:
            w.leaf("error", s.error)
        w.close("scan")

    def scan_info_xml(self, scan_id: int) -> str:
        scan = self.scans.get(scan_id)
        if scan is None:
            raise _HttpError(500, f"Unknown scan ID {scan_id}")
        w = _Xml()
        self._scan_info_xml(w, scan)
        return w.text()

    def scans_xml(self) -> str:
        w = _Xml()
        w.open("scans")
        for s in reversed(self.scans.values()):
            self._scan_info_xml(w, s)
        w.close("scans")
        return w.text()

    def server_info_xml(self) -> str:
        w = _Xml()
        w.open("server")
        w.leaf("version", SERVER_VERSION)
        w.leaf("start_time", self.start_time)
        w.leaf("scan_config", "file:/fake/scan_config.xml")
        w.leaf("script_paths", "/fake/scripts, /fake/includes")
        w.leaf("macros", "")
        w.leaf("used_mem", 64 * 1024 * 1024)
        w.leaf("max_mem", 1024 * 1024 * 1024)
        w.leaf("non_heap", 32 * 1024 * 1024)
        w.close("server")
        return w.text()

    def data_xml(self, scan: _Scan) -> str:
        by_dev: OrderedDict[str, list[tuple[int, int, Value]]] = OrderedDict()
        for serial, dev, t, v in scan.samples:
            by_dev.setdefault(dev, []).append((serial, t, v))
        w = _Xml()
        w.open("data")
        for dev, samples in by_dev.items():
            w.open("device")
            w.leaf("name", dev)
            w.open("samples")
            for serial, t, v in samples:
                w.open("sample", f' id="{serial}"')
                w.leaf("time", t)
                w.leaf("value", v if isinstance(v, str) else java_double(v))
                w.close("sample")
            w.close("samples")
            w.close("device")
        w.close("data")
        return w.text()

    def devices_xml(self, scan_id: int) -> str:
        if scan_id < 0:
            names = list(self.devices)
        else:
            scan = self.scans.get(scan_id)
            if scan is None:
                raise _HttpError(500, f"Unknown scan ID {scan_id}")
            names = list(scan.devices_used) + [n for n in self.devices if n not in scan.devices_used]
        w = _Xml()
        w.open("devices")
        for n in names:
            w.open("device")
            w.leaf("name", n)
            w.leaf("alias", n)
            dev = self.devices.get(n)
            if dev is None:
                w.leaf("status", "no PV")
            else:
                v = self.read(n)
                w.leaf("status", v if isinstance(v, str) else java_double(v))
            w.close("device")
        w.close("devices")
        return w.text()

    # ------------------------------------------------------------------ simulation
    def simulate(self, body: bytes) -> tuple[str, float]:
        """Dry run (section 3.7): :returns: ``(log text, total seconds)``.  :raises _SubmitError."""
        cmds, includes = self._implement(body)
        sim = _Simulation(self, includes)
        sim.run(cmds)
        return sim.text(), sim.seconds


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()


def _subtree_size(cmd: Command) -> int:
    return 1 + sum(_subtree_size(c) for c in cmd.body)


def _find_for_patch(cmds: list[Command], target: int) -> Command | None:
    """Address lookup as the server does it: only descending into Loop bodies (section 3.10)."""
    address = 0

    def walk(items: list[Command]) -> Command | None:
        nonlocal address
        for c in items:
            if address == target:
                return c
            address += 1
            if isinstance(c, Loop):
                found = walk(c.body)
                if found is not None:
                    return found
            else:
                address += _subtree_size(c) - 1
        return None

    return walk(cmds)


def _pvalue(text: str) -> Value:
    t = text.strip()
    try:
        f = float(t)
    except ValueError:
        return text
    return f if math.isfinite(f) else text


def _pbool(text: str) -> bool:
    return text.strip().lower() == "true"


def _pfloat(text: str) -> float:
    f = float(text.strip())
    if not math.isfinite(f):
        raise ValueError(text)
    return max(0.0, f)


def _apply_patch(cmd: Command, prop: str, text: str) -> None:
    """Set a property by the server's *property id* (section 3.10).  :raises KeyError: unknown."""
    if prop == "error_handler":
        cmd.errhandler = text or None
        return
    if isinstance(cmd, Set):
        if prop == "device_name":
            cmd.device = text
        elif prop == "value":
            cmd.value = _pvalue(text)
        elif prop == "completion":
            cmd.completion = _pbool(text)
        elif prop == "wait":
            cmd.readback = (cmd.readback or True) if _pbool(text) else False
        elif prop == "readback":
            cmd.readback = text if text and text != cmd.device else (True if cmd.wait else False)
        elif prop == "readback_value":
            cmd.readback_value = None if text == "" else _pvalue(text)
        elif prop == "tolerance":
            cmd.tolerance = _pfloat(text)
        elif prop == "timeout":
            cmd.timeout = _pfloat(text)
        else:
            raise KeyError(prop)
    elif isinstance(cmd, Delay) and prop == "seconds":
        cmd.seconds = _pfloat(text)
    elif isinstance(cmd, Comment) and prop == "comment":
        cmd.text = text
    elif isinstance(cmd, (Wait, If)) and (
        prop in ("device_name", "desired_value", "comparison", "tolerance")
        or (isinstance(cmd, Wait) and prop == "timeout")
    ):
        if prop == "device_name":
            cmd.device = text
        elif prop == "desired_value":
            cmd.value = _pvalue(text)
        elif prop == "comparison":
            cmd.comparison = comparison_name(text)
        elif prop == "tolerance":
            cmd.tolerance = _pfloat(text)
        elif isinstance(cmd, Wait):
            cmd.timeout = _pfloat(text)
    elif isinstance(cmd, Loop):
        if prop in ("start", "end"):
            setattr(cmd, prop, float(text))
        elif prop == "step_size":
            step = float(text)
            cmd.step = step if step != 0 else 1.0
            cmd.tolerance = abs(cmd.step) / 10
        elif prop == "device_name":
            cmd.device = text
        elif prop == "completion":
            cmd.completion = _pbool(text)
        elif prop == "wait":
            cmd.readback = (cmd.readback or True) if _pbool(text) else False
        elif prop == "readback":
            cmd.readback = text if text and text != cmd.device else (True if cmd.wait else False)
        elif prop == "tolerance":
            cmd.tolerance = _pfloat(text)
        elif prop == "timeout":
            cmd.timeout = _pfloat(text)
        else:
            raise KeyError(prop)
    elif isinstance(cmd, Log) and prop == "device_names":
        cmd.devices = [d.strip() for d in text.split(",") if d.strip()]
    elif isinstance(cmd, Include) and prop in ("scan_file", "macros"):
        if prop == "scan_file":
            cmd.scan_file = text
        else:
            cmd.macros = text
    elif isinstance(cmd, Script) and prop in ("script", "arguments"):
        if prop == "script":
            cmd.script = text
        else:
            cmd.arguments = [a.strip() for a in text.split(",")] if text else []
    elif isinstance(cmd, ConfigLog) and prop == "automatic":
        cmd.automatic = _pbool(text)
    elif isinstance(cmd, Parallel) and prop == "timeout":
        cmd.timeout = _pfloat(text)
    else:
        raise KeyError(prop)


class _Simulation:
    """The simulation log (section 3.7): cumulative time before each step, added for Parallel."""

    def __init__(self, fake: FakeScanServer, includes: Mapping[int, CommandSequence]) -> None:
        self.fake = fake
        self.includes = includes
        self.values: dict[str, Value] = {}
        self.seconds = 0.0
        self.lines: list[str] = []
        self.truncated = False

    def value(self, name: str) -> Value:
        if name not in self.values:
            dev = self.fake.devices.get(name)
            if dev is None and not self.fake.auto_create:
                self.error(f"Device '{name}' not connected")
                self.values[name] = 0.0
            else:
                self.values[name] = self.fake.read(name) if dev is not None else 0.0
        return self.values[name]

    def slew(self, name: str) -> float:
        dev = self.fake.devices.get(name)
        if dev is not None and dev.follows:
            dev = self.fake.devices.get(dev.follows)
        return dev.slew_rate if dev is not None and dev.slew_rate else DEFAULT_SIM_SLEW

    def line(self, text: str, seconds: float) -> None:
        if len(self.lines) >= MAX_SIMULATION_LINES:
            if not self.truncated:
                self.truncated = True
                self.lines.append(f"ERROR: Simulation stopped after {MAX_SIMULATION_LINES} steps")
            return
        self.lines.append(f"{_hms(self.seconds)} - {text}")
        self.seconds += seconds

    def error(self, text: str) -> None:
        if len(self.lines) < MAX_SIMULATION_LINES:
            self.lines.append(f"ERROR: {text}")

    def set_like(self, device: str, value: Value, wait: bool, text: str) -> None:
        old = self.value(device)
        o, n = _as_number(old), _as_number(value)
        if not wait:
            t = 0.0
        elif o is None or n is None:
            t = 1.0
        else:
            t = abs(n - o) / self.slew(device)
        self.values[device] = value
        self.line(f"{text} [was {_jvalue(old)}]", t)

    def run(self, cmds: Iterable[Command]) -> None:
        for c in cmds:
            if self.truncated:
                return
            if isinstance(c, Delay):
                self.line(describe(c), float(c.seconds))
            elif isinstance(c, Set):
                self.set_like(c.device, c.value, c.wait, describe(c))
            elif isinstance(c, Wait):
                cur, des = _as_number(self.value(c.device)), _as_number(c.value)
                t = 1.0 if cur is None or des is None else abs(des - cur) / self.slew(c.device)
                if c.comparison in ("INCREASE_BY", "DECREASE_BY") and des is not None:
                    t = abs(des) / self.slew(c.device)
                if des is not None and c.comparison not in ("IN", "NOT_IN"):
                    self.values[c.device] = des if c.comparison not in ("INCREASE_BY", "DECREASE_BY") \
                        else (cur or 0.0) + (des if c.comparison == "INCREASE_BY" else -des)
                self.line(describe(c), t)
            elif isinstance(c, Loop):
                for v in _loop_values(c, False):
                    if self.truncated:
                        return
                    self.set_like(c.device, v, True, f"Set '{c.device}' = {java_double(v)}")
                    self.run(c.body)
            elif isinstance(c, Parallel):
                self.line("Start following commands in parallel", 0.0)
                self.run(c.body)
                self.line("Await completion of above commands", 0.0)
            elif isinstance(c, Sequence):
                self.run(c.body)
            elif isinstance(c, If):
                self.line(describe(c), 0.0)
                self.run(c.body)
                self.line("End If", 0.0)
            elif isinstance(c, Include):
                self.line(describe(c), 0.0)
                self.run(self.includes.get(id(c), ()))
            else:
                self.line(describe(c), 0.1)

    def text(self) -> str:
        out = ["Simulation:", "--------", *self.lines, "--------",
               f"{_hms(self.seconds)}   Total estimated execution time"]
        return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------------------


def _log_request(handler: tornado.web.RequestHandler) -> None:
    logger.debug("%d %s %s", handler.get_status(), handler.request.method, handler.request.uri)


_SERVLET = {"_ServerHandler": "ServerServlet", "_ScansHandler": "ScansServlet", "_ScanHandler": "ScanServlet",
            "_SimulateHandler": "SimulateServlet", "_NotFoundHandler": "DefaultServlet"}


class _Base(tornado.web.RequestHandler):
    fake: FakeScanServer

    def initialize(self, fake: FakeScanServer) -> None:
        self.fake = fake

    def set_default_headers(self) -> None:
        self.clear_header("Server")

    def compute_etag(self) -> None:
        return None

    def reply_xml(self, text: str) -> None:
        self.set_header("Content-Type", "text/xml")
        self.finish(text.encode("utf-8"))

    def reply_empty(self) -> None:
        self.set_status(200)
        self.finish()

    def jetty_error(self, status: int, message: str) -> None:
        """Jetty's HTML error page, as ``response.sendError(code, msg)`` produces it."""
        self.clear()
        self.clear_header("Server")
        self.set_status(status)
        self.set_header("Content-Type", "text/html;charset=utf-8")
        msg = html.escape(message, quote=False)
        uri = html.escape(self.request.path, quote=False)
        servlet = _SERVLET.get(type(self).__name__, "ScanServlet")
        self.finish(
            "<html>\n<head>\n<meta http-equiv=\"Content-Type\" content=\"text/html;charset=utf-8\"/>\n"
            f"<title>Error {status} {msg}</title>\n</head>\n<body>\n<h2>HTTP ERROR {status} {msg}</h2>\n"
            f"<table>\n<tr><th>URI:</th><td>{uri}</td></tr>\n<tr><th>STATUS:</th><td>{status}</td></tr>\n"
            f"<tr><th>MESSAGE:</th><td>{msg}</td></tr>\n<tr><th>SERVLET:</th><td>{servlet}</td></tr>\n"
            "</table>\n\n</body>\n</html>\n"
        )

    def submit_error(self, message: str, reason: str) -> None:
        """The 400 ``<error>`` reply of submit/simulate (section 3.6 item 1)."""
        trace = (f"java.lang.Exception: {reason}\n\tat org.csstudio.scan.server.internal.ScanServerImpl"
                 ".submitScan(ScanServerImpl.java:218)\n\tat org.csstudio.scan.server.httpd.ScanServlet"
                 ".doPost(ScanServlet.java:101)\n")
        self.clear()
        self.set_status(400)
        self.set_header("Content-Type", "text/xml")
        self.finish(f"<error><message>{_xml_text(message)}</message><trace>{_xml_text(trace)}</trace></error>\n")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, _HttpError):
            self.jetty_error(exc.status, exc.message)
        else:
            self.jetty_error(status_code, self._reason if status_code != 500 else "Server Error")

    def check_xml_content(self) -> None:
        ctype = self.request.headers.get("Content-Type")
        if ctype is None:  # the real server throws a NullPointerException
            raise _HttpError(500, "java.lang.NullPointerException")
        if "/xml" not in ctype:
            raise _HttpError(400, f"Expecting XML content with scan, got format '{ctype}'")


class _NotFoundHandler(_Base):
    def prepare(self) -> None:
        raise _HttpError(404, "Not Found")


class _ServerHandler(_Base):
    def get(self, rest: str | None) -> None:
        if rest == "/info":
            self.reply_xml(self.fake.server_info_xml())
        elif rest == "/shutdown":
            self.reply_xml("<bye/>\n")
            if self.fake.shutdown_requested is not None:
                self.fake.shutdown_requested.set()
        else:
            raise _HttpError(400, f"Invalid request /server{rest or ''}")


class _ScansHandler(_Base):
    def get(self, rest: str | None) -> None:
        if rest not in (None, "", "/"):
            raise _HttpError(400, f"Illegal path '/scans{rest}'")
        self.reply_xml(self.fake.scans_xml())

    def delete(self, rest: str | None) -> None:
        if rest != "/completed":
            raise _HttpError(400, f"Illegal path '/scans{rest or ''}'")
        self.fake.clear()
        self.reply_empty()


def _parse_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _HttpError(400, f"Cannot parse path element '{text}'") from None


class _ScanHandler(_Base):
    def _elements(self, rest: str | None) -> list[str]:
        return [p for p in (rest or "").split("/") if p]  # tornado already decoded ``rest``

    def get(self, rest: str | None) -> None:
        parts = self._elements(rest)
        if not parts:
            raise _HttpError(400, "Missing scan ID")
        scan_id = _parse_id(parts[0])
        if len(parts) == 1:
            self.reply_xml(self.fake.scan_info_xml(scan_id))
            return
        what = parts[1]
        if what == "devices":
            self.reply_xml(self.fake.devices_xml(scan_id))
            return
        scan = self.fake.scans.get(scan_id)
        if scan is None:
            raise _HttpError(500, f"Unknown scan ID {scan_id}")
        if what == "commands":
            self.reply_xml(server_commands_xml(scan.commands))
        elif what == "data":
            self.reply_xml(self.fake.data_xml(scan))
        elif what == "last_serial":
            self.reply_xml(f"<serial>{scan.serial}</serial>")
        else:
            raise _HttpError(500, f"Unknown request object {what}")

    def post(self, rest: str | None) -> None:
        raw = self.request.path[len("/scan"):]  # still percent-encoded (tornado decodes ``rest``)
        if self.fake.reject_encoded_slash and re.search(r"%2[fF]", raw):
            raise _HttpError(400, "Ambiguous URI path separator")
        name = urllib.parse.unquote(raw[1:]) if raw.startswith("/") else ""
        if not name:
            name = f"Scan from {self.request.remote_ip}"
        self.check_xml_content()
        args = {k: v[-1].decode("utf-8", "replace") for k, v in self.request.query_arguments.items()}
        queue = args.get("queue", "").lower() != "false"
        pre_post = args.get("pre_post", "").lower() != "false"
        timeout = 0
        if "timeout" in args:
            t = args["timeout"]
            if not re.fullmatch(r"\d+", t.strip()):
                raise _HttpError(400, f"Invalid timeout '{t}'")
            timeout = int(t)
        deadline = None
        if "deadline" in args:
            d = args["deadline"]
            if d.strip() != "0000-00-00 00:00:00":
                try:
                    deadline = time.mktime(time.strptime(d.strip(), "%Y-%m-%d %H:%M:%S"))
                except (ValueError, OverflowError):
                    raise _HttpError(400, f"Invalid deadline '{d}'") from None
        if timeout > 0 and deadline is not None:
            raise _HttpError(400, "Cannot specify both timeout and deadline")
        try:
            scan_id = self.fake.submit(name, self.request.body, queue, pre_post, timeout, deadline)
        except _SubmitError as e:
            self.submit_error(f"{name} failed to submit", str(e))
            return
        self.reply_xml(f"<id>{scan_id}</id>\n")

    def put(self, rest: str | None) -> None:
        parts = self._elements(rest)
        if len(parts) < 2:
            raise _HttpError(400, "Missing scan ID and command")
        scan_id = _parse_id(parts[0])
        command = parts[1]
        fake = self.fake
        if command == "pause":
            fake.pause(scan_id)
        elif command == "resume":
            fake.resume(scan_id)
        elif command == "abort":
            fake.abort(scan_id)
        elif command == "next":
            fake.next(scan_id)
        elif command == "move":
            if len(parts) < 3:
                raise _HttpError(400, "Missing steps for move")
            fake.move(scan_id, _parse_id(parts[2]))
        elif command == "patch":
            fake.patch(scan_id, self.request.body)
        else:
            raise _HttpError(400, f"Unknown command '{command}'")
        self.reply_empty()

    def delete(self, rest: str | None) -> None:
        parts = self._elements(rest)
        if not parts:
            raise _HttpError(400, "Missing scan ID")
        self.fake.delete(_parse_id(parts[0]))
        self.reply_empty()


class _SimulateHandler(_Base):
    def post(self, rest: str | None) -> None:
        self.check_xml_content()
        try:
            log, seconds = self.fake.simulate(self.request.body)
        except _SubmitError as e:
            self.submit_error("Failed to simulate", str(e))
            return
        cdata = log.replace("]]>", "]]]]><![CDATA[>")
        self.reply_xml(f"<simulation><log><![CDATA[{cdata}]]></log><seconds>{java_double(seconds)}</seconds>"
                       "</simulation>\n")


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """``python -m fake_servers.scan_server [--host H] [--port P] [--speed S]``."""
    from fake_servers._common import base_parser, serve_until_signalled

    parser = base_parser("Fake EPICS/Phoebus scan server (REST, XML)", default_port=4810)
    parser.add_argument("--speed", type=float, default=1.0,
                        help="simulated seconds per real second (default: %(default)s)")
    parser.add_argument("--strict-devices", action="store_true",
                        help="fail scans that use unknown devices instead of creating them")
    args = parser.parse_args(argv)
    holder: dict[str, FakeScanServer] = {}

    async def start() -> tuple[str, int]:
        fake = FakeScanServer(args.host, args.port, speed=args.speed, auto_create=not args.strict_devices)
        holder["fake"] = fake
        return await fake.start()

    async def stop() -> None:
        await holder["fake"].stop()

    serve_until_signalled(start, stop, args.log_level)


if __name__ == "__main__":
    main()
