"""Server-side sensors: a typed value with a status and a timestamp, plus observers.

Sources: KATCP v5 spec section 3.5 (sensors, statuses, ``#sensor-status``) and
protocols/katcp.md 1.5 (the eight types and their wire forms), 1.6 (statuses) and
4 section 1.5 (aiokatcp's ``Sensor``/``SensorSet``, whose shape this follows).

A :class:`Sensor` owns its current :class:`~katclient.protocol.Reading`.  Every
:meth:`Sensor.set_value` builds a new reading and hands it to each attached observer
``observer(sensor, reading)``; the server's per-connection samplers are such
observers.  Because the same reading usually goes to one or more clients, the sensor
also formats and caches the ``#sensor-status`` line of its latest reading (the
server's hot path, see :mod:`katclient.server.sampling`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from katclient.protocol import (
    InvalidUsage,
    Reading,
    SensorType,
    Status,
    encode_timestamp,
    escape,
    sensor_type,
)
from katclient.protocol.sensors import ReadingView

__all__ = ["Sensor", "SensorSet", "SensorObserver", "SENSOR_NAME_RE"]

#: Sensor names: printable ASCII without space or comma (the comma separates names in
#: the bulk ``?sensor-sampling a,b,c`` form, katcp.md 1.7).  KATCP convention is lower
#: case with ``.`` between levels (DESIGN.md 4); that is not enforced.
SENSOR_NAME_RE: Final = re.compile(r"[!-+\--~]+\Z")

#: ``observer(sensor, reading)``, called synchronously on every update.
SensorObserver = Callable[["Sensor", Reading], None]

#: Wire names of the statuses, indexable by the status' integer value (hot path).
_STATUS_BYTES: Final = tuple(s.wire for s in sorted(Status))

_new_reading: Final = tuple.__new__

# How a type's value goes into a ``#sensor-status`` line with one ``%`` operation.
_KIND_FLOAT: Final = 1  # ``%r`` of a float is its repr, as katcp-python sends it
_KIND_INT: Final = 2  # ``%d`` of an int or bool gives ``42`` / ``1`` / ``0``
_KIND_OTHER: Final = 3  # escaped ``SensorType.encode_value`` bytes
_KINDS: Final = {"float": _KIND_FLOAT, "integer": _KIND_INT, "boolean": _KIND_INT}

#: Python types whose values need no coercion for a given sensor type: a value of
#: exactly this type skips :meth:`SensorType.check_value` (same result, less work).
_NATIVE: Final[dict[str, type]] = {"float": float, "integer": int, "boolean": bool, "string": str}


class Sensor(ReadingView):
    """A KATCP sensor published by a :class:`~katclient.server.DeviceServer`.

    :param stype: a :class:`~katclient.protocol.SensorType` or its wire name
        (``"integer"``, ``"float"``, ``"boolean"``, ``"lru"``, ``"discrete"``,
        ``"timestamp"``, ``"address"``, ``"string"``).
    :param name: the sensor name (printable ASCII, no space or comma).
    :param description: free text for ``#sensor-list``.
    :param units: units for ``#sensor-list`` (e.g. ``"V"``, ``"s"``); may be empty.
    :param params: integer/float: ``()`` or ``(min, max)``; discrete: the allowed values
        (at least one, ``str``); other types: ``()``.
    :param default: the initial value; ``None`` gives the type's default (for a discrete
        sensor, its first allowed value).
    :param initial_status: the initial :class:`~katclient.protocol.Status`.
    :param clock: source of wall-clock time in float seconds since the epoch, used when
        :meth:`set_value` gets no timestamp (injectable for tests).
    :raises InvalidUsage: for an unknown type, a bad name, bad params or a default that
        does not fit the type.
    """

    __slots__ = (
        "_type",
        "_name",
        "_description",
        "_units",
        "_params",
        "_reading",
        "_observers",
        "_native",
        "_kind",
        "_wire_name",
        "_clock",
        "_line_reading",
        "_line",
        "_list_tail",
        "__weakref__",
    )

    def __init__(
        self,
        stype: SensorType | str,
        name: str,
        description: str = "",
        units: str = "",
        params: Sequence[Any] = (),
        *,
        default: Any = None,
        initial_status: Status = Status.UNKNOWN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        st = sensor_type(stype)
        if not isinstance(name, str) or SENSOR_NAME_RE.match(name) is None:
            raise InvalidUsage(f"invalid sensor name {name!r}: printable ASCII without space or comma")
        self._type = st
        self._name = name
        self._description = str(description)
        self._units = str(units)
        self._params = _check_params(st, name, params)
        self._observers: tuple[SensorObserver, ...] = ()
        self._native = _NATIVE.get(st.name)
        self._kind = _KINDS.get(st.name, _KIND_OTHER)
        self._wire_name = escape(name.encode("ascii"))
        self._clock = clock
        self._line_reading: Reading | None = None
        self._line = b""
        self._list_tail: bytes | None = None
        if default is None:
            default = self._params[0] if st.name == "discrete" else st.default
        value = self._check(default)
        self._reading: Reading = _new_reading(Reading, (clock(), _as_status(initial_status), value))

    # -- read-only description ---------------------------------------------------------
    @property
    def type(self) -> SensorType:
        """The sensor's :class:`~katclient.protocol.SensorType`."""
        return self._type

    @property
    def name(self) -> str:
        return self._name

    @property
    def description(self) -> str:
        return self._description

    @property
    def units(self) -> str:
        return self._units

    @property
    def params(self) -> tuple[Any, ...]:
        """Type parameters: ``()``, ``(min, max)`` or the discrete values (``str``)."""
        return self._params

    # -- the current reading -----------------------------------------------------------
    def _check(self, value: Any) -> Any:
        return self._type.check_value(value, self._params)

    def set_value(self, value: Any, status: Status = Status.NOMINAL, timestamp: float | None = None) -> None:
        """Publish a new value and tell every observer.

        :param value: the new value; coerced and validated with
            :meth:`SensorType.check_value` (a discrete value must be one of :attr:`params`).
        :param status: the reading's status.
        :param timestamp: float seconds since the epoch; ``None`` reads the sensor's clock.
        :raises InvalidUsage: when the value does not fit the type or the status is invalid.
        """
        if type(value) is not self._native:
            value = self._type.check_value(value, self._params)
        if type(status) is not Status:
            status = _as_status(status)
        reading = _new_reading(Reading, (self._clock() if timestamp is None else timestamp, status, value))
        self._reading = reading
        for observer in self._observers:
            observer(self, reading)

    def set_reading(self, reading: Reading) -> None:
        """Publish a complete reading (timestamp, status, value) and tell every observer.

        :raises InvalidUsage: when the value does not fit the type or the status is invalid.
        """
        value = self._check(reading[2])
        reading = _new_reading(Reading, (float(reading[0]), _as_status(reading[1]), value))
        self._reading = reading
        for observer in self._observers:
            observer(self, reading)

    # -- observers ---------------------------------------------------------------------
    def attach(self, observer: SensorObserver) -> None:
        """Call ``observer(sensor, reading)`` on every later update (synchronously)."""
        self._observers = (*self._observers, observer)

    def detach(self, observer: SensorObserver) -> None:
        """Stop calling ``observer``; a no-op if it is not attached."""
        obs = list(self._observers)
        try:
            obs.remove(observer)
        except ValueError:
            return
        self._observers = tuple(obs)

    @property
    def observer_count(self) -> int:
        """How many observers are attached (for tests and diagnostics)."""
        return len(self._observers)

    # -- wire formatting ---------------------------------------------------------------
    def format_value(self, value: Any, major: int = 5) -> bytes:
        """The escaped wire form of ``value`` for this sensor (v4 timestamps in ms)."""
        if self._kind == _KIND_FLOAT:
            return b"%r" % value
        if self._kind == _KIND_INT:
            return b"%d" % value
        return escape(self._type.encode_value(value, major))

    def format_reading(self, reading: Reading, major: int = 5) -> bytes:
        """``<timestamp> 1 <name> <status> <value>``: the arguments of ``#sensor-status`` and
        ``#sensor-value`` as one escaped byte string (katcp.md 1.6; v4 timestamps in ms).
        """
        return b"%s 1 %s %s %s" % (
            encode_timestamp(reading[0], major),
            self._wire_name,
            _STATUS_BYTES[reading[1]],
            self.format_value(reading[2], major),
        )

    def status_line(self, reading: Reading) -> bytes:
        """The complete KATCP v5 ``#sensor-status`` line (with ``\\n``) for ``reading``.

        The line of the latest reading is cached, so several clients sampling the same
        sensor share one formatting.  This is the server's hot path: one ``%`` operation.
        """
        if reading is self._line_reading:
            return self._line
        kind = self._kind
        if kind == _KIND_FLOAT:
            line = b"#sensor-status %.6f 1 %s %s %r\n" % (
                reading[0], self._wire_name, _STATUS_BYTES[reading[1]], reading[2]
            )
        elif kind == _KIND_INT:
            line = b"#sensor-status %.6f 1 %s %s %d\n" % (
                reading[0], self._wire_name, _STATUS_BYTES[reading[1]], reading[2]
            )
        else:
            line = b"#sensor-status %.6f 1 %s %s %s\n" % (
                reading[0],
                self._wire_name,
                _STATUS_BYTES[reading[1]],
                escape(self._type.encode_value(reading[2], 5)),
            )
        self._line_reading = reading
        self._line = line
        return line

    def status_line_v4(self, reading: Reading) -> bytes:
        """The KATCP v4 ``#sensor-status`` line (millisecond timestamps, katcp.md 1.4)."""
        return b"#sensor-status " + self.format_reading(reading, 4) + b"\n"

    def list_tail(self) -> bytes:
        """``<name> <description> <units> <type> [params...]\\n``, escaped: the arguments of a
        ``#sensor-list`` inform (katcp.md 1.5).  Cached: a sensor's description never changes.
        """
        tail = self._list_tail
        if tail is None:
            st = self._type
            tail = b"%s %s %s %s" % (
                self._wire_name,
                escape(self._description.encode("utf-8")),
                escape(self._units.encode("utf-8")),
                st.name.encode("ascii"),
            )
            if self._params:
                tail += b" " + b" ".join(map(escape, st.format_params(self._params)))
            tail = self._list_tail = tail + b"\n"
        return tail

    def __repr__(self) -> str:
        r = self._reading
        return f"<Sensor {self._name} {self._type.name} {r[1].name.lower()} {r[2]!r}>"


