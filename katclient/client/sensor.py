"""The client-side mirror of a device's sensor, and request descriptions.

Sources: protocols/katcp.md 2.6 (katcp-python's lazily-built sensors that look like
they hold a real reading when they do not), 3 (aiokatcp's mirror, kept here: a reading
decoded by the sensor's type, observers, ``unreachable`` on disconnect) and 1.5/1.6
(types and statuses).

A :class:`Sensor` starts with status ``unknown`` and timestamp ``0.0`` until the device
sent a reading, so a fresh object never passes for a real one.  Objects are small
(``__slots__``, observers only when attached) because a control room mirrors tens of
thousands of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from katclient.protocol import STATUS_FROM_WIRE, Reading, SensorType, Status, sensor_type
from katclient.protocol.sensors import ReadingView, decode_timestamp

__all__ = ["Sensor", "RequestType", "Observer"]

logger = logging.getLogger(__name__)

#: ``observer(sensor, reading)``, called on every new reading.
Observer = Callable[["Sensor", Reading], None]

_UNKNOWN = Status.UNKNOWN
_INITIAL: dict[SensorType, Reading] = {}


class RequestType(NamedTuple):
    """A device's request as inspected with ``?help`` (katcp.md 2.4).

    :ivar name: the request name.
    :ivar description: its ``?help`` text.
    :ivar timeout_hint: seconds from ``?request-timeout-hint`` (flag ``T``), or ``None``.
    """

    name: str
    description: str
    timeout_hint: float | None = None


class Sensor(ReadingView):
    """A mirrored sensor: metadata from ``#sensor-list`` plus the latest reading.

    :param name: sensor name.
    :param sensor_type: wire type name or :class:`~katclient.protocol.SensorType`.
    :param description: description text.
    :param units: units text.
    :param params: decoded ``#sensor-list`` parameters (range for integer/float, values for
        discrete), as returned by :meth:`SensorType.parse_params`.
    """

    __slots__ = ("name", "type", "description", "units", "params", "_reading", "_observers", "__weakref__")

    def __init__(
        self,
        name: str,
        sensor_type: str | SensorType,
        description: str = "",
        units: str = "",
        params: Sequence[Any] = (),
    ) -> None:
        self.name = name
        stype = sensor_type if type(sensor_type) is SensorType else _lookup_type(sensor_type)
        self.type: SensorType = stype
        self.description = description
        self.units = units
        self.params = params if type(params) is tuple else tuple(params)
        # One shared (immutable) "no reading yet" per type: 10k sensors need not hold 10k copies.
        initial = _INITIAL.get(stype)
        if initial is None:
            initial = _INITIAL[stype] = Reading(0.0, _UNKNOWN, stype.default)
        self._reading = initial
        self._observers: tuple[Observer, ...] | None = None

    @property
    def sensor_type(self) -> str:
        """The type's wire name (``"float"``, ``"discrete"``...)."""
        return self.type.name

    # -- observers ---------------------------------------------------------------------
    # The observer tuple is replaced, never mutated, so notifying needs no copy and an
    # observer may attach or detach observers while being called.
    def attach(self, observer: Observer) -> None:
        """Call ``observer(sensor, reading)`` on every new reading."""
        self._observers = (*(self._observers or ()), observer)

    def detach(self, observer: Observer) -> None:
        """Stop calling ``observer``; unknown observers are ignored."""
        if self._observers and observer in self._observers:
            rest = list(self._observers)
            rest.remove(observer)
            self._observers = tuple(rest) or None

    @property
    def observers(self) -> tuple[Observer, ...]:
        return tuple(self._observers or ())

    def set(self, reading: Reading) -> None:
        """Store a reading and notify observers (an observer's exception is logged, not raised)."""
        self._reading = reading
        if self._observers is not None:
            self._notify(reading)

    def _notify(self, reading: Reading) -> None:
        for observer in self._observers or ():
            try:
                observer(self, reading)
            except Exception:
                logger.exception("sensor %s: observer %r failed", self.name, observer)

    def set_value(self, value: Any, status: Status = Status.NOMINAL, timestamp: float = 0.0) -> None:
        """Store a reading made of ``value``, ``status`` and ``timestamp`` (seconds)."""
        self.set(Reading(timestamp, status, value))

    def set_formatted(self, raw_timestamp: bytes, raw_status: bytes, raw_value: bytes, major: int = 5) -> None:
        """Decode a wire reading (katcp.md 1.5, 1.6) and store it.

        :param raw_timestamp: v5 float seconds, v4 integer milliseconds.
        :param raw_status: a status name such as ``b"nominal"``.
        :param raw_value: the unescaped value bytes.
        :param major: KATCP major version of the device.
        :raises ValueError: when a field does not decode; the sensor keeps its old reading.
        """
        status = STATUS_FROM_WIRE.get(raw_status)
        if status is None:
            raise ValueError(f"unknown sensor status {raw_status!r}")
        self.set(
            Reading(decode_timestamp(raw_timestamp, major), status, self.type.decode_value(raw_value, major))
        )

    def __repr__(self) -> str:
        ts, status, value = self.reading
        return f"<Sensor {self.name} {self.type.name} {status.name.lower()} {value!r} @{ts:.3f}>"


def _lookup_type(t: str | SensorType) -> SensorType:
    return sensor_type(t)
