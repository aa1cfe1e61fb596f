"""``ScrutinyDevice``: a Scrutiny Debugger server as a virtual KATCP device.

The mapping contract is DESIGN.md section 4 ("Scrutiny"); the wire facts behind it are in
protocols/scrutiny.md (section numbers below refer to it).  The Scrutiny client underneath is
:class:`~katclient.devices.scrutiny.client.ScrutinyClient`; this module only maps.

Sensors
=======

One sensor per watchable (var, alias, RPV; var factories, i.e. arrays, get none: their concrete
elements are reachable by path through the requests).  The KATCP name is the Scrutiny path made
KATCP-style (``/Sine Wave`` -> ``sine-wave``, ``/static/main.cpp/counter`` ->
``static.main.cpp.counter``, collisions get ``-2``...; :class:`~katclient.devices.base.NameMap`),
and the description begins with the Scrutiny path, e.g. ``/Sine Wave (alias, float32)``.  Types
come from the ``dtype`` (1.6):

=====================================  ==========  ================================================
dtype                                  KATCP type  params
=====================================  ==========  ================================================
``float*``, ``cfloat*``                float       none
``sint*``, ``uint*``, ``ptr*``         integer     the range of the bit width (``bitsize`` for a
                                                   bitfield), e.g. ``0 4294967295`` for ``uint32``
``bool*``                              boolean     none
any, with an ``enum``                  discrete    the enum's names (whitespace becomes ``-``)
an alias with a gain or an offset      float       none (the server scales the target's value)
=====================================  ==========  ================================================

A watchable's sensor holds the last value the server sent.  An invalid value (``v`` null, with the
reason in ``r``: ``forbidden``, ``nullptr``; 1.5) or one the type cannot hold (an enum value
without a name) keeps the last value with status ``failure``.

Status sensors (:attr:`ScrutinyDevice.STATUS_SENSORS`):

===========================  ========  ============================================================
``server.connected``         boolean   the link to the Scrutiny server is up
``device.comm-state``        discrete  ``unknown``, ``disconnected``, ``connecting``, ``connected``,
                                       ``connected-ready`` (nominal only when ready)
``device.session-id``        string    the device session (uuid hex), empty without a device
``device.display-name``      string    the device's display name, empty without a device
``sfd.firmware-id``          string    the loaded SFD's firmware id, empty when none
``datalogger.state``         discrete  ``unavailable``, ``standby``, ``waiting-for-trigger``,
                                       ``acquiring``, ``downloading``, ``error``
``datalogger.completion``    float     0..1 while acquiring/downloading; status ``inactive``
                                       otherwise
===========================  ========  ============================================================

When the Scrutiny server goes away every sensor keeps its value with status ``unreachable`` (the
status sensors too, except ``server.connected``, which becomes false), and the device reconnects
with its backoff and rebuilds the model.

Subscriptions follow KATCP sampling
===================================

A watchable is subscribed on the Scrutiny server only while some KATCP client samples its sensor
(the :meth:`~katclient.server.DeviceServer.sensor_sampling_changed` hook).  The update rate asked
for is the fastest any client needs: ``1/P`` Hz for a ``period P`` strategy, the device's
``default_rate`` for any other strategy (``None``: as fast as the server can).  Subscriptions are
applied in batches (1.4, all-or-nothing per request) by one task per connection.

So that the first clients see real values (``katclient inspect scrutiny://...`` prints the model as
soon as it is synced), each model build reads every watchable once: it subscribes them all for at
most :data:`SNAPSHOT_TIMEOUT` seconds, until each has sent a value, then keeps only the sampled ones.

The model follows the server: a loaded or unloaded SFD and a new or lost device session (1.5: the
server's ids die silently; the client sees it in the status) rebuild the sensor set in one batch
(:meth:`~katclient.devices.base.VirtualDevice.replace_sensors`, one ``#interface-changed``), and
whatever is still sampled is subscribed again.

Requests
========

``watchable-read``, ``watchable-write``, ``memory-read``, ``memory-write``, ``user-command``,
``sfd-list``, ``sfd-load``, ``sfd-install``, ``sfd-uninstall``, ``datalog-acquire``,
``datalog-list``, ``datalog-read``, ``datalog-delete``, ``device-info`` and ``server-stats``; their
``?help`` texts give the arguments.  NAME arguments are a sensor name or a Scrutiny path.  Every
failure is a one-line ``fail`` with the server's or the device's reason.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import re
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from katclient.client.backoff import ExponentialRandomBackoff
from katclient.devices.base import NameMap, VirtualDevice
from katclient.devices.scrutiny.client import ScrutinyClient
from katclient.devices.scrutiny.errors import ScrutinyError
from katclient.devices.scrutiny.events import (
    DeviceGone,
    DeviceReady,
    ScrutinyEvent,
    ServerDisconnected,
    SFDLoaded,
    SFDUnloaded,
    StatusUpdated,
)
from katclient.devices.scrutiny.model import (
    AxisDef,
    DataloggerState,
    DataloggingConfig,
    DeviceCommState,
    DeviceInfo,
    EnumDef,
    LoggedSignal,
    ServerStats,
    ServerStatus,
    TriggerCondition,
    WatchableInfo,
    WatchableOperand,
    WatchableType,
    WatchableValue,
    XAxisType,
)
from katclient.errors import (
    FailReply,
    InvalidUsage,
    KatclientConnectionError,
    KatclientError,
    KatclientTimeoutError,
)
from katclient.protocol import Sampling, Status, Strategy
from katclient.server import RequestContext, Sensor, timeout_hint

__all__ = [
    "ScrutinyDevice",
    "SensorSpec",
    "sensor_spec",
    "enum_labels",
    "update_rate",
    "parse_write_value",
    "parse_int",
    "parse_acquire_args",
    "COMM_STATE_VALUES",
    "DATALOGGER_STATE_VALUES",
    "DEFAULT_PORT",
    "SNAPSHOT_TIMEOUT",
    "MAX_WATCHABLE_SENSORS",
]

logger = logging.getLogger(__name__)

#: The Scrutiny server's default API port (scrutiny.md 1.1).
DEFAULT_PORT: Final = 8765
#: Seconds :meth:`ScrutinyDevice.start` waits for the first model (or the first failure to
#: connect), so that a client connecting right after start sees the watchables.
DEFAULT_STARTUP_WAIT: Final = 5.0
#: Time budget of a Scrutiny request, seconds (the SDK's ``timeout=4.0``, scrutiny.md 2).
DEFAULT_REQUEST_TIMEOUT: Final = 4.0
#: Time budget of writes that reach the device, seconds.  Writes are executed one at a time (a
#: batch of 200 took 5.25 s on the emulator, scrutiny.md 2), so this is above the SDK's 5 s.
DEFAULT_WRITE_TIMEOUT: Final = 10.0
#: Seconds ``sfd-load`` waits for the server to report the SFD loaded (it never answers, 1.2).
DEFAULT_SFD_LOAD_TIMEOUT: Final = 10.0
#: Seconds ``datalog-acquire`` waits for the acquisition by default (``wait=`` changes it).
DEFAULT_ACQUIRE_WAIT: Final = 60.0
#: Seconds each model build waits for a first value of every watchable (see the module doc).
SNAPSHOT_TIMEOUT: Final = 2.0
#: Most watchables read by a model build's snapshot; the others start with status ``unknown``.
MAX_SNAPSHOT: Final = 10_000
#: Most watchables that get a sensor.  Each sensor costs about 1-2 KB here and in every mirroring
#: client; a larger SFD is cut (logged) and the rest stays reachable by path through the requests.
MAX_WATCHABLE_SENSORS: Final = 20_000
#: Paths per ``get_watchable_info`` / ``subscribe_watchable`` / ``unsubscribe_watchable`` request.
#: A detailed definition is about 150 bytes, so a reply stays far below the 1 MiB ``STREAM_MTU``
#: (1.1), which the real server cannot exceed (it raises instead of answering).
PATHS_PER_REQUEST: Final = 1000
#: Seconds a model rebuild waits after a device/SFD event, so that the events of one change (the
#: SFD unloaded, then loaded) give one rebuild and one ``#interface-changed``.
MODEL_DEBOUNCE: Final = 0.05
#: Seconds before retrying a failed model build or subscription change.
RETRY_DELAY: Final = 1.0
#: Longest ``fail`` reason sent, in characters.
MAX_REASON_CHARS: Final = 1000
#: Most writes in one ``watchable-write`` (the SDK's batch limit, scrutiny.md 2 "Batch write").
MAX_WRITES: Final = 500

#: Values of ``device.comm-state`` (``device_status`` of 1.5, KATCP style).
COMM_STATE_VALUES: Final = tuple(s.value.replace("_", "-") for s in DeviceCommState)
#: Values of ``datalogger.state`` (``datalogging_state`` of 1.5, KATCP style).
DATALOGGER_STATE_VALUES: Final = tuple(s.value.replace("_", "-") for s in DataloggerState)

_COMM_STATUS: Final = {
    DeviceCommState.UNKNOWN: Status.UNKNOWN,
    DeviceCommState.DISCONNECTED: Status.WARN,
    DeviceCommState.CONNECTING: Status.WARN,
    DeviceCommState.CONNECTED: Status.WARN,
    DeviceCommState.CONNECTED_READY: Status.NOMINAL,
}
_UNKNOWN_WATCHABLE_RE: Final = re.compile(r"^Unknown watchable : (.*)$", re.DOTALL)
_LABEL_BAD_CHARS: Final = re.compile(r"[^!-~]+")  # discrete values: printable ASCII, no space


# --------------------------------------------------------------------------------------------------
# Sans-I/O helpers: watchable definitions to sensor specs, arguments to values
# --------------------------------------------------------------------------------------------------


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` on one line (whitespace runs become one space), cut to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def enum_labels(enum: EnumDef) -> dict[int, str]:
    """The discrete sensor values of an enum: ``{number: label}``.

    Labels become printable ASCII without spaces (other runs become ``-``); two labels that end up
    equal get ``-2``, ``-3``... suffixes; a number with several labels keeps the first.
    """
    out: dict[int, str] = {}
    used: set[str] = set()
    for label, number in enum.values.items():
        if number in out:
            continue
        base = _LABEL_BAD_CHARS.sub("-", label.encode("ascii", "replace").decode("ascii")).strip("-") or "x"
        name, n = base, 1
        while name in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name)
        out[number] = name
    return out


Converter = Callable[[Any], Any]


def _to_float(value: Any) -> float:
    return float(value)


def _to_int(value: Any) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return int(value)
    return int(value)


def _to_bool(value: Any) -> bool:
    return bool(value)


def _to_label(labels: Mapping[int, str]) -> Converter:
    def convert(value: Any) -> str:
        try:
            return labels[value]
        except (KeyError, TypeError):
            raise ValueError(f"{value!r} has no name in the enum") from None

    return convert


@dataclass(frozen=True)
class SensorSpec:
    """How one watchable becomes a KATCP sensor.

    :param path: the Scrutiny path.
    :param stype: the KATCP type name (``float``, ``integer``, ``boolean``, ``discrete``).
    :param description: the sensor description, beginning with the path.
    :param params: the type's params (integer range, discrete values).
    :param convert: Scrutiny value (``v``, 1.6) -> sensor value; raises ``ValueError`` when the
        value does not fit (an enum number without a name).
    :param labels: for enums, number -> discrete value (``None`` otherwise).
    """

    path: str
    stype: str
    description: str
    params: tuple[Any, ...]
    convert: Converter
    labels: Mapping[int, str] | None = None


def sensor_spec(info: WatchableInfo) -> SensorSpec:
    """The sensor of a watchable (module doc, "Sensors"; dtypes from scrutiny.md 1.6).

    :param info: a brief or detailed definition (the details add bitfield widths and alias gains).
    :raises ScrutinyProtocolError: for a ``dtype`` scrutiny.md 1.6 does not list.
    """
    dt = info.datatype
    kind = info.watchable_type.value
    description = f"{info.path} ({kind}, {info.dtype}"
    if info.enum is not None:
        labels = enum_labels(info.enum)
        if labels:
            description += f", enum {info.enum.name})"
            values = tuple(dict.fromkeys(labels.values()))
            return SensorSpec(info.path, "discrete", description, values, _to_label(labels), labels)
    scaled = info.watchable_type is WatchableType.ALIAS and (
        (info.gain is not None and info.gain != 1.0) or (info.offset is not None and info.offset != 0.0)
    )
    if scaled:
        description += f", gain {info.gain if info.gain is not None else 1.0:g}"
        description += f", offset {info.offset if info.offset is not None else 0.0:g})"
        return SensorSpec(info.path, "float", description, (), _to_float)
    if dt.is_integer:
        bits = info.bitsize if info.bitsize is not None and info.bitsize > 0 else None
        if bits is not None:
            description += f", {bits} bits"
        return SensorSpec(info.path, "integer", description + ")", dt.int_range(bits), _to_int)
    if dt.is_bool:
        return SensorSpec(info.path, "boolean", description + ")", (), _to_bool)
    return SensorSpec(info.path, "float", description + ")", (), _to_float)


def update_rate(samplings: Iterable[Sampling], default_rate: float | None) -> float | None:
    """The Scrutiny update rate (Hz) that serves every KATCP sampling of one sensor.

    A ``period P`` strategy needs ``1/P`` Hz, any other strategy ``default_rate``; the fastest
    wins, and ``None`` (as fast as possible, scrutiny.md 1.4 ``subscribe_watchable``) beats all.

    :param samplings: at least one sampling (``none`` excluded).
    :param default_rate: Hz or ``None``.
    """
    best = 0.0
    for sampling in samplings:
        rate = default_rate
        if sampling.strategy is Strategy.PERIOD and sampling.params and sampling.params[0] > 0:
            rate = 1.0 / sampling.params[0]
        if rate is None:
            return None
        best = max(best, rate)
    return best if best > 0 else default_rate


def parse_int(text: str, what: str) -> int:
    """An integer argument: decimal, or ``0x``/``0o``/``0b`` prefixed.

    :raises InvalidUsage: when ``text`` is not an integer.
    """
    try:
        return int(text, 0)
    except ValueError:
        raise InvalidUsage(f"{what} must be an integer (decimal or 0x hex), got {text!r}") from None


_TRUE_WORDS: Final = frozenset({"1", "true", "True", "TRUE"})
_FALSE_WORDS: Final = frozenset({"0", "false", "False", "FALSE"})


def parse_write_value(text: str, spec: SensorSpec | None) -> int | float | bool | str:
    """The Scrutiny value to write for a KATCP argument (scrutiny.md 1.6 "Writes").

    An enum name gives its number and a boolean sensor takes ``1``/``0``/``true``/``false``; then
    an integer (``0x`` hex too) or a float is sent as a number; anything else is sent as text for
    the server to parse (``"2*pi"``, ``"true"``).

    :param text: the argument.
    :param spec: the watchable's sensor spec, ``None`` when it has no sensor.
    """
    if spec is not None and spec.labels is not None:
        for number, label in spec.labels.items():
            if label == text:
                return number
    if spec is not None and spec.stype == "boolean":
        if text in _TRUE_WORDS:
            return True
        if text in _FALSE_WORDS:
            return False
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


#: ``datalog-acquire`` options (``KEY=VALUE``) and what each means; the ``?help`` text lists them.
ACQUIRE_OPTIONS: Final = {
    "sampling-rate": "identifier of one of the device's sampling rates (default 0; see ?device-info)",
    "decimation": "keep one sample in N (default 1)",
    "timeout": "seconds after which the acquisition ends at the latest, 0 for none (default 0)",
    "trigger": "condition: true (default), eq, neq, lt, let, gt, get, cmt or within",
    "operands": "comma-separated trigger operands (2, or 3 for within): numbers or NAMEs",
    "hold-time": "seconds the condition must hold before triggering (default 0)",
    "probe-location": "trigger position in the buffer, 0..1 (default 0.5)",
    "x-axis": "index (default), ideal-time, measured-time or signal",
    "x-signal": "NAME of the X axis signal (with x-axis=signal)",
    "name": "a name for the stored acquisition",
    "wait": f"seconds to wait for the acquisition (default {DEFAULT_ACQUIRE_WAIT:g})",
}


def _float_option(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidUsage(f"{key} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise InvalidUsage(f"{key} must be finite")
    return value


def _operand(text: str, resolve: Callable[[str], str]) -> float | WatchableOperand:
    try:
        value = float(text)
    except ValueError:
        return WatchableOperand(resolve(text))
    if not math.isfinite(value):
        raise InvalidUsage(f"trigger operand must be finite, got {text!r}")
    return value


def parse_acquire_args(
    args: Sequence[str], resolve: Callable[[str], str]
) -> tuple[DataloggingConfig, float | None]:
    """Parse ``datalog-acquire SIGNALS [KEY=VALUE...]`` (options: :data:`ACQUIRE_OPTIONS`).

    :param args: the arguments; ``args[0]`` is a comma-separated list of NAMEs.
    :param resolve: NAME (sensor name or path) -> Scrutiny path; raises ``InvalidUsage``.
    :returns: the acquisition configuration (scrutiny.md 1.4 ``request_datalogging_acquisition``)
        and the seconds to wait for it (``wait=``, default :data:`DEFAULT_ACQUIRE_WAIT`).
    :raises InvalidUsage: for a missing or unknown option, a bad value or an inconsistent set.
    """
    if not args or not args[0].strip(","):
        raise InvalidUsage("SIGNALS is required: comma-separated sensor names or Scrutiny paths")
    signals = [LoggedSignal(resolve(n), 0, n) for n in args[0].split(",") if n]
    options: dict[str, str] = {}
    for arg in args[1:]:
        key, sep, value = arg.partition("=")
        if not sep:
            raise InvalidUsage(f"expected KEY=VALUE, got {arg!r}")
        if key not in ACQUIRE_OPTIONS:
            raise InvalidUsage(f"unknown option {key!r} (known: {', '.join(ACQUIRE_OPTIONS)})")
        if key in options:
            raise InvalidUsage(f"option {key} given twice")
        options[key] = value
    kwargs: dict[str, Any] = {}
    if "sampling-rate" in options:
        kwargs["sampling_rate_id"] = parse_int(options["sampling-rate"], "sampling-rate")
    if "decimation" in options:
        kwargs["decimation"] = parse_int(options["decimation"], "decimation")
    if "timeout" in options:
        kwargs["timeout"] = _float_option("timeout", options["timeout"])
    if "hold-time" in options:
        kwargs["trigger_hold_time"] = _float_option("hold-time", options["hold-time"])
    if "probe-location" in options:
        kwargs["probe_location"] = _float_option("probe-location", options["probe-location"])
    if "trigger" in options:
        try:
            kwargs["condition"] = TriggerCondition(options["trigger"])
        except ValueError:
            known = ", ".join(c.value for c in TriggerCondition)
            raise InvalidUsage(f"unknown trigger {options['trigger']!r} (known: {known})") from None
    if "operands" in options:
        kwargs["operands"] = tuple(_operand(t, resolve) for t in options["operands"].split(",") if t)
    if "x-axis" in options:
        try:
            kwargs["x_axis_type"] = XAxisType(options["x-axis"].replace("-", "_"))
        except ValueError:
            raise InvalidUsage(
                f"unknown x-axis {options['x-axis']!r} (known: index, ideal-time, measured-time, signal)"
            ) from None
    if "x-signal" in options:
        name = options["x-signal"]
        kwargs["x_axis_signal"] = LoggedSignal(resolve(name), 0, name)
    if "name" in options:
        kwargs["name"] = options["name"]
    wait: float | None = DEFAULT_ACQUIRE_WAIT
    if "wait" in options:
        wait = _float_option("wait", options["wait"])
        if wait <= 0:
            raise InvalidUsage("wait must be > 0 seconds")
    config = DataloggingConfig(signals=signals, yaxes=(AxisDef(0, "Y"),), **kwargs)
    return config, wait


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _kebab(name: str) -> str:
    return name.replace("_", "-")


# --------------------------------------------------------------------------------------------------
# The device
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Binding:
    """A watchable's sensor: where its values go."""

    spec: SensorSpec
    sensor: Sensor

    def publish(self, update: WatchableValue) -> None:
        sensor = self.sensor
        value = update.value
        if value is not None:
            try:
                sensor.set_value(self.spec.convert(value), Status.NOMINAL, update.timestamp)
                return
            except ValueError as exc:  # InvalidUsage is a ValueError too
                logger.debug("%s: cannot show %r: %s", self.spec.path, value, exc)
        # Invalid (1.5 ``r``: forbidden, nullptr) or not representable: keep the last value.
        sensor.set_value(sensor.value, Status.FAILURE, update.timestamp)