def _as_status(status: Any) -> Status:
    try:
        return Status(status)
    except ValueError:
        raise InvalidUsage(f"invalid sensor status {status!r}") from None


def _check_params(st: SensorType, name: str, params: Sequence[Any]) -> tuple[Any, ...]:
    params = tuple(params)
    if st.name in ("integer", "float"):
        if not params:
            return ()
        if len(params) != 2:
            raise InvalidUsage(f"sensor {name}: {st.name} params must be () or (min, max), got {params!r}")
        lo, hi = (st.check_value(p) for p in params)
        if lo > hi:
            raise InvalidUsage(f"sensor {name}: min {lo!r} > max {hi!r}")
        return (lo, hi)
    if st.name == "discrete":
        values = tuple(str(p) for p in params)
        if not values:
            raise InvalidUsage(f"discrete sensor {name} needs at least one allowed value")
        for v in values:
            if not v or not v.isascii() or any(c.isspace() for c in v):
                raise InvalidUsage(f"discrete sensor {name}: bad value {v!r} (ASCII without spaces)")
        return values
    if params:
        raise InvalidUsage(f"sensor {name}: type {st.name} takes no params, got {params!r}")
    return ()


SensorCallback = Callable[[Sensor], None]


class SensorSet(Mapping[str, Sensor]):
    """The sensors of a device: a mapping from name to :class:`Sensor`, with set-like editing.

    Adding a sensor whose name is taken replaces the old one (the remove callbacks see
    the old sensor, then the add callbacks the new one).  The server registers
    callbacks here, so editing ``server.sensors`` directly and calling
    ``server.add_sensor`` have the same effect.

    :ivar add_callbacks: ``callback(sensor)`` after a sensor was added.
    :ivar remove_callbacks: ``callback(sensor)`` after a sensor was removed or replaced.
    """

    def __init__(self, sensors: Iterable[Sensor] = ()) -> None:
        self._sensors: dict[str, Sensor] = {}
        self._sorted: list[Sensor] | None = None
        self.add_callbacks: list[SensorCallback] = []
        self.remove_callbacks: list[SensorCallback] = []
        for s in sensors:
            self.add(s)

    def __getitem__(self, name: str) -> Sensor:
        return self._sensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sensors)

    def __len__(self) -> int:
        return len(self._sensors)

    def __contains__(self, name: object) -> bool:
        return name in self._sensors

    def add(self, sensor: Sensor) -> None:
        """Add ``sensor``, replacing any sensor of the same name (a no-op if it is already here)."""
        if not isinstance(sensor, Sensor):
            raise InvalidUsage(f"not a Sensor: {sensor!r}")
        old = self._sensors.get(sensor.name)
        if old is sensor:
            return
        self._sensors[sensor.name] = sensor
        self._sorted = None
        if old is not None:
            for cb in list(self.remove_callbacks):
                cb(old)
        for cb in list(self.add_callbacks):
            cb(sensor)

    def remove(self, sensor: Sensor) -> None:
        """Remove ``sensor``.

        :raises KeyError: when this very sensor is not in the set.
        """
        if self._sensors.get(sensor.name) is not sensor:
            raise KeyError(sensor.name)
        del self[sensor.name]

    def discard(self, sensor: Sensor) -> None:
        """Remove ``sensor`` if it is in the set."""
        if self._sensors.get(sensor.name) is sensor:
            del self[sensor.name]

    def __delitem__(self, name: str) -> None:
        sensor = self._sensors.pop(name)
        self._sorted = None
        for cb in list(self.remove_callbacks):
            cb(sensor)

    def clear(self) -> None:
        """Remove every sensor."""
        for name in list(self._sensors):
            del self[name]

    def sorted_sensors(self) -> list[Sensor]:
        """All sensors sorted by name (cached until the set changes; do not modify)."""
        if self._sorted is None:
            self._sorted = [self._sensors[n] for n in sorted(self._sensors)]
        return self._sorted

    def __repr__(self) -> str:
        return f"<SensorSet of {len(self._sensors)} sensors>"
