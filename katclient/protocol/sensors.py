"""Sensor statuses, readings and the eight KATCP sensor types (sans-I/O).

Sources: KATCP v5 spec section 3.5 (sensors) and protocols/katcp.md 1.5 (types and
their wire forms, verified), 1.6 (statuses) and 1.4 (v4 timestamps are integer
milliseconds, v5 timestamps float seconds).

Every type has a ``decode(raw, major)`` that turns wire bytes into a Python value,
an ``encode(value, major)`` for the other direction, and parameter handling for
``#sensor-list``.  Decoders are plain callables so that a client's hot path can
call them directly (``float(b"1.5")`` for a float sensor).
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

from katclient.protocol.errors import InvalidUsage

__all__ = [
    "Status",
    "STATUS_FROM_WIRE",
    "Reading",
    "ReadingView",
    "Address",
    "Lru",
    "SensorType",
    "SENSOR_TYPES",
    "sensor_type",
    "decode_timestamp",
    "encode_timestamp",
]


class Status(enum.IntEnum):
    """The seven sensor statuses (spec 3.5.2; katcp.md 1.6), with their wire names."""

    UNKNOWN = 0
    NOMINAL = 1
    WARN = 2
    ERROR = 3
    FAILURE = 4
    UNREACHABLE = 5
    INACTIVE = 6

    @property
    def wire(self) -> bytes:
        """Lower-case wire name, e.g. ``b"nominal"``."""
        return _STATUS_WIRE[self]

    def valid_value(self) -> bool:
        """True when a reading with this status carries a meaningful value (nominal, warn, error)."""
        return self in (Status.NOMINAL, Status.WARN, Status.ERROR)

    def katcp_bytes(self) -> bytes:
        return _STATUS_WIRE[self]


_STATUS_WIRE: Final = {s: s.name.lower().encode("ascii") for s in Status}
#: Wire name -> :class:`Status`.
STATUS_FROM_WIRE: Final[dict[bytes, Status]] = {v: k for k, v in _STATUS_WIRE.items()}


class Reading(NamedTuple):
    """One sensor reading.

    :ivar timestamp: float seconds since the Unix epoch (v4 milliseconds are converted).
    :ivar status: the :class:`Status`.
    :ivar value: the decoded value, typed by the sensor's type.
    """

    timestamp: float
    status: Status
    value: Any


class ReadingView:
    """Mixin: ``reading``, ``value``, ``status`` and ``timestamp`` from ``self._reading``.

    Shared by the server's sensors, the client's mirrored sensors and the blocking
    facade's sensors, which each keep one :class:`Reading` in ``_reading``.
    """

    __slots__ = ()
    _reading: Reading

    @property
    def reading(self) -> Reading:
        """The current :class:`Reading` ``(timestamp, status, value)``."""
        return self._reading

    @property
    def value(self) -> Any:
        """The value of the current reading."""
        return self._reading[2]

    @property
    def status(self) -> Status:
        """The :class:`Status` of the current reading."""
        return self._reading[1]

    @property
    def timestamp(self) -> float:
        """The current reading's time, float seconds since the epoch (0.0 before any reading)."""
        return self._reading[0]


class Address(NamedTuple):
    """A KATCP address value: ``host:port``, ``host``, or ``[ipv6]:port`` (katcp.md 1.5)."""

    host: str
    port: int | None = None

    def katcp_bytes(self) -> bytes:
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        if self.port is None:
            return host.encode("ascii")
        return f"{host}:{self.port}".encode("ascii")

    def __str__(self) -> str:
        return self.katcp_bytes().decode("ascii")

    @classmethod
    def parse(cls, raw: bytes | str) -> Address:
        """Parse ``host[:port]`` or ``[v6][:port]``.

        :raises ValueError: for a malformed address or port.
        """
        text = raw.decode("ascii") if isinstance(raw, bytes) else raw
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise ValueError(f"bad IPv6 address {text!r}")
            host = text[1:end]
            ipaddress.IPv6Address(host)
            rest = text[end + 1 :]
            if not rest:
                return cls(host, None)
            if not rest.startswith(":"):
                raise ValueError(f"bad address {text!r}")
            return cls(host, _port(rest[1:]))
        if text.count(":") == 1:
            host, port = text.split(":")
            if not host:
                raise ValueError(f"bad address {text!r}")
            return cls(host, _port(port))
        if not text or ":" in text:
            raise ValueError(f"bad address {text!r}")
        return cls(text, None)


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    return port


