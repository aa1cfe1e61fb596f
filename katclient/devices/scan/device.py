"""``ScanDevice``: the EPICS/Phoebus scan server as a virtual KATCP device.

The mapping contract is DESIGN.md section 4 ("Scan server"); the wire facts behind it are
protocols/scan-server.md sections 3 (REST API) and 4 (what PyScanClient users expect).  The REST
client underneath is :class:`~katclient.devices.scan.client.ScanClient`; this module only maps.

Sensors (all mirrored ones turn ``unreachable`` when the server goes away, values kept):

===========================  =========  ==========================================================
name                         type       meaning
===========================  =========  ==========================================================
``server.connected``         boolean    the last poll reached the server (a status sensor)
``server.url``               string     the scan server's base URL (a status sensor)
``server.version``           string     ``<version>`` of ``GET /server/info``
``server.start-time``        timestamp  ``<start_time>`` of ``GET /server/info``, seconds
``active.id``                integer    id of the active scan, -1 when none
``active.name``              string     its name
``active.state``             discrete   ``none`` or its state (see :data:`STATE_VALUES`)
``active.percentage``        integer    its progress, 0..100 %
``active.command``           string     its current command (``toString()`` of the server)
``active.address``           integer    address of that command, -1 between commands
``queue.length``             integer    scans waiting to start (state Idle)
``scan.<id>.state``          discrete   state of each scan the server lists (see below)
``scan.<id>.percentage``     integer    its progress, 0..100 %
``scan.<id>.error``          string     its error text, empty when none
===========================  =========  ==========================================================

The *active* scan is the oldest Running or Paused scan (the queued one, normally; scans submitted
with ``queue=false`` run in parallel, section 3.9).  State values are the server's state names in
lower case (``idle``, ``running``, ``paused``, ``aborted``, ``failed``, ``finished``, ``logged``);
a state this module does not know (Phoebus PR #3622 proposes a new one) reads ``other`` with status
``warn``.  ``failed`` has status ``error`` and ``aborted`` status ``warn``.

The REST API has no push, so a poll loop issues one ``GET /scans`` every ``poll_period`` seconds
(``GET /server/info`` once per (re)connection).  Per-scan sensors appear and disappear with the
scans (one coalesced ``#interface-changed`` per poll).  Requests that change something trigger a
poll at once and reply after it, so the sensors are current when the reply arrives.

Requests: ``scan-submit``, ``scan-simulate``, ``scan-info``, ``scan-list``, ``scan-wait``,
``scan-pause``, ``scan-resume``, ``scan-abort``, ``scan-next``, ``scan-move``, ``scan-patch``,
``scan-delete``, ``scan-clear``, ``scan-data``, ``scan-last-serial``, ``scan-commands``,
``scan-devices`` and ``server-info`` (their ``?help`` texts give the arguments).  Every error of
the server becomes a one-line ``fail`` carrying the server's message.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from katclient.client.backoff import ExponentialRandomBackoff
from katclient.devices.base import VirtualDevice
from katclient.devices.scan.client import DEFAULT_PORT, Commands, ScanClient
from katclient.devices.scan.commands import CommandSequence, parse_commands
from katclient.devices.scan.language import ScanSyntaxError, format_scan, load_scan
from katclient.devices.scan.model import (
    ScanFailedError,
    ScanInfo,
    ScanServerError,
    ScanSubmitError,
    ScanXMLError,
)
from katclient.errors import (
    FailReply,
    InvalidUsage,
    KatclientConnectionError,
    KatclientError,
    KatclientTimeoutError,
)
from katclient.protocol import Status
from katclient.server import RequestContext, Sensor, timeout_hint

__all__ = [
    "ScanDevice",
    "SubmitOptions",
    "CommandsFormat",
    "STATE_VALUES",
    "ACTIVE_STATE_VALUES",
    "DEFAULT_POLL_PERIOD",
    "DEFAULT_HTTP_TIMEOUT",
    "MAX_SCANS_WITH_SENSORS",
    "MAX_DATA_INFORMS",
    "load_commands",
    "parse_submit_options",
    "scan_fields",
    "state_reading",
    "active_scan",
    "one_line",
]

logger = logging.getLogger(__name__)

#: Seconds between two ``GET /scans`` polls.  The server has no push (protocols/scan-server.md
#: 3.2); PyScanClient's ``waitUntilDone`` polls every 1 s, the GUI's scan monitor about as often.
DEFAULT_POLL_PERIOD: Final = 0.5
#: Shortest poll period accepted, in seconds: faster polling only loads the scan server.
MIN_POLL_PERIOD: Final = 0.01
#: Time budget of each HTTP request of the device, in seconds (PyScanClient uses 10-20 s).
DEFAULT_HTTP_TIMEOUT: Final = 10.0
#: Seconds :meth:`ScanDevice.start` waits for the first poll (or its failure) so that a client
#: that connects right after start sees the scans already (``katclient inspect scan://...``).
DEFAULT_STARTUP_WAIT: Final = 5.0
#: Seconds :meth:`ScanDevice.stop` lets a poll in flight finish before cancelling it.
STOP_FETCH_WAIT: Final = 2.0
#: ``?request-timeout-hint`` of the requests that make HTTP calls: the default HTTP budget plus
#: room for the poll that follows a change (seconds).
HTTP_TIMEOUT_HINT: Final = 2 * DEFAULT_HTTP_TIMEOUT + 1.0
#: ``?request-timeout-hint`` of ``scan-wait`` (seconds): scans run for minutes to hours; a client
#: that wants less passes the TIMEOUT argument.
WAIT_TIMEOUT_HINT: Final = 24 * 3600.0
#: Newest scans that get ``scan.<id>.*`` sensors (three each).  A server keeps up to its
#: ``log_limit`` scans, and a real one lists every logged scan of its database: without a bound a
#: long-lived server would give tens of thousands of sensors.
MAX_SCANS_WITH_SENSORS: Final = 1000
#: Most ``#scan-data`` informs one request sends (one per sample).  About 60 bytes each, so the
#: burst stays near 12 MB, well below the server's per-client backlog limit (32 MiB); the fake
#: scan server logs at most 200,000 samples per scan as well.
MAX_DATA_INFORMS: Final = 200_000
#: Most ``#scan-simulate`` informs (log lines) one request sends; the bound has the same reason.
MAX_SIMULATION_INFORMS: Final = 100_000
#: Longest ``fail`` reason sent, in characters (server messages and traces can be long).
MAX_REASON_CHARS: Final = 1000

#: The server's state names (protocols/scan-server.md 3.4) as sensor values (lower case, KATCP
#: style), plus ``other`` for a state name this module does not know.
STATE_VALUES: Final = ("idle", "running", "paused", "aborted", "failed", "finished", "logged", "other")
#: Values of ``active.state``: ``none`` when no scan is active, then the running states.
ACTIVE_STATE_VALUES: Final = ("none", "running", "paused", "other")
_STATE_STATUS: Final = {"failed": Status.ERROR, "aborted": Status.WARN, "other": Status.WARN}
_ACTIVE_STATES: Final = frozenset({"Running", "Paused"})

#: Field names of a scan as ``scan-info``, ``scan-list`` and ``scan-wait`` send them.
SCAN_FIELDS_HELP: Final = (
    "ID NAME STATE PERCENTAGE CREATED RUNTIME FINISH ADDRESS COMMAND ERROR "
    "(STATE lower case; CREATED and FINISH in seconds since the epoch, FINISH empty until known "
    "or estimated; RUNTIME in seconds; ERROR empty when none)"
)


# --------------------------------------------------------------------------------------------------
# Sans-I/O helpers: arguments in, values out
# --------------------------------------------------------------------------------------------------


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """Collapse whitespace (newlines included) to single spaces and cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def state_reading(state: str) -> tuple[str, Status]:
    """The sensor value and status of a scan state name (protocols/scan-server.md 3.4).

    ``"Failed"`` -> ``("failed", ERROR)``, ``"Aborted"`` -> ``("aborted", WARN)``, a name not in
    :data:`STATE_VALUES` -> ``("other", WARN)``, else the lower-case name with ``NOMINAL``.
    """
    value = state.strip().lower()
    if value not in STATE_VALUES or value == "other":
        value = "other"
    return value, _STATE_STATUS.get(value, Status.NOMINAL)


