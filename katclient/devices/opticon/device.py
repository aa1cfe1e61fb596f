"""``OpticonDevice``: a PyOpticon dashboard as a virtual KATCP device (DESIGN.md section 4, PyOpticon).

The wire facts are in /work/shared/protocols/pyopticon.md (cited below as "section N"); the socket client
underneath is :class:`~katclient.devices.opticon.client.OpticonClient`.  This module maps; it moves no
bytes itself.

Sensors
-------
One per dashboard field, named ``<widget>.<field>`` after the widget nickname and the field name made
KATCP-style (``Heater`` / ``Setpoint Entry`` -> ``heater.setpoint-entry``; see
:func:`~katclient.devices.base.katcp_name`; a dot inside a nickname or field name becomes ``-``, so a name
always has exactly two levels; collisions get ``-2``, ``-3``...).  The description begins with
``<nickname>.<field name>``, the names as the dashboard spells them.  Fields are strings on the dashboard
(Tk StringVars, section 1.6), so sensors are ``string`` unless a config file gives a type.

Fields come from the read-only introspection expression (section 1.6; ``OpticonClient.list_fields``), or
from a JSON config file (``config=PATH``, format in :func:`parse_config`) that can also type them.

Plus three status sensors, which stay ``nominal`` while the field sensors turn ``unreachable``:
``dashboard.connected`` (boolean), ``dashboard.polled-fields`` (integer) and ``dashboard.last-error``
(string).

Polling
-------
The dashboard has no push and serves one client per port (section 1.4), so the device polls over its single
connection, and only what some KATCP client samples: the server's ``sensor_sampling_changed`` hook feeds a
:class:`PollSchedule`.  The interval follows the strategy (:func:`poll_interval`): ``period P`` polls every
P seconds, ``event-rate``/``differential-rate`` every *shortest* seconds, and ``auto``, ``event``,
``differential`` every ``poll_interval`` seconds (default :data:`DEFAULT_POLL_INTERVAL`); never faster than
``min_poll_interval``.  Fields due together are read with one batched Eval (``OpticonClient.get_fields``).
All fields are read once after each (re)connection so every sensor starts with a value.

Typed values that do not parse (e.g. ``No Reading`` in a float field) keep the last value with status
``unknown``; a field that does not exist on the dashboard keeps it with status ``failure``.

Requests
--------
``field-get``, ``field-set`` (replies once a read-back shows the value: the dashboard answers ``Success``
before applying a Set, section 1.5), ``widget-confirm`` (section 1.7) and ``field-list``; and, only when the
device is created with ``enable_eval=True``, ``dashboard-eval`` and ``dashboard-exec`` (they run arbitrary
code in the dashboard process, DESIGN.md section 5).  Fields may be named as the dashboard spells them
(``Heater "Setpoint Entry"``), by their sensor name (``heater.setpoint-entry``), or by the two parts of it
(``heater setpoint-entry``).

Life cycle
----------
:class:`~katclient.devices.base.VirtualDevice` repeats :meth:`OpticonDevice.run_backend`: connect, discover,
read everything, then poll and watch the link until it is lost (then it raises and the base class marks the
field sensors ``unreachable`` and retries with backoff).  A dashboard that restarts comes back by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from katclient.client.backoff import ExponentialRandomBackoff
from katclient.devices.base import NameMap, VirtualDevice
from katclient.devices.opticon.client import OpticonClient
from katclient.devices.opticon.protocol import (
    DEFAULT_PORT,
    DashboardError,
    RequestQueueFull,
    UnexpectedReply,
)
from katclient.errors import (
    FailReply,
    InvalidUsage,
    KatclientConnectionError,
    KatclientError,
    KatclientTimeoutError,
)
from katclient.protocol import Sampling, Status, Strategy
from katclient.server import RequestContext, Sensor
from katclient.server.request import MethodSpec

__all__ = [
    "OpticonDevice",
    "OpticonConfig",
    "FieldOptions",
    "FieldSpec",
    "PollSchedule",
    "poll_interval",
    "parse_field_value",
    "parse_config",
    "load_config",
    "field_sensor_name",
    "FIELD_TYPES",
    "DEFAULT_POLL_INTERVAL",
    "MIN_POLL_INTERVAL",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_SET_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_KEEPALIVE",
    "DEFAULT_START_WAIT",
    "MAX_FIELDS",
    "MAX_CONFIG_BYTES",
    "CONNECTED_SENSOR",
    "POLLED_SENSOR",
    "ERROR_SENSOR",
]

logger = logging.getLogger(__name__)

#: Seconds between polls of a field sampled with ``auto``, ``event`` or ``differential``.
DEFAULT_POLL_INTERVAL: Final = 0.5
#: Shortest poll interval in seconds, whatever the strategy asks: every poll is a round trip on the one
#: connection the dashboard allows (section 1.4), and field reads are marshalled to its Tk thread (1.5).
MIN_POLL_INTERVAL: Final = 0.05
#: Seconds for one dashboard operation (the seed client's socket timeout, section 1.3).
DEFAULT_REQUEST_TIMEOUT: Final = 5.0
#: Seconds ``field-set`` waits for the read-back to show the new value (Set is asynchronous, section 1.5).
DEFAULT_SET_TIMEOUT: Final = 5.0
#: Seconds for a connection attempt, including the client's probe round trip (section 1.4).
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
#: Seconds without traffic after which a constant Eval checks that the dashboard still answers (a host
#: that vanished without closing the TCP connection is noticed only by a request timing out).
DEFAULT_KEEPALIVE: Final = 5.0
#: Seconds :meth:`OpticonDevice.start` waits for the first discovery, so that a client connecting right
#: after start (``katclient inspect opticon://...``) sees the fields.
DEFAULT_START_WAIT: Final = 3.0
#: Seconds a request waits for a lost dashboard connection to come back before failing (a short blip is
#: ridden out; a dashboard that is down fails the request quickly).
READY_WAIT: Final = 1.0
#: Extra seconds added to the timeout hints over the device's own timeouts (KATCP transit and queueing).
HINT_MARGIN: Final = 1.0
#: Seconds between checks of the link while nothing is due (the client has no loss callback).
WATCH_INTERVAL: Final = 0.2
#: A field due within this fraction of its interval is read with the batch being sent now (better batching,
#: a read at most a quarter-interval early).
GROUP_FRACTION: Final = 0.25
#: Most fields mirrored.  A dashboard with more (the introspection reply is bounded at 1 MiB) is truncated
#: with a warning; this bounds the model, the sensor set and each full read.
MAX_FIELDS: Final = 5000
#: Largest config file read, in bytes; a config is a short hand-written list.
MAX_CONFIG_BYTES: Final = 1 << 20
#: The text a keepalive Eval asks the dashboard to echo.
KEEPALIVE_TEXT: Final = "katclient-keepalive"
#: Backoff of the socket client's own retries inside one connection attempt (seconds: initial, max).
_CLIENT_BACKOFF: Final = (0.2, 1.0)

#: Status sensors (:attr:`OpticonDevice.STATUS_SENSORS`).
CONNECTED_SENSOR: Final = "dashboard.connected"
POLLED_SENSOR: Final = "dashboard.polled-fields"
ERROR_SENSOR: Final = "dashboard.last-error"

#: Sensor types a config file may give a field.
FIELD_TYPES: Final = ("string", "float", "integer", "boolean", "discrete")

_TRUE_WORDS: Final = frozenset({"1", "true", "on", "yes"})
_FALSE_WORDS: Final = frozenset({"0", "false", "off", "no"})

# Names given to NameMap: "<nickname>\x1f<field>" with "\x1f" as the hierarchy separator, and dots inside
# the names replaced with "\x1e", which katcp_name turns into "-".  Both characters cannot be typed into a
# Tk entry, so the key is unique per (nickname, field) in practice.
_LEVEL_SEP: Final = "\x1f"
_DOT_STANDIN: Final = "\x1e"


# ------------------------------------------------------------------------------------------------------
# Field model (sans-I/O)


@dataclass(frozen=True)
class FieldOptions:
    """How a field is published: what a config file can say about it.

    :ivar type: one of :data:`FIELD_TYPES`.
    :ivar units: KATCP units text (e.g. ``degC``).
    :ivar description: extra description text.
    :ivar params: ``(min, max)`` for float/integer (optional); the allowed values for discrete.
    """

    type: str = "string"
    units: str = ""
    description: str = ""
    params: tuple[Any, ...] = ()


@dataclass(frozen=True)
class FieldSpec:
    """One mirrored field: dashboard names, sensor name, publication options."""

    widget: str
    field: str
    name: str
    options: FieldOptions = FieldOptions()

    @property
    def label(self) -> str:
        """``<nickname>.<field name>`` as the dashboard spells them."""
        return f"{self.widget}.{self.field}"

    @property
    def description(self) -> str:
        """The sensor description: begins with the dashboard names, then the config text or a default."""
        extra = self.options.description or f"PyOpticon field {self.field!r} of widget {self.widget!r}"
        return f"{self.label}: {extra}"

    def make_sensor(self, clock: Callable[[], float]) -> Sensor:
        """A new sensor for this field (status ``unknown`` until read).

        :raises InvalidUsage: the options do not make a valid sensor.
        """
        o = self.options
        return Sensor(o.type, self.name, self.description, o.units, o.params, clock=clock)


def field_sensor_name(widget: str, field: str, names: NameMap) -> str:
    """Map ``(nickname, field)`` to a unique KATCP sensor name in *names* (idempotent)."""
    return names.add(_name_key(widget, field))


def _name_key(widget: str, field: str) -> str:
    return widget.replace(".", _DOT_STANDIN) + _LEVEL_SEP + field.replace(".", _DOT_STANDIN)


def parse_field_value(options: FieldOptions, text: str) -> Any:
    """Convert a field's text (fields are always strings, section 1.6) to its sensor type.

    ``boolean`` accepts 1/0, true/false, on/off, yes/no (any case); ``integer`` also accepts an integral
    float such as ``3.0``; ``discrete`` needs one of the allowed values exactly (surrounding blanks ignored).

    :returns: the value, or ``None`` when the text does not parse as that type.
    """
    kind = options.type
    if kind == "string":
        return text
    word = text.strip()
    try:
        if kind == "float":
            return float(word)
        if kind == "integer":
            try:
                return int(word)
            except ValueError:
                number = float(word)
                return int(number) if number.is_integer() else None
        if kind == "boolean":
            lower = word.lower()
            if lower in _TRUE_WORDS:
                return True
            if lower in _FALSE_WORDS:
                return False
            return None
        if kind == "discrete":
            return word if word in options.params else None
    except (ValueError, OverflowError):
        return None
    return None


# ------------------------------------------------------------------------------------------------------
# Config file (sans-I/O parsing)


@dataclass(frozen=True)
class OpticonConfig:
    """A parsed config: the listed fields in file order, and whether to discover the others too.

    :ivar fields: ``(nickname, field name) -> options``.
    :ivar discover: also mirror the fields the introspection expression finds (config options apply to
        them where listed).  False: exactly the listed fields, and no introspection Eval is sent.
    """

    fields: dict[tuple[str, str], FieldOptions]
    discover: bool = False


def parse_config(doc: object) -> OpticonConfig:
    """Validate a config document (the JSON file's content).

    Shape::

        {"discover": false,                       # optional, default false
         "widgets": {
           "Heater": {                            # widget nickname -> fields
             "Setpoint Entry": {"type": "float", "units": "degC"},
             "Temperature": {"type": "float", "units": "degC", "range": [0, 500],
                             "description": "heater temperature"},
             "Mode Selection": {"type": "discrete", "values": ["Off", "On"]},
             "Device Mode": "string",             # a type name alone
             "Device Setpoint": {}                # a string field
           },
           "Valve": ["Position Selection", "Actual Position"]   # string fields
         }}

    ``type`` is one of :data:`FIELD_TYPES`; ``values`` (discrete, required) are ASCII words without
    spaces (KATCP discrete values); ``range`` (float, integer) is ``[min, max]``.

    :raises InvalidUsage: with the location of the first problem.
    """
    if not isinstance(doc, dict):
        raise InvalidUsage("opticon config: the document must be a JSON object")
    unknown = set(doc) - {"widgets", "discover"}
    if unknown:
        raise InvalidUsage(f"opticon config: unknown keys {sorted(unknown)} (known: widgets, discover)")
    discover = doc.get("discover", False)
    if not isinstance(discover, bool):
        raise InvalidUsage("opticon config: 'discover' must be true or false")
    widgets = doc.get("widgets", {})
    if not isinstance(widgets, dict):
        raise InvalidUsage("opticon config: 'widgets' must map widget nicknames to their fields")
    if not widgets and not discover:
        raise InvalidUsage("opticon config: no widgets listed and discover is false: nothing to mirror")
    fields: dict[tuple[str, str], FieldOptions] = {}
    for widget, listing in widgets.items():
        where = f"opticon config: widgets[{widget!r}]"
        if isinstance(listing, list):
            items: Iterable[tuple[object, object]] = ((name, {}) for name in listing)
        elif isinstance(listing, dict):
            items = listing.items()
        else:
            raise InvalidUsage(f"{where} must be a list of field names or an object of field -> options")
        for field, spec in items:
            if not isinstance(field, str) or not field:
                raise InvalidUsage(f"{where}: field names must be non-empty strings, got {field!r}")
            fields[(widget, field)] = _field_options(spec, f"{where}[{field!r}]")
        if len(fields) > MAX_FIELDS:
            raise InvalidUsage(f"opticon config: more than {MAX_FIELDS} fields")
    return OpticonConfig(fields, discover)


def _field_options(spec: object, where: str) -> FieldOptions:
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        raise InvalidUsage(f"{where} must be a type name or an object")
    unknown = set(spec) - {"type", "units", "description", "values", "range"}
    if unknown:
        raise InvalidUsage(f"{where}: unknown keys {sorted(unknown)}")
    kind = spec.get("type", "string")
    if kind not in FIELD_TYPES:
        raise InvalidUsage(f"{where}: type must be one of {', '.join(FIELD_TYPES)}, got {kind!r}")
    units = spec.get("units", "")
    description = spec.get("description", "")
    if not isinstance(units, str) or not isinstance(description, str):
        raise InvalidUsage(f"{where}: units and description must be strings")
    params: tuple[Any, ...] = ()
    if kind == "discrete":
        values = spec.get("values")
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise InvalidUsage(f"{where}: a discrete field needs 'values', a non-empty list of strings")
        params = tuple(values)
    elif "values" in spec:
        raise InvalidUsage(f"{where}: 'values' is only for discrete fields")
    if "range" in spec:
        bounds = spec["range"]
        if kind not in ("float", "integer"):
            raise InvalidUsage(f"{where}: 'range' is only for float and integer fields")
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
        ):
            raise InvalidUsage(f"{where}: 'range' must be [min, max]")
        params = tuple(bounds)
    options = FieldOptions(kind, units, description, params)
    try:
        FieldSpec("w", "f", "x", options).make_sensor(lambda: 0.0)  # the sensor class validates params
    except InvalidUsage as exc:
        raise InvalidUsage(f"{where}: {exc}") from None
    return options


def load_config(path: str | os.PathLike[str]) -> OpticonConfig:
    """Read and validate a JSON config file (see :func:`parse_config`).

    :raises InvalidUsage: unreadable, larger than :data:`MAX_CONFIG_BYTES`, not JSON, or invalid.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise InvalidUsage(f"cannot read opticon config {os.fspath(path)!r}: {exc}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidUsage(f"opticon config {os.fspath(path)!r} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidUsage(f"opticon config {os.fspath(path)!r} is not valid JSON: {exc}") from exc
    return parse_config(doc)


# ------------------------------------------------------------------------------------------------------
# Polling (sans-I/O)


def poll_interval(
    samplings: Iterable[Sampling], default: float = DEFAULT_POLL_INTERVAL, minimum: float = MIN_POLL_INTERVAL
) -> float | None:
    """The poll interval in seconds that serves every client's strategy on one field.

    ``period P`` -> P; ``event-rate S L`` and ``differential-rate D S L`` -> S (when S is 0: *default*, or
    L if shorter and non-zero); ``auto``, ``event``, ``differential`` -> *default*; ``none`` -> nothing.
    Each is at least *minimum*; the result is the shortest over all clients.

    :returns: seconds, or ``None`` when nobody samples the field.
    """
    best: float | None = None
    for sampling in samplings:
        strategy, params = sampling.strategy, sampling.params
        if strategy is Strategy.NONE:
            continue
        if strategy is Strategy.PERIOD:
            interval = params[0]
        elif strategy in (Strategy.EVENT_RATE, Strategy.DIFFERENTIAL_RATE):
            shortest, longest = params[-2], params[-1]
            if shortest > 0:
                interval = shortest
            else:
                interval = min(default, longest) if longest > 0 else default
        else:
            interval = default
        interval = max(interval, minimum)
        best = interval if best is None else min(best, interval)
    return best


class PollSchedule:
    """When each sampled field is due for a read; times are the caller's monotonic clock in seconds.

    No clock of its own: every method takes ``now``.
    """

    __slots__ = ("_interval", "_due")

    def __init__(self) -> None:
        self._interval: dict[str, float] = {}
        self._due: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._interval)

    def __contains__(self, name: object) -> bool:
        return name in self._interval

    def interval(self, name: str) -> float | None:
        """The field's interval in seconds, or ``None`` when it is not polled."""
        return self._interval.get(name)

    def names(self) -> list[str]:
        """The polled fields."""
        return list(self._interval)

    def set(self, name: str, interval: float | None, now: float) -> bool:
        """Poll *name* every *interval* seconds (``None``: stop).  A new field is due at once; a shorter
        interval brings the next read forward.

        :returns: whether anything changed.
        :raises InvalidUsage: a non-positive interval.
        """
        if interval is None:
            return self.discard(name)
        if not interval > 0:
            raise InvalidUsage(f"poll interval must be > 0 seconds, got {interval!r}")
        old = self._interval.get(name)
        if old == interval:
            return False
        self._interval[name] = interval
        due = self._due.get(name)
        self._due[name] = now if due is None else min(due, now + interval)
        return True

    def discard(self, name: str) -> bool:
        """Stop polling *name*; returns whether it was polled."""
        self._due.pop(name, None)
        return self._interval.pop(name, None) is not None

    def retain(self, names: Iterable[str]) -> None:
        """Forget every field not in *names*."""
        keep = set(names)
        for name in [n for n in self._interval if n not in keep]:
            self.discard(name)

    def defer_all(self, now: float) -> None:
        """Every field was just read: each is next due one interval from *now*."""
        for name, interval in self._interval.items():
            self._due[name] = now + interval

    def next_due(self) -> float | None:
        """When the earliest field is due, or ``None`` when nothing is polled."""
        return min(self._due.values(), default=None)

    def take_due(self, now: float) -> list[str]:
        """The fields to read now, each then rescheduled one interval from *now*.

        A field is taken when due, or due within :data:`GROUP_FRACTION` of its interval, so that fields
        of similar intervals share batches.
        """
        taken = []
        for name, due in self._due.items():
            interval = self._interval[name]
            if due - now <= GROUP_FRACTION * interval:
                taken.append(name)
        for name in taken:
            self._due[name] = now + self._interval[name]
        return taken


# ------------------------------------------------------------------------------------------------------
# The device


def _failure(context: str, exc: BaseException) -> FailReply:
    """A one-line ``fail`` reason for a failed dashboard operation."""
    if isinstance(exc, DashboardError):
        return FailReply(f"{context}: the dashboard answered {exc.reply}")
    if isinstance(exc, KatclientTimeoutError):
        return FailReply(f"{context}: timed out: {exc}")
    if isinstance(exc, KatclientConnectionError):
        return FailReply(f"{context}: dashboard connection failed: {exc}")
    return FailReply(f"{context}: {exc}")


_FLOAT_OPTIONS: Final = (
    "poll_interval",
    "min_poll_interval",
    "request_timeout",
    "set_timeout",
    "connect_timeout",
    "keepalive",
    "start_wait",
)


class OpticonDevice(VirtualDevice):
    """A PyOpticon dashboard as a KATCP device (see the module docstring for the mapping).

    :param backend_host: dashboard host.
    :param backend_port: dashboard socket port (default 12345, section 1.1).  The dashboard serves one
        client per port (section 1.4): the device holds that port's connection while it runs.
    :param config: a JSON config file path, an already parsed document (dict) or :class:`OpticonConfig`
        (see :func:`parse_config`); ``None`` discovers every field.
    :param enable_eval: offer ``dashboard-eval`` and ``dashboard-exec``, which run arbitrary code in the
        dashboard process.  Off by default; off, the requests do not exist.
    :param poll_interval: seconds between reads of a field sampled with auto/event/differential.
    :param min_poll_interval: shortest poll interval in seconds, whatever the strategy.
    :param request_timeout: seconds for one dashboard operation (and for ``field-get``/``widget-confirm``).
    :param set_timeout: seconds ``field-set`` waits for the read-back to show the value.
    :param connect_timeout: seconds per connection attempt.
    :param keepalive: seconds of silence after which the link is checked with a constant Eval.
    :param start_wait: seconds :meth:`start` waits for the first discovery (0: do not wait).
    :param listen_host: KATCP listen address (loopback by default, DESIGN.md section 5).
    :param listen_port: KATCP port; 0 picks a free one.
    :param reconnect_delay: backoff between connection attempts (see VirtualDevice).
    :param server_options: passed to :class:`~katclient.server.DeviceServer`.
    :raises InvalidUsage: a bad option or config.
    """

    SCHEME: ClassVar[str] = "opticon"
    DEFAULT_PORT: ClassVar[int] = DEFAULT_PORT
    STATUS_SENSORS: ClassVar[frozenset[str]] = frozenset({CONNECTED_SENSOR, POLLED_SENSOR, ERROR_SENSOR})
    VERSION: ClassVar[str] = "katclient-opticon-0.1"

    def __init__(
        self,
        backend_host: str = "127.0.0.1",
        backend_port: int = DEFAULT_PORT,
        *,
        config: str | os.PathLike[str] | Mapping[str, Any] | OpticonConfig | None = None,
        enable_eval: bool = False,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        min_poll_interval: float = MIN_POLL_INTERVAL,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        set_timeout: float = DEFAULT_SET_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        keepalive: float = DEFAULT_KEEPALIVE,
        start_wait: float = DEFAULT_START_WAIT,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        reconnect_delay: ExponentialRandomBackoff | None = None,
        **server_options: Any,
    ) -> None:
        for option, value in (
            ("poll_interval", poll_interval),
            ("min_poll_interval", min_poll_interval),
            ("request_timeout", request_timeout),
            ("set_timeout", set_timeout),
            ("connect_timeout", connect_timeout),
            ("keepalive", keepalive),
        ):
            if not value > 0:
                raise InvalidUsage(f"{option} must be > 0 seconds, got {value!r}")
        if not start_wait >= 0:
            raise InvalidUsage(f"start_wait must be >= 0 seconds, got {start_wait!r}")
        super().__init__(
            backend_host,
            backend_port,
            listen_host=listen_host,
            listen_port=listen_port,
            reconnect_delay=reconnect_delay,
            startup_wait=start_wait,
            **server_options,
        )
        if config is None or isinstance(config, OpticonConfig):
            self.config: OpticonConfig | None = config
        elif isinstance(config, Mapping):
            self.config = parse_config(dict(config))
        else:
            self.config = load_config(config)
        self.enable_eval = bool(enable_eval)
        self.poll_interval = float(poll_interval)
        self.min_poll_interval = float(min_poll_interval)
        self.request_timeout = float(request_timeout)
        self.set_timeout = float(set_timeout)
        self.connect_timeout = float(connect_timeout)
        self.keepalive = float(keepalive)

        self._client: OpticonClient | None = None
        self._ready_client: OpticonClient | None = None
        self._schedule = PollSchedule()
        self._poll_wake = asyncio.Event()
        self._closing = False
        self._last_poll_error = ""
        # The current model: sensor name -> spec, and the lookups requests use.
        self._fields: dict[str, FieldSpec] = {}
        self._pairs: dict[tuple[str, str], FieldSpec] = {}
        self._labels: dict[str, FieldSpec] = {}
        self._nicknames: set[str] = set()
        self._widget_alias: dict[str, str] = {}

        self.add_sensor(
            Sensor(
                "boolean",
                CONNECTED_SENSOR,
                f"Whether the PyOpticon dashboard at {backend_host}:{backend_port} is connected and its "
                "fields are mirrored",
                default=False,
                initial_status=Status.NOMINAL,
                clock=self.clock,
            )
        )
        self.add_sensor(
            Sensor(
                "integer",
                POLLED_SENSOR,
                "Dashboard fields polled now, because some client samples their sensor",
                default=0,
                initial_status=Status.NOMINAL,
                clock=self.clock,
            )
        )
        self.add_sensor(
            Sensor(
                "string",
                ERROR_SENSOR,
                "Why the dashboard connection or the last poll failed (empty: no failure yet)",
                initial_status=Status.NOMINAL,
                clock=self.clock,
            )
        )
        if self.config is not None and not self.config.discover:
            self._install(self._build_specs(None))  # the model is known before the dashboard answers

        hint = self.request_timeout + HINT_MARGIN
        self._register("field-get", OpticonDevice._field_get, hint)
        self._register("field-set", OpticonDevice._field_set, self.set_timeout + HINT_MARGIN)
        self._register("widget-confirm", OpticonDevice._widget_confirm, hint)
        self._register("field-list", OpticonDevice._field_list, None)
        if self.enable_eval:
            self._register("dashboard-eval", OpticonDevice._dashboard_eval, hint)
            self._register("dashboard-exec", OpticonDevice._dashboard_exec, hint)

    @classmethod
    def from_target(
        cls, host: str, port: int, *, listen_host: str = "127.0.0.1", listen_port: int = 0, **options: Any
    ) -> OpticonDevice:
        """Build the device for ``opticon://HOST:PORT`` (:mod:`katclient.targets`).

        String option values (as a command line gives them) are converted: the ``*_timeout``,
        ``*interval``, ``keepalive`` and ``start_wait`` options to float, ``enable_eval`` from
        1/0/true/false/yes/no.

        :raises InvalidUsage: an option value that does not convert, or a bad option or config.
        """
        converted: dict[str, Any] = {}
        for key, value in options.items():
            if isinstance(value, str) and key in _FLOAT_OPTIONS:
                try:
                    value = float(value)
                except ValueError:
                    raise InvalidUsage(f"option {key} must be a number of seconds, got {value!r}") from None
            elif isinstance(value, str) and key == "enable_eval":
                word = value.strip().lower()
                if word not in _TRUE_WORDS | _FALSE_WORDS:
                    raise InvalidUsage(f"option enable_eval must be true or false, got {value!r}")
                value = word in _TRUE_WORDS
            converted[key] = value
        return cls(host, port, listen_host=listen_host, listen_port=listen_port, **converted)

    def _register(self, name: str, method: Callable[..., Any], timeout_hint: float | None) -> None:
        """Add a request served by *method* (``method(self, ctx, arg: T, ...)``, docstring = help), with
        arguments decoded from its annotations as for ``request_<name>`` methods."""
        handler = MethodSpec(name, method).bind(self)
        self.add_request(name, lambda ctx, *args: handler(ctx, args), handler.help, timeout_hint)

    # -- life cycle ------------------------------------------------------------------------------------
    async def run_backend(self) -> None:
        """One dashboard connection: connect, discover (or take the config's fields), read every field,
        then poll sampled fields until the connection is lost.

        :raises KatclientConnectionError: not connected within ``connect_timeout``, or the link was lost.
        :raises KatclientError: discovery failed (e.g. the introspection reply was not understood).
        """
        client = OpticonClient(
            self.backend_host,
            self.backend_port,
            timeout=self.request_timeout,
            connect_timeout=self.connect_timeout,
            backoff=ExponentialRandomBackoff(*_CLIENT_BACKOFF, 2.0, 0.5),
        )
        self._client = client
        try:
            await client.connect()
            generation = client.connection_count
            listing = None
            if self.config is None or self.config.discover:
                listing = await client.list_fields()
            self._install(self._build_specs(listing))
            await self._read(client, list(self._fields.values()))
            self._schedule.defer_all(asyncio.get_running_loop().time())
            self.reconnect_delay.success()
            self._set_status(CONNECTED_SENSOR, True)
            self._ready_client = client
            self.backend_ready.set()
            logger.info(
                "OpticonDevice: mirroring %d fields of the dashboard at %s:%s",
                len(self._fields),
                self.backend_host,
                self.backend_port,
            )
            await self._follow(client, generation)
        except Exception as exc:
            self._set_status(ERROR_SENSOR, _one_line(exc))
            raise
        finally:
            self._ready_client = None

    async def on_stop(self) -> None:
        """End the backend (see VirtualDevice.on_stop).

        The poll loop also checks a flag set here: before Python 3.12, ``asyncio.wait_for`` (used inside
        the socket client) can swallow a cancellation that coincides with its result, and a loop that
        relied on cancellation alone could then run on and make :meth:`stop` wait forever.
        """
        self._closing = True
        self._poll_wake.set()
        await super().on_stop()

    async def close_backend(self) -> None:
        """Close the dashboard connection (sends ``Close``, section 1.2) and mark it down.  Idempotent."""
        client, self._client = self._client, None
        self._ready_client = None
        self._set_status(CONNECTED_SENSOR, False)
        if client is not None:
            await client.close()

    def _set_status(self, name: str, value: Any) -> None:
        sensor = self.sensors.get(name)
        if sensor is not None and sensor.value != value:
            sensor.set_value(value)

    # -- the model -------------------------------------------------------------------------------------
    def _build_specs(self, listing: Mapping[str, Sequence[str]] | None) -> list[FieldSpec]:
        pairs: dict[tuple[str, str], None] = {}
        nicknames: set[str] = set()
        if listing is not None:
            for widget, fields in listing.items():
                nicknames.add(widget)
                pairs.update(((widget, f), None) for f in fields)
        config = self.config
        if config is not None:
            pairs.update(dict.fromkeys(config.fields))
            nicknames.update(w for w, _ in config.fields)
        if len(pairs) > MAX_FIELDS:
            logger.warning(
                "OpticonDevice: the dashboard has %d fields; mirroring the first %d", len(pairs), MAX_FIELDS
            )
        self._nicknames = nicknames
        names = NameMap(_LEVEL_SEP, reserved=self.STATUS_SENSORS)
        options = config.fields if config is not None else {}
        return [
            FieldSpec(w, f, field_sensor_name(w, f, names), options.get((w, f), FieldOptions()))
            for (w, f), _ in zip(pairs, range(MAX_FIELDS))
        ]

    def _install(self, specs: list[FieldSpec]) -> None:
        """Make *specs* the model: lookups, then the sensors in one batch (one ``#interface-changed``)."""
        self._fields = {s.name: s for s in specs}
        self._pairs = {(s.widget, s.field): s for s in specs}
        self._labels = {s.label: s for s in specs}
        alias: dict[str, str | None] = {}
        for s in specs:
            part = s.name.split(".", 1)[0]
            alias[part] = s.widget if alias.get(part, s.widget) == s.widget else None  # None: ambiguous
        self._widget_alias = {k: v for k, v in alias.items() if v is not None}
        self.replace_sensors([s.make_sensor(self.clock) for s in specs], keep=self.STATUS_SENSORS)
        self._schedule.retain(self._fields)
        self._update_polled()

    def _publish(self, spec: FieldSpec, text: str | None, timestamp: float) -> None:
        """Set a field's sensor from the text read (``None``: the field does not exist)."""
        sensor = self.sensors.get(spec.name)
        if sensor is None or self._fields.get(spec.name) is not spec:
            return
        if text is None:
            sensor.set_value(sensor.value, Status.FAILURE, timestamp)
            return
        value = parse_field_value(spec.options, text)
        if value is None:
            sensor.set_value(sensor.value, Status.UNKNOWN, timestamp)
        else:
            sensor.set_value(value, Status.NOMINAL, timestamp)

    # -- polling ---------------------------------------------------------------------------------------
    def sensor_sampling_changed(self, sensor: Sensor, samplings: list[Sampling]) -> None:
        """Poll a field's sensor at the rate its samplings ask (:func:`poll_interval`); stop when none."""
        name = sensor.name
        if not samplings:
            changed = self._schedule.discard(name)
        elif name in self._fields and self.sensors.get(name) is sensor:
            interval = poll_interval(samplings, self.poll_interval, self.min_poll_interval)
            changed = self._schedule.set(name, interval, asyncio.get_running_loop().time())
        else:
            return
        if changed:
            self._update_polled()
            self._poll_wake.set()

    def _update_polled(self) -> None:
        self._set_status(POLLED_SENSOR, len(self._schedule))

    async def _follow(self, client: OpticonClient, generation: int) -> None:
        """Poll due fields, keep the link alive, and raise when the connection is lost; return when the
        device stops."""
        loop = asyncio.get_running_loop()
        last_io = loop.time()
        while not self._closing:
            if not client.connected or client.connection_count != generation:
                reason = f": {client.last_error}" if client.last_error is not None else ""
                raise KatclientConnectionError(
                    f"connection to the dashboard at {self.backend_host}:{self.backend_port} lost{reason}"
                )
            now = loop.time()
            due = self._schedule.take_due(now)
            if due:
                await self._read(client, [self._fields[n] for n in due if n in self._fields])
                last_io = loop.time()
                continue
            if now - last_io >= self.keepalive:
                await client.do_eval(repr(KEEPALIVE_TEXT), timeout=self.request_timeout)
                last_io = loop.time()
                continue
            wait = min(WATCH_INTERVAL, last_io + self.keepalive - now)
            next_due = self._schedule.next_due()
            if next_due is not None:
                wait = min(wait, next_due - now)
            # No await since take_due: a sampling change cannot slip in between the check and the clear.
            # A timer sets the event rather than asyncio.wait_for, which before Python 3.12 can swallow a
            # cancellation that coincides with the event being set (then stop() would wait forever).
            self._poll_wake.clear()
            timer = loop.call_later(max(wait, 0.0), self._poll_wake.set)
            try:
                await self._poll_wake.wait()
            finally:
                timer.cancel()

    async def _read(self, client: OpticonClient, specs: list[FieldSpec]) -> None:
        """Read *specs* in batches and publish them.  A refused read marks them ``failure``; connection
        and timeout errors propagate (the link is then re-made)."""
        if not specs:
            return
        try:
            values = await client.get_fields([(s.widget, s.field) for s in specs])
        except RequestQueueFull:
            logger.debug("OpticonDevice: dashboard queue full; poll of %d fields skipped", len(specs))
            return
        except (DashboardError, UnexpectedReply) as exc:
            text = _one_line(exc)
            log = logger.warning if text != self._last_poll_error else logger.debug
            log("OpticonDevice: reading %d fields failed: %s", len(specs), text)
            self._last_poll_error = text
            self._set_status(ERROR_SENSOR, text)
            now = self.clock()
            for s in specs:
                sensor = self.sensors.get(s.name)
                if sensor is not None and self._fields.get(s.name) is s:
                    sensor.set_value(sensor.value, Status.FAILURE, now)
            return
        now = self.clock()
        for s in specs:
            self._publish(s, values.get((s.widget, s.field)), now)

    # -- request helpers -------------------------------------------------------------------------------
    def _resolve(self, name: str, field: str | None) -> tuple[str, str]:
        """``(nickname, field name)`` for a request's field arguments.

        One argument: a sensor name (``heater.setpoint-entry``) or ``<nickname>.<field>``.  Two: the
        dashboard's names, or the two parts of a sensor name; a known widget with an unknown field (or
        an unknown widget) is passed on as given, and the dashboard says what is wrong.

        :raises FailReply: one argument that names no mirrored field.
        """
        if field is None:
            spec = self._fields.get(name) or self._labels.get(name)
            if spec is None:
                raise FailReply(
                    f"Unknown field {name!r}: give a sensor name (see ?field-list) or WIDGET FIELD"
                )
            return spec.widget, spec.field
        if (name, field) in self._pairs:
            return name, field
        spec = self._fields.get(f"{name}.{field}")
        if spec is not None:
            return spec.widget, spec.field
        return self._widget(name), field

    def _widget(self, name: str) -> str:
        """A widget nickname, given as the dashboard spells it or as the first part of its sensor names."""
        if name in self._nicknames:
            return name
        return self._widget_alias.get(name, name)

    async def _dashboard(self, deadline: float) -> OpticonClient:
        """The connected client, waiting for it until *deadline* (loop time), at most :data:`READY_WAIT`.

        :raises FailReply: not connected in time.
        """
        client = self._ready_client
        if client is None:
            remaining = min(max(deadline - asyncio.get_running_loop().time(), 0.0), READY_WAIT)
            try:
                await asyncio.wait_for(self.backend_ready.wait(), remaining)
            except asyncio.TimeoutError:
                pass
            client = self._ready_client
        if client is None:
            error = self.last_backend_error
            raise FailReply(
                f"the dashboard at {self.backend_host}:{self.backend_port} is not connected"
                + (f" ({_one_line(error)})" if error is not None else "")
            )
        return client

    @staticmethod
    def _deadline(seconds: float) -> float:
        return asyncio.get_running_loop().time() + seconds

    @staticmethod
    def _remaining(deadline: float) -> float:
        return max(deadline - asyncio.get_running_loop().time(), 0.001)

    # -- requests (registered in __init__; the docstrings are the ?help texts) -------------------------
    async def _field_get(self, ctx: RequestContext, name: str, field: str | None = None) -> str:
        """Read a dashboard field now (a fresh Get, not the last polled value); also updates its sensor.

        ?field-get WIDGET FIELD (the dashboard's nickname and field name, or the two parts of the sensor
        name) or ?field-get SENSOR (e.g. heater.setpoint-entry).  Replies ok VALUE, the field's text.
        """
        widget, fname = self._resolve(name, field)
        deadline = self._deadline(self.request_timeout)
        client = await self._dashboard(deadline)
        try:
            text = await client.get_field(widget, fname, timeout=self._remaining(deadline))
        except KatclientError as exc:
            raise _failure(f"Get {widget}.{fname}", exc) from None
        spec = self._pairs.get((widget, fname))
        if spec is not None:
            self._publish(spec, text, self.clock())
        return text

    async def _field_set(self, ctx: RequestContext, name: str, second: str, third: str | None = None) -> str:
        """Set a dashboard field; reply once a read-back shows the new value.

        ?field-set WIDGET FIELD VALUE or ?field-set SENSOR VALUE.  The dashboard answers a Set before
        applying it, so the field is read back until it shows VALUE; fails after the set timeout (see
        ?request-timeout-hint).  A Set does not confirm: use ?widget-confirm to apply input fields to the
        instrument.  A typed field (config) refuses a VALUE of the wrong type.  Replies ok VALUE.
        """
        if third is None:
            widget, fname = self._resolve(name, None)
            value = second
        else:
            widget, fname = self._resolve(name, second)
            value = third
        spec = self._pairs.get((widget, fname))
        if spec is not None and parse_field_value(spec.options, value) is None:
            raise FailReply(f"{value!r} is not a valid {spec.options.type} value for {spec.label}")
        deadline = self._deadline(self.set_timeout)
        client = await self._dashboard(deadline)
        try:
            text = await client.set_field_verified(widget, fname, value, timeout=self._remaining(deadline))
        except KatclientError as exc:
            raise _failure(f"Set {widget}.{fname} to {value!r}", exc) from None
        if spec is not None:
            self._publish(spec, text, self.clock())
        return text

    async def _widget_confirm(self, ctx: RequestContext, widget: str) -> None:
        """Press a widget's Confirm: apply its input fields (set with ?field-set) to the instrument.

        ?widget-confirm WIDGET (nickname, or the first part of its sensor names).  The dashboard answers
        once the confirm is queued; the widget acts a moment later, so watch its readout sensors.
        Replies ok.
        """
        nickname = self._widget(widget)
        deadline = self._deadline(self.request_timeout)
        client = await self._dashboard(deadline)
        try:
            await client.do_confirm(nickname, timeout=self._remaining(deadline))
        except KatclientError as exc:
            raise _failure(f"Confirm {nickname}", exc) from None

    def _field_list(self, ctx: RequestContext, name: str | None = None) -> None:
        """List the mirrored dashboard fields: #field-list SENSOR WIDGET FIELD TYPE UNITS.

        With a widget (nickname or sensor-name part) or a sensor name, only those.  Replies ok COUNT.
        """
        specs = list(self._fields.values())
        if name is not None:
            widget = self._widget(name)
            spec = self._fields.get(name) or self._labels.get(name)
            specs = [spec] if spec is not None else [s for s in specs if s.widget == widget]
        ctx.informs((s.name, s.widget, s.field, s.options.type, s.options.units) for s in specs)

    async def _dashboard_eval(self, ctx: RequestContext, expression: str) -> str:
        """Evaluate a Python expression in the dashboard process; replies ok RESULT (its str()).

        Runs arbitrary code on the dashboard: offered only when the gateway was started with eval enabled
        (katclient bridge --enable-eval).  The namespace holds get_dashboard() and do_threadsafe(f).
        """
        deadline = self._deadline(self.request_timeout)
        client = await self._dashboard(deadline)
        # str(...) on the dashboard: a non-str result would make it drop the connection (section 1.2).
        try:
            return await client.do_eval(f"str(({expression}\n))", timeout=self._remaining(deadline))
        except KatclientError as exc:
            raise _failure("Eval", exc) from None

    async def _dashboard_exec(self, ctx: RequestContext, code: str) -> None:
        """Execute Python statements in the dashboard process (run as the body of a function); replies ok
        once they ran.

        Runs arbitrary code on the dashboard: offered only when the gateway was started with eval enabled
        (katclient bridge --enable-eval).  The namespace holds get_dashboard() and do_threadsafe(f); the
        request, code included, must fit the dashboard's 1024-byte read.
        """
        deadline = self._deadline(self.request_timeout)
        client = await self._dashboard(deadline)
        try:
            await client.do_exec(code, timeout=self._remaining(deadline))
        except KatclientError as exc:
            raise _failure("Exec", exc) from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