class Lru(enum.IntEnum):
    """Values of the ``lru`` sensor type (katcp-python's ``LRU_NOMINAL``/``LRU_ERROR``)."""

    NOMINAL = 0
    ERROR = 1


def decode_timestamp(raw: bytes, major: int = 5) -> float:
    """Decode a wire timestamp: v5 float seconds, v4 integer milliseconds (katcp.md 1.4).

    :returns: float seconds since the epoch.
    :raises ValueError: when ``raw`` is not a number.
    """
    if major >= 5:
        return float(raw)
    return float(raw) * 0.001


def encode_timestamp(ts: float, major: int = 5) -> bytes:
    """Encode seconds as a wire timestamp: v5 ``%.6f`` seconds, v4 integer milliseconds."""
    if major >= 5:
        return b"%.6f" % ts
    return b"%d" % round(ts * 1000.0)


def _decode_bool(raw: bytes) -> bool:
    if raw == b"1":
        return True
    if raw == b"0":
        return False
    raise ValueError(f"boolean must be 1 or 0, got {raw!r}")


def _decode_lru(raw: bytes) -> Lru:
    if raw == b"nominal":
        return Lru.NOMINAL
    if raw == b"error":
        return Lru.ERROR
    raise ValueError(f"lru must be nominal or error, got {raw!r}")