def active_scan(infos: Iterable[ScanInfo]) -> ScanInfo | None:
    """The active scan: the oldest (lowest id) Running or Paused one, or ``None``."""
    return min((i for i in infos if i.state in _ACTIVE_STATES), key=lambda i: i.id, default=None)


def _percentage(info: ScanInfo) -> int:
    return max(0, min(100, info.percentage()))


def scan_fields(info: ScanInfo) -> tuple[Any, ...]:
    """The KATCP arguments describing one scan (see :data:`SCAN_FIELDS_HELP`).

    :returns: ``(id, name, state, percentage, created_s, runtime_s, finish_s or "", address,
        command, error or "")`` with times converted from the server's milliseconds to seconds.
    """
    return (
        info.id,
        info.name,
        info.state.strip().lower(),
        _percentage(info),
        info.created / 1000.0,
        info.runtime / 1000.0,
        "" if info.finish is None else info.finish / 1000.0,
        info.address,
        info.command,
        info.error or "",
    )


def load_commands(text: str) -> CommandSequence:
    """Parse a COMMANDS argument: ``<commands>`` XML (leading ``<``) or the text scan language.

    :raises FailReply: with ``Bad scan XML: ...`` or ``Bad scan text: line L, column C: ...``.
    """
    try:
        return load_scan(text)
    except ScanSyntaxError as exc:
        raise FailReply(one_line(f"Bad scan text: {exc}")) from None
    except ScanXMLError as exc:
        raise FailReply(one_line(f"Bad scan XML: {exc}")) from None
    except InvalidUsage as exc:
        raise FailReply(one_line(f"Bad scan: {exc}")) from None