class _Session:
    """The state of one connection to the Scrutiny server."""

    __slots__ = ("client", "dirty", "gone", "wake", "lock", "reason")

    def __init__(self, client: ScrutinyClient) -> None:
        self.client = client
        #: The device or SFD changed: rebuild the model.
        self.dirty = asyncio.Event()
        #: The connection is lost.
        self.gone = asyncio.Event()
        #: The wanted subscriptions changed.
        self.wake = asyncio.Event()
        #: One subscription change at a time.
        self.lock = asyncio.Lock()
        self.reason = ""


class ScrutinyDevice(VirtualDevice):
    """A Scrutiny Debugger server as a KATCP device (module doc; DESIGN.md section 4).

    :param backend_host: the Scrutiny server's host.
    :param backend_port: its API port (default :data:`DEFAULT_PORT`).
    :param listen_host: KATCP listen address (loopback by default, DESIGN.md 5).
    :param listen_port: KATCP port; 0 picks a free one.
    :param default_rate: Scrutiny update rate in Hz for sensors sampled with a strategy other than
        ``period``; ``None`` for as fast as the server can.
    :param request_timeout: seconds for each Scrutiny request.
    :param write_timeout: seconds for writes, memory writes and user commands (device round trips).
    :param status_interval: seconds between server status polls (scrutiny.md 1.3).
    :param sfd_load_timeout: seconds ``sfd-load`` waits for the server to report the SFD loaded.
    :param startup_wait: seconds :meth:`start` waits for the first model.
    :param snapshot_timeout: seconds each model build waits for every watchable's first value.
    :param reconnect_delay: backoff between connection attempts to the Scrutiny server.
    :param server_options: passed to :class:`~katclient.server.DeviceServer`.
    :raises InvalidUsage: for a non-positive rate or time.
    """

    SCHEME: ClassVar[str] = "scrutiny"
    DEFAULT_PORT: ClassVar[int] = DEFAULT_PORT
    STATUS_SENSORS: ClassVar[frozenset[str]] = frozenset(
        {
            "server.connected",
            "device.comm-state",
            "device.session-id",
            "device.display-name",
            "sfd.firmware-id",
            "datalogger.state",
            "datalogger.completion",
        }
    )
    VERSION: ClassVar[str] = "katclient-scrutiny-0.1"

    def __init__(
        self,
        backend_host: str = "127.0.0.1",
        backend_port: int = DEFAULT_PORT,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        default_rate: float | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        status_interval: float = 2.0,
        sfd_load_timeout: float = DEFAULT_SFD_LOAD_TIMEOUT,
        startup_wait: float = DEFAULT_STARTUP_WAIT,
        snapshot_timeout: float = SNAPSHOT_TIMEOUT,
        reconnect_delay: ExponentialRandomBackoff | None = None,
        **server_options: Any,
    ) -> None:
        if default_rate is not None and not default_rate > 0:
            raise InvalidUsage("default_rate must be > 0 Hz or None")
        for label, seconds in (
            ("request_timeout", request_timeout),
            ("write_timeout", write_timeout),
            ("status_interval", status_interval),
            ("sfd_load_timeout", sfd_load_timeout),
        ):
            if not seconds > 0:
                raise InvalidUsage(f"{label} must be > 0 seconds")
        if startup_wait < 0 or snapshot_timeout < 0:
            raise InvalidUsage("startup_wait and snapshot_timeout must be >= 0 seconds")
        super().__init__(
            backend_host,
            backend_port,
            listen_host=listen_host,
            listen_port=listen_port,
            reconnect_delay=reconnect_delay,
            startup_wait=startup_wait,
            **server_options,
        )
        self.default_rate = default_rate
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.status_interval = status_interval
        self.sfd_load_timeout = sfd_load_timeout
        self.snapshot_timeout = snapshot_timeout
        self._session: _Session | None = None
        self._names = NameMap(reserved=self.STATUS_SENSORS)
        self._bindings: dict[str, _Binding] = {}
        self._path_of: weakref.WeakKeyDictionary[Sensor, str] = weakref.WeakKeyDictionary()
        #: Sampled paths -> the Scrutiny update rate they need (Hz, ``None`` = fastest).
        self._wanted: dict[str, float | None] = {}
        self._snapshot: set[str] = set()
        #: Paths a ``watchable-read`` is waiting for -> how many reads.
        self._reads: collections.Counter[str] = collections.Counter()
        self._snapshot_pending: set[str] = set()
        self._snapshot_done = asyncio.Event()
        self._model_sfd: str | None = None
        self._model_event = asyncio.Event()
        self._add_status_sensors()

    def _add_status_sensors(self) -> None:
        clock = self.clock
        for sensor in (
            Sensor("boolean", "server.connected", "The link to the Scrutiny server is up",
                   default=False, initial_status=Status.NOMINAL, clock=clock),
            Sensor("discrete", "device.comm-state", "Scrutiny server's link to the device",
                   params=COMM_STATE_VALUES, clock=clock),
            Sensor("string", "device.session-id", "Device session id (uuid hex), empty without a device",
                   clock=clock),
            Sensor("string", "device.display-name", "The device's display name, empty without a device",
                   clock=clock),
            Sensor("string", "sfd.firmware-id", "Firmware id of the loaded SFD, empty when none",
                   clock=clock),
            Sensor("discrete", "datalogger.state", "State of the device's datalogger",
                   params=DATALOGGER_STATE_VALUES, clock=clock),
            Sensor("float", "datalogger.completion",
                   "Completion of the running acquisition, 0..1 (inactive when none runs)",
                   params=(0.0, 1.0), clock=clock),
        ):
            self.add_sensor(sensor)

    # -- public state ------------------------------------------------------------------------
    @property
    def scrutiny(self) -> ScrutinyClient | None:
        """The connected :class:`ScrutinyClient`, or ``None`` while not connected."""
        session = self._session
        return session.client if session is not None else None

    @property
    def wanted_subscriptions(self) -> dict[str, float | None]:
        """Scrutiny path -> update rate (Hz, ``None`` = fastest) of the sampled watchables."""
        return dict(self._wanted)

    def path_of(self, name: str) -> str:
        """The Scrutiny path of a watchable given by sensor name or path.

        :raises InvalidUsage: for a name that is neither a watchable's sensor nor a path.
        """
        try:
            return self._names.resolve(name)
        except InvalidUsage:
            if name.startswith("/"):
                return name  # e.g. an array element of a var factory: the server knows
            raise InvalidUsage(f"Unknown watchable {name!r}: not a sensor name or a Scrutiny path") from None

    # -- life cycle --------------------------------------------------------------------------
    async def run_backend(self) -> None:
        """One connection: connect, build the model, follow the server until the connection ends.

        :raises KatclientConnectionError: when the server cannot be reached.
        :raises KatclientTimeoutError: when it does not answer in time.
        """
        client = ScrutinyClient(
            self.backend_host,
            self.backend_port,
            timeout=self.request_timeout,
            write_timeout=self.write_timeout,
            status_interval=self.status_interval,
            reconnect=False,
        )
        session = _Session(client)
        client.add_event_callback(lambda event: self._on_event(session, event))
        client.add_value_callback(self._on_values)
        self._session = session
        tasks: list[asyncio.Task[None]] = []
        try:
            await client.connect(self.request_timeout)
            self._publish("server.connected", True)
            if client.status is not None:
                self._apply_status(client.status)
            session.dirty.clear()  # the first status's events: this build covers them
            await self._build_model(session)
            self.backend_ready.set()
            loop = asyncio.get_running_loop()
            tasks = [
                loop.create_task(self._model_loop(session), name="scrutiny-device-model"),
                loop.create_task(self._subscription_loop(session), name="scrutiny-device-subscriptions"),
            ]
            await session.gone.wait()
            logger.info("ScrutinyDevice: lost %s:%s: %s", self.backend_host, self.backend_port, session.reason)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def close_backend(self) -> None:
        """Close the Scrutiny connection (idempotent); the status sensors show the link down."""
        session, self._session = self._session, None
        self._snapshot.clear()
        self._snapshot_pending.clear()
        if session is not None:
            session.gone.set()
            await session.client.close()
        self._publish("server.connected", False)
        self.mark_unreachable([n for n in self.STATUS_SENSORS if n != "server.connected"])

    # -- Scrutiny events (called from the client's reader: quick, no I/O) -------------------------
    def _on_event(self, session: _Session, event: ScrutinyEvent) -> None:
        if isinstance(event, StatusUpdated):
            if self._session is session:
                self._apply_status(event.status)
        elif isinstance(event, (DeviceReady, DeviceGone, SFDLoaded, SFDUnloaded)):
            session.dirty.set()
        elif isinstance(event, ServerDisconnected):
            session.reason = event.reason
            session.gone.set()

    def _on_values(self, batch: Sequence[WatchableValue]) -> None:
        bindings = self._bindings
        pending = self._snapshot_pending
        for update in batch:
            binding = bindings.get(update.path)
            if binding is None:
                continue
            if pending and update.path in pending:
                pending.discard(update.path)
                if not pending:
                    self._snapshot_done.set()
            binding.publish(update)

    def _publish(self, name: str, value: Any, status: Status = Status.NOMINAL) -> None:
        sensor = self.sensors.get(name)
        if sensor is not None and (sensor.value != value or sensor.status is not status):
            sensor.set_value(value, status)

    def _apply_status(self, status: ServerStatus) -> None:
        comm = status.device_comm_state
        self._publish("device.comm-state", _kebab(comm.value), _COMM_STATUS[comm])
        self._publish("device.session-id", status.device_session_id or "")
        self._publish("sfd.firmware-id", status.sfd_firmware_id or "")
        dl = status.datalogging
        dl_status = Status.ERROR if dl.state is DataloggerState.ERROR else Status.NOMINAL
        self._publish("datalogger.state", _kebab(dl.state.value), dl_status)
        ratio = dl.completion_ratio
        if ratio is None:
            self._publish("datalogger.completion", self.sensors["datalogger.completion"].value, Status.INACTIVE)
        else:
            self._publish("datalogger.completion", min(1.0, max(0.0, float(ratio))))
        if not status.device_ready:
            self._publish("device.display-name", "")

    # -- the model -----------------------------------------------------------------------------
    async def _model_loop(self, session: _Session) -> None:
        while True:
            await session.dirty.wait()
            await asyncio.sleep(MODEL_DEBOUNCE)
            session.dirty.clear()
            try:
                await self._build_model(session)
            except KatclientConnectionError:
                return
            except Exception as exc:  # a bad message must not end the loop (DESIGN.md 5)
                logger.warning("ScrutinyDevice: model rebuild failed: %s; retrying", exc,
                               exc_info=not isinstance(exc, KatclientError))
                await asyncio.sleep(RETRY_DELAY)
                session.dirty.set()

    async def _build_model(self, session: _Session) -> None:
        """List the watchables, make the sensor set match them (one batch), read every value once."""
        client = session.client
        listing = await client.list_watchables()
        entries = list(listing)
        if len(entries) > MAX_WATCHABLE_SENSORS:
            logger.warning("ScrutinyDevice: %d watchables; sensors for the first %d only",
                           len(entries), MAX_WATCHABLE_SENSORS)
            entries = entries[:MAX_WATCHABLE_SENSORS]
        details: dict[str, WatchableInfo] = {}
        try:
            for chunk in _chunks([e.path for e in entries], PATHS_PER_REQUEST):
                details.update(await client.get_watchable_info(chunk))
        except ScrutinyError as exc:
            # The model changed under us (a watchable vanished): the status that says so follows.
            logger.info("ScrutinyDevice: watchable details unavailable (%s); using the listing", exc)
        names = NameMap(reserved=self.STATUS_SENSORS)
        specs: list[tuple[str, SensorSpec]] = []
        sensors: list[Sensor] = []
        for entry in entries:
            info = details.get(entry.path, entry)
            try:
                spec = sensor_spec(info)
            except KatclientError as exc:
                logger.warning("ScrutinyDevice: no sensor for %s: %s", entry.path, exc)
                continue
            name = names.add(info.path)
            sensor = Sensor(spec.stype, name, spec.description, params=spec.params, clock=self.clock)
            self._path_of[sensor] = info.path
            specs.append((name, spec))
            sensors.append(sensor)
        self._names = names
        self.replace_sensors(sensors, keep=self.STATUS_SENSORS)
        self._bindings = {spec.path: _Binding(spec, self.sensors[name]) for name, spec in specs}
        status = client.status
        self._model_sfd = status.sfd_firmware_id if status is not None else None
        pulse, self._model_event = self._model_event, asyncio.Event()
        pulse.set()
        await self._update_display_name(client)
        await self._snapshot_values(session, [spec.path for _, spec in specs[:MAX_SNAPSHOT]])

    async def _update_display_name(self, client: ScrutinyClient) -> None:
        status = client.status
        name = ""
        if status is not None and status.device_ready:
            info = await client.get_device_info()
            name = info.display_name if info is not None else ""
        self._publish("device.display-name", name)

    async def _snapshot_values(self, session: _Session, paths: list[str]) -> None:
        """Subscribe every path until each sent a value (bounded), then keep only the sampled ones."""
        if not paths or self.snapshot_timeout <= 0:
            await self._reconcile(session)
            return
        self._snapshot = set(paths)
        self._snapshot_pending = set(paths)
        self._snapshot_done = asyncio.Event()
        try:
            await self._reconcile(session)
            await asyncio.wait_for(self._snapshot_done.wait(), self.snapshot_timeout)
        except asyncio.TimeoutError:
            logger.info("ScrutinyDevice: no first value within %s s for %d watchables",
                        self.snapshot_timeout, len(self._snapshot_pending))
        finally:
            self._snapshot.clear()
            self._snapshot_pending.clear()
        await self._reconcile(session)

    async def wait_model(self, firmware_id: str | None, timeout: float | None) -> bool:
        """Wait until the sensor set was built for SFD ``firmware_id`` (``None``: no SFD).

        :returns: whether it was, within ``timeout`` seconds.
        """

        async def until() -> None:
            while self._model_sfd != firmware_id:
                await self._model_event.wait()

        try:
            await asyncio.wait_for(until(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # -- subscriptions ---------------------------------------------------------------------------
    def sensor_sampling_changed(self, sensor: Sensor, samplings: list[Sampling]) -> None:
        """Follow KATCP sampling with Scrutiny subscriptions (module doc, "Subscriptions")."""
        path = self._path_of.get(sensor)
        if path is None:
            return  # a status sensor
        if samplings and self.sensors.get(sensor.name) is sensor:
            self._wanted[path] = update_rate(samplings, self.default_rate)
        else:
            # Nobody samples it, or it was removed/replaced (its successor is not sampled yet).
            self._wanted.pop(path, None)
        self._wake_subscriptions()

    def _wake_subscriptions(self) -> None:
        session = self._session
        if session is not None:
            session.wake.set()

    async def _subscription_loop(self, session: _Session) -> None:
        session.wake.set()
        while True:
            await session.wake.wait()
            session.wake.clear()
            try:
                await self._reconcile(session)
            except KatclientConnectionError:
                return
            except Exception as exc:
                logger.warning("ScrutinyDevice: subscription change failed: %s; retrying", exc,
                               exc_info=not isinstance(exc, KatclientError))
                await asyncio.sleep(RETRY_DELAY)
                session.wake.set()

    async def _reconcile(self, session: _Session) -> None:
        """Make the client's subscriptions match the sampled (and snapshot) watchables."""
        async with session.lock:
            client = session.client
            desired = {p: r for p, r in self._wanted.items() if p in self._bindings}
            for path in (*self._snapshot, *self._reads):
                desired.setdefault(path, self.default_rate)
            subs = client.subscriptions
            drop = [p for p, s in subs.items() if p not in desired and not s.temporary]
            for chunk in _chunks(drop, PATHS_PER_REQUEST):
                await client.unsubscribe(chunk)
            new: dict[float | None, list[str]] = {}
            changed: dict[float | None, list[str]] = {}
            for path, rate in desired.items():
                sub = subs.get(path)
                if sub is None or sub.temporary or not sub.active:
                    new.setdefault(rate, []).append(path)
                elif sub.rate != rate:
                    changed.setdefault(rate, []).append(path)
            for rate, paths in new.items():
                await self._subscribe(client, paths, rate)
            for rate, paths in changed.items():
                live = [p for p in paths if (s := client.subscriptions.get(p)) is not None and s.active]
                for chunk in _chunks(live, PATHS_PER_REQUEST):
                    await client.set_update_rate(chunk, rate)

    async def _subscribe(self, client: ScrutinyClient, paths: list[str], rate: float | None) -> None:
        for chunk in _chunks(paths, PATHS_PER_REQUEST):
            while chunk:
                try:
                    await client.subscribe(chunk, rate)
                    break
                except ScrutinyError as exc:
                    # All-or-nothing (1.4): drop the path that does not exist (any more), retry.
                    match = _UNKNOWN_WATCHABLE_RE.match(exc.msg)
                    if match is None or match.group(1) not in chunk:
                        raise
                    chunk.remove(match.group(1))
                    logger.info("ScrutinyDevice: %s is gone; not subscribed", match.group(1))

    # -- request helpers ---------------------------------------------------------------------------
    def _client(self) -> ScrutinyClient:
        client = self.scrutiny
        if client is None or not client.connected:
            raise FailReply(f"Not connected to the Scrutiny server at {self.backend_host}:{self.backend_port}")
        return client

    @contextmanager
    def _scrutiny_call(self) -> Iterator[None]:
        """Turn the client's exceptions into a one-line ``fail`` carrying the server's reason."""
        try:
            yield
        except FailReply:
            raise
        except ScrutinyError as exc:
            raise FailReply(one_line(exc.msg or str(exc))) from None
        except KatclientTimeoutError as exc:
            raise FailReply(one_line(f"Timed out: {exc}")) from None
        except KatclientConnectionError as exc:
            raise FailReply(one_line(f"Scrutiny server connection lost: {exc}")) from None
        except KatclientError as exc:  # InvalidUsage, protocol errors
            raise FailReply(one_line(str(exc))) from None
        except OSError as exc:  # sfd-install reading its file
            raise FailReply(one_line(f"{type(exc).__name__}: {exc}")) from None

    def _resolve(self, name: str) -> str:
        try:
            return self.path_of(name)
        except InvalidUsage as exc:
            raise FailReply(str(exc)) from None

    def _spec(self, path: str) -> SensorSpec | None:
        binding = self._bindings.get(path)
        return binding.spec if binding is not None else None

    # -- requests: watchables ----------------------------------------------------------------------
    @timeout_hint(DEFAULT_REQUEST_TIMEOUT + 1.0)
    async def request_watchable_read(self, ctx: RequestContext, name: str) -> Any:
        """Read a watchable's next value from the device: watchable-read NAME.

        NAME is a sensor name or a Scrutiny path.  Replies ok VALUE (as the sensor shows it: enum
        names for enums, 1/0 for booleans); fails when the value is invalid (e.g. a forbidden
        memory region) or does not arrive in time.
        """
        path = self._resolve(name)
        client = self._client()
        # Keep the path subscribed while waiting: the reconciler would otherwise drop a subscription
        # that only the model snapshot or a client sampling held, and the value would never come.
        self._reads[path] += 1
        self._wake_subscriptions()
        try:
            with self._scrutiny_call():
                update = await client.read_value(path)
        finally:
            self._reads[path] -= 1
            if self._reads[path] <= 0:
                del self._reads[path]
            self._wake_subscriptions()
        if update.value is None:
            raise FailReply(f"{path}: invalid value ({update.invalid_reason or 'no value'})")
        spec = self._spec(path)
        if spec is None:
            return update.value
        try:
            return spec.convert(update.value)
        except ValueError:
            return update.value  # an enum number without a name: show the number

    @timeout_hint(DEFAULT_WRITE_TIMEOUT + 1.0)
    async def request_watchable_write(self, ctx: RequestContext, *pairs: str) -> None:
        """Write watchables and reply once the device confirmed every write.

        watchable-write NAME VALUE [NAME VALUE...]: NAME is a sensor name or a Scrutiny path;
        VALUE a number (0x hex too), 1/0 or true/false, an enum name, or an expression the
        Scrutiny server evaluates (e.g. 2*pi).  Several pairs are written in order, as one batch.
        Fails with the device's reason when any write fails.
        """
        if not pairs or len(pairs) % 2:
            raise FailReply("Expected NAME VALUE pairs")
        if len(pairs) // 2 > MAX_WRITES:
            raise FailReply(f"At most {MAX_WRITES} writes per request")
        writes = []
        for i in range(0, len(pairs), 2):
            path = self._resolve(pairs[i])
            writes.append((path, parse_write_value(pairs[i + 1], self._spec(path))))
        client = self._client()
        with self._scrutiny_call():
            if len(writes) == 1:
                await client.write(*writes[0])
            else:
                await client.write_batch(writes)

    # -- requests: memory and user commands -----------------------------------------------------
    @timeout_hint(DEFAULT_REQUEST_TIMEOUT + 1.0)
    async def request_memory_read(self, ctx: RequestContext, address: str, size: str) -> str:
        """Read device memory: memory-read ADDRESS SIZE.

        ADDRESS and SIZE are integers (decimal or 0x hex).  Replies ok HEX (the bytes as lower-case
        hex); fails with the device's reason (e.g. Forbidden region, Size too big).
        """
        client = self._client()
        with self._scrutiny_call():
            data = await client.read_memory(parse_int(address, "ADDRESS"), parse_int(size, "SIZE"))
        return data.hex()

    @timeout_hint(DEFAULT_WRITE_TIMEOUT + 1.0)
    async def request_memory_write(self, ctx: RequestContext, address: str, data: str) -> None:
        """Write device memory: memory-write ADDRESS HEX.

        ADDRESS is an integer (decimal or 0x hex), HEX the bytes as hex digits.  Replies ok once
        written; fails with the device's reason (e.g. Forbidden, Read only).
        """
        try:
            raw = bytes.fromhex(data)
        except ValueError:
            raise FailReply(f"HEX must be pairs of hex digits, got {data[:40]!r}") from None
        client = self._client()
        with self._scrutiny_call():
            await client.write_memory(parse_int(address, "ADDRESS"), raw)

    @timeout_hint(DEFAULT_WRITE_TIMEOUT + 1.0)
    async def request_user_command(self, ctx: RequestContext, subfunction: str, data: str = "") -> str:
        """Run a device user command: user-command SUBFUNCTION [HEX].

        SUBFUNCTION is 0..255, HEX the request data.  Replies ok HEX with the device's response
        data; fails with the device's reason.
        """
        try:
            raw = bytes.fromhex(data)
        except ValueError:
            raise FailReply(f"HEX must be pairs of hex digits, got {data[:40]!r}") from None
        client = self._client()
        with self._scrutiny_call():
            response = await client.user_command(parse_int(subfunction, "SUBFUNCTION"), raw)
        return response.data.hex()

    # -- requests: SFDs --------------------------------------------------------------------------
    @timeout_hint(DEFAULT_REQUEST_TIMEOUT + 1.0)
    async def request_sfd_list(self, ctx: RequestContext) -> None:
        """List the SFDs (firmware descriptions) the server has installed, and the loaded one.

        Informs #sfd-list FIRMWARE_ID LOADED INSTALLED PROJECT VERSION AUTHOR (LOADED and
        INSTALLED 1/0; the demo device's SFD is loaded without being installed).  Replies ok COUNT.
        """
        client = self._client()
        with self._scrutiny_call():
            installed = await client.get_installed_sfds()
            loaded = await client.get_loaded_sfd()
        infos = dict(installed)
        if loaded is not None:
            infos.setdefault(loaded.firmware_id, loaded)
        rows = []
        for fw, info in sorted(infos.items()):
            meta = info.metadata
            rows.append((
                fw,
                loaded is not None and loaded.firmware_id == fw,
                fw in installed,
                (meta.project_name if meta else None) or "",
                (meta.version if meta else None) or "",
                (meta.author if meta else None) or "",
            ))
        ctx.informs(rows)

    @timeout_hint(DEFAULT_SFD_LOAD_TIMEOUT + 1.0)
    async def request_sfd_load(self, ctx: RequestContext, firmware_id: str) -> None:
        """Load an installed SFD: sfd-load FIRMWARE_ID (32 hex digits).

        Replies ok once the server reports it loaded and the sensors show its watchables (one
        #interface-changed); fails when the server does not load it in time (not installed?).
        """
        client = self._client()
        with self._scrutiny_call():
            await client.load_sfd(firmware_id, timeout=self.sfd_load_timeout)
        await self.wait_model(firmware_id.lower(), self.sfd_load_timeout)

    @timeout_hint(4 * DEFAULT_REQUEST_TIMEOUT)
    async def request_sfd_install(self, ctx: RequestContext, path: str) -> str:
        """Install an SFD file on the server: sfd-install PATH.

        PATH is a .sfd file on the host running this KATCP device.  Replies ok FIRMWARE_ID; fails
        when the file is not an SFD or the server refuses it.
        """
        client = self._client()
        with self._scrutiny_call():
            info = await client.install_sfd(path)
        return info.firmware_id

    @timeout_hint(DEFAULT_REQUEST_TIMEOUT + 1.0)
    async def request_sfd_uninstall(self, ctx: RequestContext, firmware_id: str, *more: str) -> None:
        """Uninstall SFDs: sfd-uninstall FIRMWARE_ID [FIRMWARE_ID...] (unloads the loaded one if listed).

        Fails, uninstalling nothing, when one is not installed.
        """
        client = self._client()
        with self._scrutiny_call():
            await client.uninstall_sfds([firmware_id, *more])

    # -- requests: datalogging ---------------------------------------------------------------------
    @timeout_hint(DEFAULT_ACQUIRE_WAIT + DEFAULT_REQUEST_TIMEOUT + 1.0)
    async def request_datalog_acquire(self, ctx: RequestContext, signals: str, *options: str) -> str:
        """Run a datalogging acquisition on the device; reply with its reference id when stored.

        datalog-acquire SIGNALS [KEY=VALUE...]: SIGNALS is a comma-separated list of sensor names
        or Scrutiny paths (all on one Y axis).  Options:
          sampling-rate=ID  identifier of one of the device's sampling rates (default 0; see ?device-info)
          decimation=N      keep one sample in N (default 1)
          timeout=S         seconds after which the acquisition ends at the latest, 0 for none (default 0)
          trigger=COND      true (default), eq, neq, lt, let, gt, get, cmt or within
          operands=A,B[,C]  trigger operands (2, or 3 for within): numbers or NAMEs
          hold-time=S       seconds the condition must hold before triggering (default 0)
          probe-location=F  trigger position in the buffer, 0..1 (default 0.5)
          x-axis=TYPE       index (default), ideal-time, measured-time or signal
          x-signal=NAME     the X axis signal (with x-axis=signal)
          name=TEXT         a name for the stored acquisition
          wait=S            seconds to wait for the acquisition (default 60)
        Example: datalog-acquire sine-wave,rpv.x2000 trigger=gt operands=up-time,5 name=test
        Replies ok REFERENCE_ID; fails with the server's reason.
        """
        try:
            config, wait = parse_acquire_args([signals, *options], self.path_of)
        except InvalidUsage as exc:
            raise FailReply(str(exc)) from None
        client = self._client()
        with self._scrutiny_call():
            return await client.acquire(config, timeout=wait)

    @timeout_hint(DEFAULT_REQUEST_TIMEOUT + 1.0)
    async def request_datalog_list(self, ctx: RequestContext, count: int = 500) -> None:
        """List stored acquisitions, newest first: datalog-list [COUNT] (default 500, at most 10000).

        Informs #datalog-list REFERENCE_ID NAME TIMESTAMP FIRMWARE_ID (TIMESTAMP in seconds since
        the epoch).  Replies ok COUNT.
        """
        if not 0 <= count <= 10_000:
            raise FailReply("COUNT must be 0..10000")
        client = self._client()
        with self._scrutiny_call():
            acquisitions = await client.list_acquisitions(count=count)
        ctx.informs((a.reference_id, a.name or "", a.timestamp, a.firmware_id) for a in acquisitions)

    @timeout_hint(DEFAULT_REQUEST_TIMEOUT + 1.0)
    async def request_datalog_read(self, ctx: RequestContext, reference_id: str) -> tuple[Any, ...]:
        """Read a stored acquisition: datalog-read REFERENCE_ID.

        Informs #datalog-read NAME AXIS PATH SAMPLES, first for the X axis (AXIS x), then one per
        signal (AXIS its Y axis name); PATH is the Scrutiny path (empty when none) and SAMPLES the
        comma-separated values.  Replies ok COUNT NAME TIMESTAMP TRIGGER_INDEX (COUNT informs;
        TIMESTAMP in seconds since the epoch; TRIGGER_INDEX empty when unknown).
        """
        client = self._client()
        with self._scrutiny_call():
            acq = await client.read_acquisition(reference_id)
        axes = {a.axis_id: a.name for a in acq.yaxes}
        rows: list[tuple[Any, ...]] = [
            (acq.xdata.name or "x", "x", acq.xdata.watchable_path or "", _samples(acq.xdata.data))
        ]
        for series in acq.signals:
            axis = axes.get(series.axis_id, "") if series.axis_id is not None else ""
            rows.append((series.name or "", axis, series.watchable_path or "", _samples(series.data)))
        for row in rows:
            ctx.inform(*row)
        trigger = "" if acq.trigger_index is None else acq.trigger_index
        return (len(rows), acq.name, acq.timestamp, trigger)

    @timeout_hint(DEFAULT_REQUEST_TIMEOUT + 1.0)
    async def request_datalog_delete(self, ctx: RequestContext, reference_id: str) -> None:
        """Delete a stored acquisition: datalog-delete REFERENCE_ID."""
        client = self._client()
        with self._scrutiny_call():
            await client.delete_acquisition(reference_id)

    # -- requests: device and server -------------------------------------------------------------
    @timeout_hint(DEFAULT_REQUEST_TIMEOUT + 1.0)
    async def request_device_info(self, ctx: RequestContext) -> None:
        """Describe the connected device: informs #device-info KEY VALUE... ; replies ok COUNT.

        Keys: session-id, device-id, display-name, max-tx-data-size, max-rx-data-size,
        max-bitrate-bps, rx-timeout-us, heartbeat-timeout-us, address-size-bits, protocol-version,
        char-bit, feature.memory-write, feature.datalogging, feature.user-command, feature.64bits,
        forbidden-region START END, readonly-region START END (one per region, hex),
        datalogging.encoding, datalogging.buffer-size, datalogging.max-signals and
        datalogging.sampling-rate ID NAME FREQUENCY_HZ TYPE (one per rate; FREQUENCY_HZ empty for a
        variable rate).  Fails when no device is connected.
        """
        client = self._client()
        with self._scrutiny_call():
            info = await client.get_device_info()
        if info is None:
            raise FailReply("No device is connected to the Scrutiny server")
        ctx.informs(device_info_rows(info))

    @timeout_hint(DEFAULT_REQUEST_TIMEOUT + 1.0)
    async def request_server_stats(self, ctx: RequestContext) -> None:
        """The Scrutiny server's statistics: informs #server-stats KEY VALUE; replies ok COUNT.

        Keys as the server names them, with dashes: uptime (s), invalid-request-count,
        unexpected-error-count, client-count, to-all-clients-datarate-byte-per-sec, ...
        """
        client = self._client()
        with self._scrutiny_call():
            stats = await client.get_server_stats()
        ctx.informs(server_stats_rows(stats))


def _samples(data: Sequence[float]) -> str:
    return ",".join(repr(float(x)) for x in data)


def device_info_rows(info: DeviceInfo) -> list[tuple[Any, ...]]:
    """The ``#device-info`` informs of a device description (see ``?help device-info``)."""
    feats = info.supported_features
    rows: list[tuple[Any, ...]] = [
        ("session-id", info.session_id),
        ("device-id", info.device_id),
        ("display-name", info.display_name),
        ("max-tx-data-size", info.max_tx_data_size),
        ("max-rx-data-size", info.max_rx_data_size),
        ("max-bitrate-bps", "" if info.max_bitrate_bps is None else info.max_bitrate_bps),
        ("rx-timeout-us", info.rx_timeout_us),
        ("heartbeat-timeout-us", info.heartbeat_timeout_us),
        ("address-size-bits", info.address_size_bits),
        ("protocol-version", f"{info.protocol_major}.{info.protocol_minor}"),
        ("char-bit", info.char_bit),
        ("feature.memory-write", feats.memory_write),
        ("feature.datalogging", feats.datalogging),
        ("feature.user-command", feats.user_command),
        ("feature.64bits", feats.sixtyfour_bits),
    ]
    rows += [("forbidden-region", hex(r.start), hex(r.end)) for r in info.forbidden_memory_regions]
    rows += [("readonly-region", hex(r.start), hex(r.end)) for r in info.readonly_memory_regions]
    caps = info.datalogging_capabilities
    if caps is not None:
        rows += [
            ("datalogging.encoding", caps.encoding),
            ("datalogging.buffer-size", caps.buffer_size),
            ("datalogging.max-signals", caps.max_nb_signal),
        ]
        rows += [
            (
                "datalogging.sampling-rate",
                rate.identifier,
                rate.name,
                "" if rate.frequency is None else float(rate.frequency),
                rate.rate_type,
            )
            for rate in caps.sampling_rates
        ]
    return rows


def server_stats_rows(stats: ServerStats) -> list[tuple[str, Any]]:
    """The ``#server-stats`` informs: each field of ``get_server_stats``, named with dashes."""
    return [(_kebab(f.name), getattr(stats, f.name)) for f in dataclasses.fields(stats)]