def _decode_str(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _decode_discrete(raw: bytes) -> str:
    return raw.decode("ascii")


def _decode_int(raw: bytes) -> int:
    return int(raw)


class SensorType:
    """One of the eight KATCP sensor types (katcp.md 1.5).

    :ivar name: the type's wire name, e.g. ``"integer"``.
    :ivar decode: ``bytes -> value`` for values (timestamps handle ``major`` in :meth:`decode_value`).
    :ivar default: the value a sensor of this type starts with.
    :ivar numeric: whether ``differential`` strategies apply.
    """

    __slots__ = ("name", "decode", "default", "numeric", "_param_count")

    def __init__(
        self, name: str, decode: Callable[[bytes], Any], default: Any, numeric: bool, param_count: str
    ) -> None:
        self.name = name
        self.decode = decode
        self.default = default
        self.numeric = numeric
        self._param_count = param_count  # "none", "range" (0 or 2) or "values" (>= 1)

    def __repr__(self) -> str:
        return f"<SensorType {self.name}>"

    def decode_value(self, raw: bytes, major: int = 5) -> Any:
        """Decode a value from the wire.

        :param raw: the unescaped value bytes.
        :param major: the KATCP major version (only timestamps depend on it).
        :raises ValueError: when ``raw`` is not a value of this type.
        """
        if self.name == "timestamp":
            return decode_timestamp(raw, major)
        return self.decode(raw)

    def encode_value(self, value: Any, major: int = 5) -> bytes:
        """Encode a value for the wire (katcp.md 1.5: int ``%d``, float ``repr``, bool ``1``/``0``...).

        :raises InvalidUsage: when ``value`` does not fit this type.
        """
        name = self.name
        try:
            if name == "float":
                return repr(float(value)).encode("ascii")
            if name == "integer":
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError("not an integer")
                return b"%d" % int(value)
            if name == "boolean":
                return b"1" if value else b"0"
            if name == "timestamp":
                return encode_timestamp(float(value), major)
            if name == "lru":
                return b"error" if Lru(value) == Lru.ERROR else b"nominal"
            if name == "address":
                addr: Address = self.check_value(value)
                return addr.katcp_bytes()
            if name == "discrete":
                if isinstance(value, enum.Enum):
                    return value.name.lower().replace("_", "-").encode("ascii")
                return value.encode("ascii") if isinstance(value, str) else bytes(value)
            # string
            if isinstance(value, (bytes, bytearray)):
                return bytes(value)
            return str(value).encode("utf-8", "surrogateescape")
        except (TypeError, ValueError, UnicodeError) as exc:
            raise InvalidUsage(f"cannot encode {value!r} as a {name} sensor value: {exc}") from None

    def check_value(self, value: Any, params: Sequence[Any] = ()) -> Any:
        """Coerce and validate a value a server is about to publish.

        :returns: the value in this type's canonical Python form.
        :raises InvalidUsage: when the value does not fit the type or, for discrete
            sensors, is not one of ``params``.
        """
        name = self.name
        try:
            if name == "float":
                return float(value)
            if name == "integer":
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError("not an integer")
                return int(value)
            if name == "boolean":
                if value in (True, False, 1, 0):  # bool, 0/1 ints and floats
                    return bool(value)
                if value in ("1", b"1", "0", b"0"):
                    return value in ("1", b"1")
                raise ValueError("not a boolean (use True/False or 1/0)")
            if name == "timestamp":
                v = float(value)
                if not math.isfinite(v):
                    raise ValueError("not finite")
                return v
            if name == "lru":
                return Lru(value)
            if name == "address":
                if isinstance(value, Address):
                    return value
                return Address(*value) if isinstance(value, tuple) else Address.parse(str(value))
            if name == "discrete":
                text = value.name.lower().replace("_", "-") if isinstance(value, enum.Enum) else str(value)
                if params and text not in params:
                    raise ValueError(f"not one of {', '.join(map(str, params))}")
                return text
            if isinstance(value, bytes):
                return value.decode("utf-8", "surrogateescape")
            return str(value)
        except (TypeError, ValueError) as exc:
            raise InvalidUsage(f"bad value {value!r} for a {name} sensor: {exc}") from None

    def parse_params(self, params: Sequence[bytes]) -> tuple[Any, ...]:
        """Decode ``#sensor-list`` parameters (katcp.md 1.5).

        Integer/float: ``()`` or ``(min, max)``; discrete: the allowed values as ``str``;
        other types: ``()``.  Unexpected extra parameters of a type that takes none are
        ignored rather than rejected, to tolerate real devices.

        :raises ValueError: for a non-numeric range bound or a discrete sensor without values.
        """
        if self._param_count == "range":
            if len(params) >= 2:
                conv = int if self.name == "integer" else float
                return (conv(params[0]), conv(params[1]))
            return ()
        if self._param_count == "values":
            if not params:
                raise ValueError("discrete sensor without values")
            return tuple(p.decode("ascii", "replace") for p in params)
        return ()

    def format_params(self, params: Sequence[Any]) -> tuple[bytes, ...]:
        """Encode parameters for ``#sensor-list``."""
        if self._param_count == "range":
            if not params:
                return ()
            return tuple(self.encode_value(p) for p in params[:2])
        if self._param_count == "values":
            return tuple(p.encode("ascii") if isinstance(p, str) else bytes(p) for p in params)
        return ()


#: The eight types by wire name (katcp.md 1.5).
SENSOR_TYPES: Final[dict[str, SensorType]] = {
    t.name: t
    for t in (
        SensorType("integer", _decode_int, 0, True, "range"),
        SensorType("float", float, 0.0, True, "range"),
        SensorType("boolean", _decode_bool, False, False, "none"),
        SensorType("lru", _decode_lru, Lru.NOMINAL, False, "none"),
        SensorType("discrete", _decode_discrete, "", False, "values"),
        SensorType("timestamp", float, 0.0, True, "none"),
        SensorType("address", Address.parse, Address("0.0.0.0", None), False, "none"),
        SensorType("string", _decode_str, "", False, "none"),
    )
}


def sensor_type(name: str | bytes | SensorType) -> SensorType:
    """Look up a sensor type by wire name.

    :raises InvalidUsage: for an unknown type name.
    """
    if isinstance(name, SensorType):
        return name
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    try:
        return SENSOR_TYPES[name]
    except KeyError:
        raise InvalidUsage(f"unknown sensor type {name!r}") from None