@dataclass(frozen=True)
class SubmitOptions:
    """The ``key=value`` options of ``scan-submit`` (protocols/scan-server.md 3.3).

    :ivar queue: queue the scan (True) or run it at once, in parallel (False).
    :ivar timeout: seconds after the start when the scan aborts itself (0: none).
    :ivar deadline: local time ``yyyy-MM-dd HH:mm:ss`` when it aborts itself, or None.
    :ivar pre_post: run the server's pre- and post-scan commands.
    """

    queue: bool = True
    timeout: float = 0.0
    deadline: str | None = None
    pre_post: bool = True


_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_SUBMIT_KEYS: Final = ("queue", "timeout", "deadline", "pre-post")


def _parse_bool(key: str, text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise FailReply(f"Option {key} must be true or false, got {text!r}")


def parse_submit_options(options: Iterable[str]) -> SubmitOptions:
    """Parse ``scan-submit`` options ``queue=BOOL timeout=SECONDS deadline=TIME pre-post=BOOL``.

    BOOL is ``true``/``false`` (or ``1``/``0``, ``yes``/``no``); ``pre_post`` is accepted for
    ``pre-post``; TIME is ``yyyy-MM-dd HH:mm:ss`` (a ``T`` between date and time is accepted).

    :raises FailReply: an unknown key, a malformed option or a bad value.
    """
    queue, timeout, deadline, pre_post = True, 0.0, None, True
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip().lower().replace("_", "-")
        if not sep or key not in _SUBMIT_KEYS:
            known = ", ".join(_SUBMIT_KEYS)
            raise FailReply(f"Unknown option {option!r}; expected KEY=VALUE with KEY one of {known}")
        if key == "queue":
            queue = _parse_bool(key, value)
        elif key == "pre-post":
            pre_post = _parse_bool(key, value)
        elif key == "timeout":
            try:
                timeout = float(value)
            except ValueError:
                raise FailReply(f"Option timeout must be seconds >= 0, got {value!r}") from None
            if not timeout >= 0:
                raise FailReply(f"Option timeout must be seconds >= 0, got {value!r}")
        else:
            text = value.strip().replace("T", " ")
            try:
                datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
            except ValueError:
                if text != "0000-00-00 00:00:00":
                    raise FailReply(f"Option deadline must be 'yyyy-MM-dd HH:mm:ss', got {value!r}") from None
            deadline = text
    return SubmitOptions(queue, timeout, deadline, pre_post)


class CommandsFormat(enum.Enum):
    """How ``scan-commands`` returns a scan's commands: the text language, XML, or both."""

    TEXT = "text"
    XML = "xml"
    BOTH = "both"


# --------------------------------------------------------------------------------------------------
# The device
# --------------------------------------------------------------------------------------------------


@dataclass
class _ScanSensors:
    name: str
    state: Sensor
    percentage: Sensor
    error: Sensor

    def sensors(self) -> tuple[Sensor, Sensor, Sensor]:
        return self.state, self.percentage, self.error


class ScanDevice(VirtualDevice):
    """A KATCP device server mirroring one EPICS/Phoebus scan server (DESIGN.md section 4).

    :param backend_host: the scan server's host.
    :param backend_port: its port (``scan_config.xml`` ``<port>``, default 4810).
    :param poll_period: seconds between ``GET /scans`` polls (default :data:`DEFAULT_POLL_PERIOD`).
    :param request_timeout: time budget of each HTTP request, seconds (None: no limit).
    :param startup_wait: seconds :meth:`start` waits for the first poll or its failure.
    :param listen_host: KATCP listen address (loopback by default).
    :param listen_port: KATCP port; 0 picks a free one.
    :param reconnect_delay: backoff between attempts to reach a scan server that went away.
    :param server_options: passed on to :class:`~katclient.server.DeviceServer`.
    :raises InvalidUsage: a poll period below :data:`MIN_POLL_PERIOD` or a bad host.

    Use in-process (``katclient inspect scan://host:4810``), as a gateway (``katclient bridge
    scan://host:4810``), or from Python::

        device = ScanDevice("localhost", 4810)
        host, port = await device.start()
        ...
        await device.stop()
    """

    SCHEME: ClassVar[str] = "scan"
    DEFAULT_PORT: ClassVar[int] = DEFAULT_PORT
    STATUS_SENSORS: ClassVar[frozenset[str]] = frozenset({"server.connected", "server.url"})
    VERSION: ClassVar[str] = "katclient-scan-1.0"

    def __init__(
        self,
        backend_host: str,
        backend_port: int = DEFAULT_PORT,
        *,
        poll_period: float = DEFAULT_POLL_PERIOD,
        request_timeout: float | None = DEFAULT_HTTP_TIMEOUT,
        startup_wait: float = DEFAULT_STARTUP_WAIT,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        reconnect_delay: ExponentialRandomBackoff | None = None,
        **server_options: Any,
    ) -> None:
        super().__init__(
            backend_host,
            backend_port,
            listen_host=listen_host,
            listen_port=listen_port,
            reconnect_delay=reconnect_delay,
            startup_wait=startup_wait,
            **server_options,
        )
        if not float(poll_period) >= MIN_POLL_PERIOD:
            raise InvalidUsage(f"poll_period must be >= {MIN_POLL_PERIOD} s, got {poll_period!r}")
        self.poll_period = float(poll_period)
        self.request_timeout = request_timeout
        host = backend_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address in a URL
        #: The scan server's base URL.
        self.url = f"http://{host}:{self.backend_port}"
        #: The REST client shared by the poll loop and the requests.
        self.client = ScanClient(self.url, request_timeout=request_timeout)
        #: The scans of the last successful poll, by id.
        self.scans: dict[int, ScanInfo] = {}
        self._scan_sensors: dict[int, _ScanSensors] = {}
        self._wake = asyncio.Event()
        self._poll_event = asyncio.Event()
        self._fetch_idle = asyncio.Event()  # cleared while the poll loop waits for an HTTP reply
        self._fetch_idle.set()
        self._polls_started = 0
        self._polls_done = 0
        self._build_fixed_sensors()

    def _build_fixed_sensors(self) -> None:
        nominal = Status.NOMINAL
        add = self.add_sensor
        add(Sensor("boolean", "server.connected", "Whether the last poll reached the scan server",
                   default=False, initial_status=nominal))
        add(Sensor("string", "server.url", "Base URL of the scan server", default=self.url,
                   initial_status=nominal))
        add(Sensor("string", "server.version", "Scan server version (GET /server/info)"))
        add(Sensor("timestamp", "server.start-time", "When the scan server started (GET /server/info)", "s"))
        add(Sensor("integer", "active.id", "Id of the active scan (oldest Running or Paused), -1 when none"))
        add(Sensor("string", "active.name", "Name of the active scan"))
        add(Sensor("discrete", "active.state", "State of the active scan", params=ACTIVE_STATE_VALUES))
        add(Sensor("integer", "active.percentage", "Progress of the active scan", "%", (0, 100)))
        add(Sensor("string", "active.command", "Command the active scan is executing"))
        add(Sensor("integer", "active.address", "Address of the command the active scan is executing"))
        add(Sensor("integer", "queue.length", "Scans waiting to start (state Idle)"))

    # -- life cycle --------------------------------------------------------------------------
    async def on_stop(self) -> None:
        """End polling and close the HTTP client (called by :meth:`stop`).

        A poll in flight may finish first (at most :data:`STOP_FETCH_WAIT` seconds): a fetch
        cancelled half-way leaves tornado's HTTP connection behind, which then logs the server's
        closing of it as an error nobody handles.
        """
        try:
            await asyncio.wait_for(self._fetch_idle.wait(), STOP_FETCH_WAIT)
        except asyncio.TimeoutError:
            pass
        await super().on_stop()
        self.client.close()

    async def run_backend(self) -> None:
        """One "connection": ``GET /server/info``, then poll ``GET /scans`` until a request fails.

        :raises KatclientConnectionError: the server is unreachable.
        :raises KatclientTimeoutError: it did not answer within :attr:`request_timeout`.
        :raises ScanServerError: it answered with an HTTP error.
        :raises ScanXMLError: it answered with something that is not its XML.
        """
        try:
            self._fetch_idle.clear()
            info = await self.client.server_info()
            self._fetch_idle.set()
            now = self.clock()
            self._publish("server.version", info.version, now=now)
            self._publish("server.start-time", info.start_time / 1000.0, now=now)
            while True:
                self._polls_started += 1
                self._wake.clear()
                self._fetch_idle.clear()
                infos = await self.client.scan_infos()
                self._fetch_idle.set()
                self.apply_scans(infos)
                self._publish("server.connected", True)
                self._polls_done = self._polls_started
                self.backend_ready.set()
                self._signal_poll()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_period)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._fetch_idle.set()
            self.backend_ready.clear()
            self._signal_poll()

    async def close_backend(self) -> None:
        """Mark the link down (``server.connected`` false).  The HTTP client stays for the next try."""
        self._publish("server.connected", False)

    # -- the model ---------------------------------------------------------------------------
    def apply_scans(self, infos: Sequence[ScanInfo]) -> None:
        """Bring every sensor up to date with one ``GET /scans`` result (newest first).

        Per-scan sensors are added and removed here, all in one loop iteration, so clients get one
        ``#interface-changed``; values are only published when they changed.
        """
        now = self.clock()
        self.scans = {i.id: i for i in infos}
        self._publish("queue.length", sum(1 for i in infos if i.state == "Idle"), now=now)
        active = active_scan(infos)
        if active is None:
            self._publish("active.id", -1, now=now)
            self._publish("active.name", "", now=now)
            self._publish("active.state", "none", now=now)
            self._publish("active.percentage", 0, now=now)
            self._publish("active.command", "", now=now)
            self._publish("active.address", -1, now=now)
        else:
            state, status = state_reading(active.state)
            if state not in ACTIVE_STATE_VALUES:
                state, status = "other", Status.WARN
            self._publish("active.id", active.id, now=now)
            self._publish("active.name", active.name, now=now)
            self._publish("active.state", state, status, now=now)
            self._publish("active.percentage", _percentage(active), now=now)
            self._publish("active.command", active.command, now=now)
            self._publish("active.address", active.address, now=now)

        shown = {i.id: i for i in list(infos)[:MAX_SCANS_WITH_SENSORS]}
        # A scan gone, or an id reused by another scan (a restarted server): drop its sensors.
        for scan_id in [s for s, old in self._scan_sensors.items()
                        if s not in shown or old.name != shown[s].name]:
            for sensor in self._scan_sensors.pop(scan_id).sensors():
                if self.sensors.get(sensor.name) is sensor:
                    self.remove_sensor(sensor.name)
        for scan_id, info in shown.items():
            group = self._scan_sensors.get(scan_id)
            if group is None:
                group = self._make_scan_sensors(info)
                self._scan_sensors[scan_id] = group
                for sensor in group.sensors():
                    self.add_sensor(sensor)
            state, status = state_reading(info.state)
            _publish_to(group.state, state, status, now)
            _publish_to(group.percentage, _percentage(info), Status.NOMINAL, now)
            _publish_to(group.error, info.error or "", Status.NOMINAL, now)

    @staticmethod
    def _make_scan_sensors(info: ScanInfo) -> _ScanSensors:
        prefix = f"scan.{info.id}"
        label = f"scan {info.id} '{info.name}'"
        return _ScanSensors(
            info.name,
            Sensor("discrete", f"{prefix}.state", f"State of {label}", params=STATE_VALUES),
            Sensor("integer", f"{prefix}.percentage", f"Progress of {label}", "%", (0, 100)),
            Sensor("string", f"{prefix}.error", f"Error of {label}, empty when none"),
        )

    def _publish(
        self, name: str, value: Any, status: Status = Status.NOMINAL, *, now: float | None = None
    ) -> None:
        sensor = self.sensors.get(name)
        if sensor is not None:
            _publish_to(sensor, value, status, self.clock() if now is None else now)

    def _signal_poll(self) -> None:
        event, self._poll_event = self._poll_event, asyncio.Event()
        event.set()

    async def _wait_poll(self, target: int, timeout: float | None) -> bool:
        """Wait until poll number ``target`` succeeded.

        :returns: True when it did; False when the backend is down or ``timeout`` seconds passed.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._polls_done < target:
            if not self.backend_ready.is_set():
                return False
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._poll_event.wait(), remaining)
            except asyncio.TimeoutError:
                return False
        return True

    async def refresh(self) -> bool:
        """Poll now and wait for that poll (at most the HTTP time budget).

        :returns: True when the sensors reflect a poll that started after this call.
        """
        target = self._polls_started + 1
        self._wake.set()
        return await self._wait_poll(target, self.request_timeout)

    # -- error mapping -----------------------------------------------------------------------
    @contextmanager
    def _server_call(self) -> Iterator[None]:
        """Turn the scan client's exceptions into a one-line ``fail`` with the server's message."""
        try:
            yield
        except ScanSubmitError as exc:
            reason = f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason
            raise FailReply(one_line(reason or f"HTTP {exc.status}")) from None
        except ScanServerError as exc:
            raise FailReply(one_line(exc.reason or f"Scan server error {exc.status}")) from None
        except ScanFailedError as exc:
            raise FailReply(one_line(exc.reason)) from None
        except ScanXMLError as exc:
            raise FailReply(one_line(f"Bad reply from the scan server at {self.url}: {exc}")) from None
        except KatclientTimeoutError as exc:
            raise FailReply(one_line(f"Scan server timeout: {exc}")) from None
        except KatclientConnectionError as exc:
            raise FailReply(one_line(f"Scan server unreachable: {exc}")) from None
        except (InvalidUsage, KatclientError) as exc:
            if isinstance(exc, FailReply):
                raise
            raise FailReply(one_line(str(exc))) from None

    async def _after_change(self) -> None:
        if self.backend_ready.is_set():
            await self.refresh()
        else:
            self._wake.set()

    # -- requests: submit and simulate -----------------------------------------------------------
    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_submit(self, ctx: RequestContext, name: str, commands: str, *options: str) -> int:
        """Submit a scan: scan-submit NAME COMMANDS [queue=BOOL] [timeout=S] [deadline=TIME] [pre-post=BOOL].

        COMMANDS is <commands> XML or the text scan language, e.g.
        "loop motor_x 1 10 1 { delay 1; log motor_x }".  queue=false runs the scan at once, in
        parallel; timeout (seconds) or deadline (yyyy-MM-dd HH:mm:ss, local time) aborts it;
        pre-post=false skips the server's pre- and post-scan commands.  Replies ok ID.
        """
        opts = parse_submit_options(options)
        cmds = load_commands(commands)
        body: Commands = commands if commands.lstrip("\ufeff \t\r\n").startswith("<") else cmds
        with self._server_call():
            scan_id = await self.client.submit(
                body, name, queue=opts.queue, timeout=opts.timeout, deadline=opts.deadline,
                pre_post=opts.pre_post,
            )
        await self._after_change()
        return scan_id

    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_simulate(self, ctx: RequestContext, commands: str) -> float:
        """Simulate a scan: scan-simulate COMMANDS (XML or the text scan language).

        One #scan-simulate inform per line of the server's simulation log; replies ok SECONDS,
        the estimated run time.
        """
        cmds = load_commands(commands)
        body: Commands = commands if commands.lstrip("\ufeff \t\r\n").startswith("<") else cmds
        with self._server_call():
            result = await self.client.simulate(body)
        lines = result.simulation.splitlines()
        if len(lines) > MAX_SIMULATION_INFORMS:
            raise FailReply(f"Simulation log too long ({len(lines)} lines, limit {MAX_SIMULATION_INFORMS})")
        for line in lines:
            ctx.inform(line)
        return result.seconds

    # -- requests: information ---------------------------------------------------------------------
    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_info(self, ctx: RequestContext, scan_id: int) -> tuple[Any, ...]:
        """Describe one scan: scan-info ID.

        Replies ok ID NAME STATE PERCENTAGE CREATED RUNTIME FINISH ADDRESS COMMAND ERROR
        (STATE lower case; CREATED, FINISH seconds since the epoch, FINISH empty when unknown;
        RUNTIME seconds; ERROR empty when none).
        """
        with self._server_call():
            info = await self.client.scan_info(scan_id)
        return scan_fields(info)

    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_list(self, ctx: RequestContext) -> None:
        """List the scans the server knows, newest first.

        One #scan-list ID NAME STATE PERCENTAGE CREATED RUNTIME FINISH ADDRESS COMMAND ERROR per
        scan (fields as for scan-info); replies ok COUNT.
        """
        with self._server_call():
            infos = await self.client.scan_infos()
        ctx.informs(scan_fields(i) for i in infos)

    @timeout_hint(WAIT_TIMEOUT_HINT)
    async def request_scan_wait(
        self, ctx: RequestContext, scan_id: int, timeout: float | None = None
    ) -> tuple[Any, ...]:
        """Wait until a scan is done: scan-wait ID [TIMEOUT].

        Replies ok with the scan-info fields once it Finished (or is Logged); fails when it ends
        Aborted or Failed (with the server's error), when the id is unknown, when the server
        cannot be reached, or after TIMEOUT seconds.
        """
        if timeout is not None and not timeout >= 0:
            raise FailReply(f"TIMEOUT must be seconds >= 0, got {timeout!r}")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        with self._server_call():
            info = await self.client.scan_info(scan_id)
            while True:
                if info.state in ("Aborted", "Failed"):
                    raise ScanFailedError(info)
                if info.done:
                    return scan_fields(info)
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    raise FailReply(f"Scan {scan_id} not done after {timeout} s (state {info.state.lower()})")
                fresh = None
                if self.backend_ready.is_set():
                    budget = self.poll_period + (self.request_timeout or DEFAULT_HTTP_TIMEOUT)
                    wait = budget if remaining is None else min(budget, remaining)
                    if await self._wait_poll(self._polls_started + 1, wait):
                        fresh = self.scans.get(scan_id)
                else:
                    pause = self.poll_period if remaining is None else min(self.poll_period, remaining)
                    await asyncio.sleep(pause)
                if fresh is None and (deadline is None or loop.time() < deadline):
                    fresh = await self.client.scan_info(scan_id)
                info = fresh if fresh is not None else info

    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_data(self, ctx: RequestContext, scan_id: int) -> None:
        """List the data a scan logged: scan-data ID.

        One #scan-data DEVICE SERIAL TIME VALUE per sample (TIME in seconds since the epoch;
        VALUE a number or text), ordered by serial then device; replies ok COUNT.
        """
        with self._server_call():
            data = await self.client.data(scan_id)
        samples = [
            (serial, order, device, time_ms, value)
            for order, (device, columns) in enumerate(data.items())
            for serial, time_ms, value in zip(columns["id"], columns["time"], columns["value"])
        ]
        if len(samples) > MAX_DATA_INFORMS:
            raise FailReply(f"Scan {scan_id} logged {len(samples)} samples, more than {MAX_DATA_INFORMS}")
        samples.sort(key=lambda s: (s[0], s[1]))
        ctx.informs((dev, serial, time_ms / 1000.0, value) for serial, _, dev, time_ms, value in samples)

    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_last_serial(self, ctx: RequestContext, scan_id: int) -> int:
        """The last data serial a scan handed out: scan-last-serial ID.  Replies ok SERIAL (-1: none)."""
        with self._server_call():
            return await self.client.last_serial(scan_id)

    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_commands(
        self, ctx: RequestContext, scan_id: int, format: CommandsFormat | None = None
    ) -> tuple[str, ...]:
        """A scan's commands as the server holds them: scan-commands ID [text|xml|both].

        Replies ok TEXT (the text scan language on one line, the default), ok XML (the server's
        <commands> document), or ok TEXT XML.  Either form can be given back to scan-submit.
        """
        fmt = format or CommandsFormat.TEXT
        with self._server_call():
            xml = await self.client.commands_xml(scan_id)
        if fmt is CommandsFormat.XML:
            return (xml,)
        try:
            text = format_scan(parse_commands(xml), one_line=True)
        except (ScanXMLError, InvalidUsage) as exc:
            reason = f"Cannot express scan {scan_id} in the text language ({exc}); ask for xml"
            raise FailReply(one_line(reason)) from None
        return (text,) if fmt is CommandsFormat.TEXT else (text, xml)

    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_devices(self, ctx: RequestContext, scan_id: int | None = None) -> None:
        """The devices of a scan, or the server's default devices: scan-devices [ID].

        One #scan-devices NAME ALIAS STATUS per device (STATUS: value text, "no PV", an alarm, or
        empty); replies ok COUNT.
        """
        with self._server_call():
            devices = await self.client.devices(-1 if scan_id is None else scan_id)
        ctx.informs((d.name, d.alias, d.status) for d in devices)

    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_server_info(self, ctx: RequestContext) -> None:
        """Describe the scan server (GET /server/info).

        One #server-info KEY VALUE per item: version, start-time (seconds since the epoch),
        scan-config, script-paths (comma separated), macros, used-mem, max-mem, non-heap (bytes),
        url; replies ok COUNT.
        """
        with self._server_call():
            info = await self.client.server_info()
        ctx.informs([
            ("version", info.version),
            ("start-time", info.start_time / 1000.0),
            ("scan-config", info.scan_config),
            ("script-paths", ", ".join(info.script_paths)),
            ("macros", info.macros),
            ("used-mem", info.used_mem),
            ("max-mem", info.max_mem),
            ("non-heap", info.non_heap),
            ("url", self.url),
        ])

    # -- requests: control ---------------------------------------------------------------------------
    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_pause(self, ctx: RequestContext, scan_id: int | None = None) -> None:
        """Pause a Running scan before its next command: scan-pause [ID] (no ID: all scans)."""
        with self._server_call():
            await self.client.pause(-1 if scan_id is None else scan_id)
        await self._after_change()

    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_resume(self, ctx: RequestContext, scan_id: int | None = None) -> None:
        """Resume a Paused scan: scan-resume [ID] (no ID: all scans)."""
        with self._server_call():
            await self.client.resume(-1 if scan_id is None else scan_id)
        await self._after_change()

    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_abort(self, ctx: RequestContext, scan_id: int | None = None) -> None:
        """Abort an Idle, Running or Paused scan: scan-abort [ID] (no ID: all scans)."""
        with self._server_call():
            await self.client.abort(-1 if scan_id is None else scan_id)
        await self._after_change()

    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_next(self, ctx: RequestContext, scan_id: int | None = None) -> None:
        """Finish the current command early (Delay, Wait, a Set's wait, a Loop step): scan-next [ID]."""
        with self._server_call():
            await self.client.next(-1 if scan_id is None else scan_id)
        await self._after_change()

    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_move(self, ctx: RequestContext, scan_id: int, steps: int) -> None:
        """Reorder a queued Idle scan: scan-move ID STEPS (positive: earlier in the queue)."""
        with self._server_call():
            await self.client.move(scan_id, steps)
        await self._after_change()

    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_patch(self, ctx: RequestContext, scan_id: int, address: int, property: str,
                                 value: str) -> None:
        """Change a command that has not run yet: scan-patch ID ADDRESS PROPERTY VALUE.

        PROPERTY is the server's property id (value, seconds, desired_value, device_name, ...);
        VALUE is taken as a number when it parses as one.
        """
        with self._server_call():
            await self.client.patch(scan_id, address, property, value)
        await self._after_change()

    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_delete(self, ctx: RequestContext, scan_id: int) -> None:
        """Remove a done scan and its data: scan-delete ID.

        Fails for a scan that is not done (the server would silently keep it).
        """
        with self._server_call():
            info = await self.client.scan_info(scan_id)
            if not info.done:
                raise FailReply(f"Scan {scan_id} is {info.state.lower()}, not done: abort it first")
            await self.client.delete(scan_id)
        await self._after_change()

    @timeout_hint(HTTP_TIMEOUT_HINT)
    async def request_scan_clear(self, ctx: RequestContext) -> None:
        """Remove every done scan (Finished, Failed, Aborted, Logged) and its data."""
        with self._server_call():
            await self.client.clear()
        await self._after_change()


def _publish_to(sensor: Sensor, value: Any, status: Status, now: float) -> None:
    """Set ``sensor`` only when its value or status changed (no repeated updates for clients)."""
    if sensor.status is status and sensor.value == value and type(sensor.value) is type(value):
        return
    sensor.set_value(value, status, now)
