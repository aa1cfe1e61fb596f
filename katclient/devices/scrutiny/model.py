"""Typed, immutable results of the Scrutiny server API, and their parsers from wire dicts.

Source: protocols/scrutiny.md sections 1.4 (commands and replies), 1.5 (pushes) and 1.6 (values,
types, paths).  Sans-I/O: every ``parse_*`` function takes a decoded message dict and either
returns a frozen dataclass or raises :class:`~katclient.devices.scrutiny.errors.ScrutinyProtocolError`
naming the bad field.  Times on the wire are microseconds since the ``welcome`` message's
``server_time_zero_timestamp``; here they are also given as epoch seconds where an origin is known.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from katclient.devices.scrutiny.datatypes import DataType
from katclient.devices.scrutiny.errors import ScrutinyProtocolError
from katclient.errors import InvalidUsage

__all__ = [
    "WatchableType",
    "DeviceCommState",
    "DataloggerState",
    "DataloggingStatus",
    "DeviceLinkInfo",
    "ServerStatus",
    "MemoryRegion",
    "SamplingRate",
    "DataloggingCapabilities",
    "SupportedFeatures",
    "DeviceInfo",
    "WatchableCount",
    "EnumDef",
    "WatchableInfo",
    "VarFactoryInfo",
    "WatchableList",
    "WatchableValue",
    "WriteResult",
    "UserCommandResponse",
    "SFDGenerationInfo",
    "SFDMetadata",
    "SFDInfo",
    "TriggerCondition",
    "XAxisType",
    "AxisDef",
    "LoggedSignal",
    "WatchableOperand",
    "DataloggingConfig",
    "AcquisitionInfo",
    "DataSeries",
    "DataloggingAcquisition",
    "ServerStats",
    "parse_welcome",
    "parse_server_status",
    "parse_device_info",
    "parse_watchable_count",
    "parse_watchable_detail",
    "parse_watchable_list_part",
    "parse_watchable_info_map",
    "parse_sfd_info",
    "parse_installed_sfds",
    "parse_loaded_sfd",
    "parse_user_command",
    "parse_acquisition_list",
    "parse_acquisition_content",
    "parse_server_stats",
    "decode_b64",
]


# ---------------------------------------------------------------------------------------------
# field helpers


def _ctx(msg: Mapping[str, Any]) -> str:
    cmd = msg.get("cmd") if isinstance(msg, Mapping) else None
    return f"in {cmd}" if isinstance(cmd, str) else "in message"


def _bad(where: str, key: str, expected: str, value: object) -> ScrutinyProtocolError:
    return ScrutinyProtocolError(f"{where}: field {key!r} should be {expected}, got {value!r}"[:300])


def _obj(d: object, key: str, where: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise ScrutinyProtocolError(f"{where}: {key!r} should be an object, got {type(d).__name__}")
    return d


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise _bad(where, key, "a string", v)
    return v


def _ostr(d: Mapping[str, Any], key: str, where: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise _bad(where, key, "a string or null", v)
    return v


def _int(d: Mapping[str, Any], key: str, where: str) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad(where, key, "an integer", v)
    return v


def _oint(d: Mapping[str, Any], key: str, where: str) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad(where, key, "an integer or null", v)
    return v


def _num(d: Mapping[str, Any], key: str, where: str) -> float:
    v = d.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise _bad(where, key, "a number", v)
    return float(v)


def _onum(d: Mapping[str, Any], key: str, where: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise _bad(where, key, "a number or null", v)
    return float(v)


def _bool(d: Mapping[str, Any], key: str, where: str) -> bool:
    v = d.get(key)
    if not isinstance(v, bool):
        raise _bad(where, key, "a boolean", v)
    return v


def _list(d: Mapping[str, Any], key: str, where: str) -> list[Any]:
    v = d.get(key)
    if not isinstance(v, list):
        raise _bad(where, key, "a list", v)
    return v


def decode_b64(text: str, where: str = "message") -> bytes:
    """Decode a base64 field strictly.

    :raises ScrutinyProtocolError: when ``text`` is not valid base64.
    """
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ScrutinyProtocolError(f"{where}: invalid base64 data") from exc


# ---------------------------------------------------------------------------------------------
# server status (scrutiny.md 1.3, 1.4 get_server_status, 1.5 inform_server_status)


class WatchableType(enum.Enum):
    """The three kinds of watchables (scrutiny.md 1.4 detailed definition ``type``)."""

    VAR = "var"
    ALIAS = "alias"
    RPV = "rpv"


class DeviceCommState(enum.Enum):
    """``device_status`` of a server status (scrutiny.md 1.5).  Unknown strings map to UNKNOWN."""

    UNKNOWN = "unknown"
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CONNECTED_READY = "connected_ready"


class DataloggerState(enum.Enum):
    """``datalogging_state`` of a server status (scrutiny.md 1.5).  Unknown strings map to ERROR."""

    UNAVAILABLE = "unavailable"
    STANDBY = "standby"
    WAITING_FOR_TRIGGER = "waiting_for_trigger"
    ACQUIRING = "acquiring"
    DOWNLOADING = "downloading"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class DataloggingStatus:
    """The datalogger's state and, while acquiring or downloading, its completion in [0, 1]."""

    state: DataloggerState
    completion_ratio: float | None


@dataclass(frozen=True, slots=True)
class DeviceLinkInfo:
    """How the server talks to the device (``device_comm_link``)."""

    link_type: str
    config: Mapping[str, Any]
    operational: bool
    demo_mode: bool


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """One ``inform_server_status`` message.

    :param device_comm_state: the device connection state.
    :param device_session_id: uuid hex of the device session, ``None`` unless connected and ready.
    :param sfd_firmware_id: firmware id of the loaded SFD, or ``None``.
    :param datalogging: datalogger state and completion.
    :param link: the device link.
    """

    device_comm_state: DeviceCommState
    device_session_id: str | None
    sfd_firmware_id: str | None
    datalogging: DataloggingStatus
    link: DeviceLinkInfo

    @property
    def device_ready(self) -> bool:
        """True when a device is connected, its handshake done (``connected_ready``)."""
        return (
            self.device_comm_state is DeviceCommState.CONNECTED_READY and self.device_session_id is not None
        )


def parse_welcome(msg: Mapping[str, Any]) -> float:
    """The ``welcome`` message's time origin, in epoch seconds (scrutiny.md 1.3)."""
    return _num(msg, "server_time_zero_timestamp", _ctx(msg))


def parse_server_status(msg: Mapping[str, Any]) -> ServerStatus:
    """Parse ``inform_server_status``.

    :raises ScrutinyProtocolError: on a missing or mistyped field.
    """
    where = _ctx(msg)
    try:
        comm = DeviceCommState(_str(msg, "device_status", where))
    except ValueError:
        comm = DeviceCommState.UNKNOWN
    dl = _obj(msg.get("datalogging_status"), "datalogging_status", where)
    try:
        dl_state = DataloggerState(_str(dl, "datalogging_state", where))
    except ValueError:
        dl_state = DataloggerState.ERROR
    link = _obj(msg.get("device_comm_link"), "device_comm_link", where)
    link_config = link.get("link_config")
    return ServerStatus(
        device_comm_state=comm,
        device_session_id=_ostr(msg, "device_session_id", where),
        sfd_firmware_id=_ostr(msg, "loaded_sfd_firmware_id", where),
        datalogging=DataloggingStatus(dl_state, _onum(dl, "completion_ratio", where)),
        link=DeviceLinkInfo(
            link_type=str(link.get("link_type")),
            config=dict(link_config) if isinstance(link_config, Mapping) else {},
            operational=bool(link.get("link_operational")),
            demo_mode=bool(link.get("demo_mode")),
        ),
    )


# ---------------------------------------------------------------------------------------------
# device info (scrutiny.md 1.4 get_device_info)


@dataclass(frozen=True, slots=True)
class MemoryRegion:
    """A memory region, bounds inclusive: ``start`` to ``end``, ``size`` bytes."""

    start: int
    end: int
    size: int

    def touches(self, address: int, size: int) -> bool:
        """True when ``[address, address + size)`` overlaps this region."""
        return address <= self.end and address + size - 1 >= self.start


@dataclass(frozen=True, slots=True)
class SamplingRate:
    """A datalogging sampling rate: ``frequency`` in Hz, ``None`` for a variable-frequency loop."""

    identifier: int
    name: str
    frequency: float | None
    rate_type: str


@dataclass(frozen=True, slots=True)
class DataloggingCapabilities:
    """What the device's datalogger can do."""

    encoding: str
    buffer_size: int
    max_nb_signal: int
    sampling_rates: tuple[SamplingRate, ...]


@dataclass(frozen=True, slots=True)
class SupportedFeatures:
    """The device's ``supported_feature_map``."""

    memory_write: bool
    datalogging: bool
    user_command: bool
    sixtyfour_bits: bool


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """``response_get_device_info.device_info``; times in microseconds as on the wire."""

    session_id: str
    device_id: str
    display_name: str
    max_tx_data_size: int
    max_rx_data_size: int
    max_bitrate_bps: int | None
    rx_timeout_us: int
    heartbeat_timeout_us: int
    address_size_bits: int
    protocol_major: int
    protocol_minor: int
    supported_features: SupportedFeatures
    forbidden_memory_regions: tuple[MemoryRegion, ...]
    readonly_memory_regions: tuple[MemoryRegion, ...]
    datalogging_capabilities: DataloggingCapabilities | None
    char_bit: int


def _regions(items: list[Any], where: str) -> tuple[MemoryRegion, ...]:
    out = []
    for item in items:
        r = _obj(item, "memory region", where)
        out.append(MemoryRegion(_int(r, "start", where), _int(r, "end", where), _int(r, "size", where)))
    return tuple(out)


def parse_device_info(msg: Mapping[str, Any]) -> DeviceInfo | None:
    """Parse ``response_get_device_info``; ``None`` when ``available`` is false.

    :raises ScrutinyProtocolError: on a missing or mistyped field.
    """
    where = _ctx(msg)
    if not msg.get("available") or msg.get("device_info") is None:
        return None
    d = _obj(msg["device_info"], "device_info", where)
    feats = _obj(d.get("supported_feature_map"), "supported_feature_map", where)
    caps_raw = d.get("datalogging_capabilities")
    caps = None
    if caps_raw is not None:
        c = _obj(caps_raw, "datalogging_capabilities", where)
        rates = []
        for item in _list(c, "sampling_rates", where):
            r = _obj(item, "sampling_rate", where)
            rates.append(
                SamplingRate(
                    _int(r, "identifier", where),
                    _str(r, "name", where),
                    _onum(r, "frequency", where),
                    _str(r, "type", where),
                )
            )
        caps = DataloggingCapabilities(
            _str(c, "encoding", where),
            _int(c, "buffer_size", where),
            _int(c, "max_nb_signal", where),
            tuple(rates),
        )
    return DeviceInfo(
        session_id=_str(d, "session_id", where),
        device_id=_str(d, "device_id", where),
        display_name=_str(d, "display_name", where),
        max_tx_data_size=_int(d, "max_tx_data_size", where),
        max_rx_data_size=_int(d, "max_rx_data_size", where),
        max_bitrate_bps=_oint(d, "max_bitrate_bps", where),
        rx_timeout_us=_int(d, "rx_timeout_us", where),
        heartbeat_timeout_us=_int(d, "heartbeat_timeout_us", where),
        address_size_bits=_int(d, "address_size_bits", where),
        protocol_major=_int(d, "protocol_major", where),
        protocol_minor=_int(d, "protocol_minor", where),
        supported_features=SupportedFeatures(
            bool(feats.get("memory_write")),
            bool(feats.get("datalogging")),
            bool(feats.get("user_command")),
            bool(feats.get("_64bits")),
        ),
        forbidden_memory_regions=_regions(_list(d, "forbidden_memory_regions", where), where),
        readonly_memory_regions=_regions(_list(d, "readonly_memory_regions", where), where),
        datalogging_capabilities=caps,
        char_bit=_int(d, "char_bit", where),
    )


# ---------------------------------------------------------------------------------------------
# watchables (scrutiny.md 1.4 get_watchable_*, subscribe_watchable; 1.6)


@dataclass(frozen=True, slots=True)
class WatchableCount:
    """``response_get_watchable_count.qty``."""

    var: int
    alias: int
    rpv: int
    var_factory: int


def parse_watchable_count(msg: Mapping[str, Any]) -> WatchableCount:
    """Parse ``response_get_watchable_count``."""
    where = _ctx(msg)
    q = _obj(msg.get("qty"), "qty", where)
    return WatchableCount(
        _int(q, "var", where), _int(q, "alias", where), _int(q, "rpv", where), _int(q, "var_factory", where)
    )


@dataclass(frozen=True, slots=True)
class EnumDef:
    """An enum attached to a watchable: ``values`` maps labels to integers (not applied on the wire)."""

    name: str
    values: Mapping[str, int] = field(hash=False)

    def label(self, value: object) -> str | None:
        """The label of ``value``, or ``None`` when it has none."""
        for label, number in self.values.items():
            if number == value:
                return label
        return None


def _enum(d: Mapping[str, Any], where: str) -> EnumDef | None:
    raw = d.get("enum")
    if raw is None:
        return None
    e = _obj(raw, "enum", where)
    values = _obj(e.get("values"), "enum.values", where)
    clean: dict[str, int] = {}
    for label, number in values.items():
        if not isinstance(number, int) or isinstance(number, bool):
            raise _bad(where, f"enum.values.{label}", "an integer", number)
        clean[str(label)] = number
    return EnumDef(_str(e, "name", where), clean)


@dataclass(frozen=True, slots=True)
class WatchableInfo:
    """What the server says about one watchable.

    Brief entries (from ``get_watchable_list``) have ``server_id`` ``None`` and no per-type details.
    Detailed entries (``get_watchable_info``, ``subscribe_watchable``) add the server ``id`` (valid
    only until the device session or SFD changes, scrutiny.md 1.5) and, per type: var ``address``,
    ``bitoffset``, ``bitsize``; alias ``target``, ``target_type``, ``gain``, ``offset`` (``bias`` on
    the wire), ``min``, ``max``; rpv ``rpvid``.
    """

    path: str
    watchable_type: WatchableType
    dtype: str
    enum: EnumDef | None = None
    server_id: str | None = None
    address: int | None = None
    bitoffset: int | None = None
    bitsize: int | None = None
    target: str | None = None
    target_type: WatchableType | None = None
    gain: float | None = None
    offset: float | None = None
    min: float | None = None
    max: float | None = None
    rpvid: int | None = None

    @property
    def datatype(self) -> DataType:
        """The parsed :attr:`dtype`."""
        return DataType.parse(self.dtype)

    @property
    def bit_width(self) -> int:
        """Effective width in bits: ``bitsize`` for a bitfield, else the dtype's width."""
        return self.bitsize if self.bitsize is not None else DataType.parse(self.dtype).bits

    def value_range(self) -> tuple[int, int] | None:
        """Inclusive integer range for integer types (bitfield-aware), ``None`` for others."""
        dt = DataType.parse(self.dtype)
        if not dt.is_integer:
            return None
        return dt.int_range(self.bitsize)

    @property
    def depends_on_device_session(self) -> bool:
        """True when a new device session invalidates its id (an RPV, or an alias of one)."""
        return self.watchable_type is WatchableType.RPV or self.target_type is WatchableType.RPV

    @property
    def depends_on_sfd(self) -> bool:
        """True when loading or unloading an SFD invalidates its id (vars and aliases)."""
        return self.watchable_type is not WatchableType.RPV


def _wtype(value: object, where: str, key: str) -> WatchableType:
    try:
        return WatchableType(value)
    except ValueError:
        raise _bad(where, key, "'var', 'alias' or 'rpv'", value) from None


def parse_watchable_detail(
    d: object, where: str = "message", brief_type: WatchableType | None = None
) -> WatchableInfo:
    """Parse one watchable definition (brief or detailed, scrutiny.md 1.4 "Detailed definition").

    :param d: the definition object.
    :param where: context for error messages.
    :param brief_type: the type implied by the list a brief entry came from (brief entries have none).
    :raises ScrutinyProtocolError: on a missing or mistyped field.
    """
    e = _obj(d, "watchable", where)
    path = _str(e, "path", where)
    dtype = _str(e, "dtype", where)
    DataType.parse(dtype)
    wtype = brief_type if brief_type is not None and "type" not in e else _wtype(e.get("type"), where, "type")
    info: dict[str, Any] = {}
    if wtype is WatchableType.VAR:
        info = {
            "address": _oint(e, "address", where),
            "bitoffset": _oint(e, "bitoffset", where),
            "bitsize": _oint(e, "bitsize", where),
        }
    elif wtype is WatchableType.ALIAS:
        target_type = e.get("target_type")
        info = {
            "target": _ostr(e, "target", where),
            "target_type": None if target_type is None else _wtype(target_type, where, "target_type"),
            "gain": _onum(e, "gain", where),
            "offset": _onum(e, "bias", where),
            "min": _onum(e, "min", where),
            "max": _onum(e, "max", where),
        }
    elif "rpvid" in e:
        info = {"rpvid": _oint(e, "rpvid", where)}
    return WatchableInfo(
        path=path,
        watchable_type=wtype,
        dtype=dtype,
        enum=_enum(e, where),
        server_id=_ostr(e, "id", where),
        **info,
    )


@dataclass(frozen=True, slots=True)
class VarFactoryInfo:
    """An array variable the server instantiates on demand (``var_factory``, scrutiny.md 1.6).

    :param array_nodes: for each array in the path, its dimensions.
    """

    path: str
    dtype: str
    enum: EnumDef | None
    array_nodes: Mapping[str, tuple[int, ...]] = field(hash=False)


@dataclass(frozen=True, slots=True)
class WatchableList:
    """The result of listing watchables, per type."""

    var: tuple[WatchableInfo, ...] = ()
    alias: tuple[WatchableInfo, ...] = ()
    rpv: tuple[WatchableInfo, ...] = ()
    var_factory: tuple[VarFactoryInfo, ...] = ()

    def __iter__(self) -> Iterator[WatchableInfo]:
        """Iterate over vars, aliases and RPVs (not factories)."""
        yield from self.rpv
        yield from self.alias
        yield from self.var

    def __len__(self) -> int:
        return len(self.var) + len(self.alias) + len(self.rpv)

    def paths(self) -> list[str]:
        """Every var, alias and RPV path."""
        return [w.path for w in self]

    def merged(self, other: WatchableList) -> WatchableList:
        """This list followed by ``other`` (for accumulating chunked replies)."""
        return WatchableList(
            self.var + other.var,
            self.alias + other.alias,
            self.rpv + other.rpv,
            self.var_factory + other.var_factory,
        )


def parse_watchable_list_part(msg: Mapping[str, Any]) -> tuple[WatchableList, bool]:
    """Parse one ``response_get_watchable_list`` chunk.

    :returns: ``(part, done)``.
    :raises ScrutinyProtocolError: on a missing or mistyped field.
    """
    where = _ctx(msg)
    content = _obj(msg.get("content"), "content", where)
    parts: dict[str, tuple[WatchableInfo, ...]] = {}
    for key, wtype in (
        ("var", WatchableType.VAR),
        ("alias", WatchableType.ALIAS),
        ("rpv", WatchableType.RPV),
    ):
        parts[key] = tuple(parse_watchable_detail(x, where, wtype) for x in content.get(key) or [])
    factories = []
    for item in content.get("var_factory") or []:
        f = _obj(item, "var_factory", where)
        params = _obj(f.get("factory_params", {}), "factory_params", where)
        nodes = _obj(params.get("array_nodes", {}), "array_nodes", where)
        factories.append(
            VarFactoryInfo(
                _str(f, "path", where),
                _str(f, "dtype", where),
                _enum(f, where),
                {str(k): tuple(int(x) for x in v) for k, v in nodes.items()},
            )
        )
    done = msg.get("done")
    if not isinstance(done, bool):
        raise _bad(where, "done", "a boolean", done)
    return WatchableList(parts["var"], parts["alias"], parts["rpv"], tuple(factories)), done


def parse_watchable_info_map(msg: Mapping[str, Any], key: str) -> dict[str, WatchableInfo]:
    """Parse the path-to-definition map of ``response_get_watchable_info`` (``key="info"``) or
    ``response_subscribe_watchable`` (``key="subscribed"``)."""
    where = _ctx(msg)
    mapping = _obj(msg.get(key), key, where)
    return {str(path): parse_watchable_detail(d, where) for path, d in mapping.items()}


@dataclass(frozen=True, slots=True)
class WatchableValue:
    """One value update of a subscribed watchable (one record of a ``watchable_update`` push).

    :param path: the watchable's path.
    :param server_id: the server entry id the update came with.
    :param value: the decoded value; ``None`` when invalid (see ``invalid_reason``).  Enums arrive
        as integers; aliases already include gain and offset.
    :param timestamp: when the server read the value, epoch seconds (welcome origin + ``t``).
    :param server_time_us: ``t`` as sent, microseconds since the welcome origin.
    :param invalid_reason: the ``r`` field (``'nullptr'``, ``'forbidden'``) when the value is invalid.
    :param raw_b64: the ``d`` field (raw bytes, base64; vars and aliases of vars only).
    """

    path: str
    server_id: str
    value: int | float | bool | None
    timestamp: float
    server_time_us: float
    invalid_reason: str | None = None
    raw_b64: str | None = None

    @property
    def valid(self) -> bool:
        """True when the value is usable."""
        return self.value is not None

    @property
    def raw(self) -> bytes | None:
        """The raw bytes as read from the device, or ``None``."""
        return None if self.raw_b64 is None else decode_b64(self.raw_b64, "watchable_update")


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The outcome of one write of a batch (one ``inform_write_completion``)."""

    path: str
    success: bool
    failure_reason: str
    server_time_us: float | None
    timestamp: float | None


@dataclass(frozen=True, slots=True)
class UserCommandResponse:
    """``response_user_command``: the subfunction echoed and the device's response bytes."""

    subfunction: int
    data: bytes


def parse_user_command(msg: Mapping[str, Any]) -> UserCommandResponse:
    """Parse ``response_user_command``."""
    where = _ctx(msg)
    return UserCommandResponse(_int(msg, "subfunction", where), decode_b64(_str(msg, "data", where), where))


# ---------------------------------------------------------------------------------------------
# SFD (scrutiny.md 1.4 get_installed_sfd, get_loaded_sfd)


@dataclass(frozen=True, slots=True)
class SFDGenerationInfo:
    """When and with what an SFD was made; ``time`` in epoch seconds."""

    time: int | None
    python_version: str | None
    scrutiny_version: str | None
    system_type: str | None


@dataclass(frozen=True, slots=True)
class SFDMetadata:
    """An SFD's ``metadata`` block."""

    project_name: str | None
    author: str | None
    version: str | None
    generation_info: SFDGenerationInfo | None


@dataclass(frozen=True, slots=True)
class SFDInfo:
    """An installed or loaded Scrutiny Firmware Description; ``filesize`` in bytes."""

    firmware_id: str
    filesize: int | None
    metadata: SFDMetadata | None


def _metadata(raw: object, where: str) -> SFDMetadata | None:
    if raw is None:
        return None
    m = _obj(raw, "metadata", where)
    gen_raw = m.get("generation_info")
    gen = None
    if isinstance(gen_raw, Mapping):
        gen = SFDGenerationInfo(
            _oint(gen_raw, "time", where),
            _ostr(gen_raw, "python_version", where),
            _ostr(gen_raw, "scrutiny_version", where),
            _ostr(gen_raw, "system_type", where),
        )
    return SFDMetadata(
        _ostr(m, "project_name", where), _ostr(m, "author", where), _ostr(m, "version", where), gen
    )


def parse_sfd_info(d: object, where: str = "message") -> SFDInfo:
    """Parse one SFD info object ``{firmware_id, filesize, metadata}``."""
    s = _obj(d, "sfd", where)
    return SFDInfo(
        _str(s, "firmware_id", where), _oint(s, "filesize", where), _metadata(s.get("metadata"), where)
    )


def parse_installed_sfds(msg: Mapping[str, Any]) -> dict[str, SFDInfo]:
    """Parse ``response_get_installed_sfd`` into ``{firmware_id: SFDInfo}``."""
    where = _ctx(msg)
    infos = (parse_sfd_info(x, where) for x in _list(msg, "sfd_list", where))
    return {info.firmware_id: info for info in infos}


def parse_loaded_sfd(msg: Mapping[str, Any]) -> SFDInfo | None:
    """Parse ``response_get_loaded_sfd``; ``None`` when no SFD is loaded."""
    raw = msg.get("sfd")
    return None if raw is None else parse_sfd_info(raw, _ctx(msg))


# ---------------------------------------------------------------------------------------------
# datalogging (scrutiny.md 1.4 request_datalogging_acquisition and following)


class TriggerCondition(enum.Enum):
    """Datalogging trigger conditions and their wire names."""

    ALWAYS_TRUE = "true"
    EQUAL = "eq"
    NOT_EQUAL = "neq"
    LESS_THAN = "lt"
    LESS_OR_EQUAL = "let"
    GREATER_THAN = "gt"
    GREATER_OR_EQUAL = "get"
    CHANGE_MORE_THAN = "cmt"
    IS_WITHIN = "within"

    @property
    def operand_count(self) -> int:
        """How many operands the condition takes."""
        if self is TriggerCondition.ALWAYS_TRUE:
            return 0
        return 3 if self is TriggerCondition.IS_WITHIN else 2


class XAxisType(enum.Enum):
    """What the X axis of an acquisition holds."""

    INDEX = "index"
    IDEAL_TIME = "ideal_time"
    MEASURED_TIME = "measured_time"
    SIGNAL = "signal"


@dataclass(frozen=True, slots=True)
class AxisDef:
    """A Y axis of an acquisition."""

    axis_id: int
    name: str


@dataclass(frozen=True, slots=True)
class LoggedSignal:
    """A watchable to log, on Y axis ``axis_id`` (ignored for the X axis signal)."""

    path: str
    axis_id: int = 0
    name: str | None = None


@dataclass(frozen=True, slots=True)
class WatchableOperand:
    """A trigger operand that reads a watchable (by path) instead of a literal number."""

    path: str


#: A trigger operand: a literal number or a watchable.
Operand = float | int | bool | WatchableOperand


@dataclass(frozen=True, slots=True)
class DataloggingConfig:
    """An acquisition request (``request_datalogging_acquisition``).

    :param signals: the watchables to log (at least one).
    :param sampling_rate_id: ``identifier`` of one of the device's sampling rates.
    :param decimation: keep one sample in this many (>= 1).
    :param timeout: seconds; after the trigger, the acquisition ends at this time at the latest
        (0 = no timeout).
    :param trigger_hold_time: seconds the condition must hold before triggering.
    :param probe_location: position of the trigger in the buffer, in [0, 1].
    :param condition: the trigger condition.
    :param operands: its operands, as many as ``condition.operand_count``.
    :param yaxes: Y axes; by default one axis, id 0, named "Y".
    :param x_axis_type: what the X axis holds.
    :param x_axis_signal: the X axis watchable when ``x_axis_type`` is SIGNAL.
    :param name: a name for the stored acquisition.
    :raises InvalidUsage: when a parameter is out of range or inconsistent.
    """

    signals: Sequence[LoggedSignal]
    sampling_rate_id: int = 0
    decimation: int = 1
    timeout: float = 0.0
    trigger_hold_time: float = 0.0
    probe_location: float = 0.5
    condition: TriggerCondition = TriggerCondition.ALWAYS_TRUE
    operands: Sequence[Operand] = ()
    yaxes: Sequence[AxisDef] = (AxisDef(0, "Y"),)
    x_axis_type: XAxisType = XAxisType.INDEX
    x_axis_signal: LoggedSignal | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.signals:
            raise InvalidUsage("a datalogging acquisition needs at least one signal")
        if self.decimation < 1:
            raise InvalidUsage("decimation must be >= 1")
        if self.timeout < 0 or self.trigger_hold_time < 0:
            raise InvalidUsage("timeout and trigger_hold_time must be >= 0 seconds")
        if not 0 <= self.probe_location <= 1:
            raise InvalidUsage("probe_location must be in [0, 1]")
        if len(self.operands) != self.condition.operand_count:
            raise InvalidUsage(
                f"condition {self.condition.name} takes {self.condition.operand_count} operands"
            )
        axis_ids = {a.axis_id for a in self.yaxes}
        if len(axis_ids) != len(self.yaxes):
            raise InvalidUsage("duplicate Y axis id")
        for s in self.signals:
            if s.axis_id not in axis_ids:
                raise InvalidUsage(f"signal {s.path!r} uses unknown axis id {s.axis_id}")
        if (self.x_axis_type is XAxisType.SIGNAL) != (self.x_axis_signal is not None):
            raise InvalidUsage("x_axis_signal is required exactly when x_axis_type is SIGNAL")

    def to_request(self) -> dict[str, Any]:
        """The request fields (without ``cmd``/``reqid``)."""
        operands: list[dict[str, Any]] = []
        for op in self.operands:
            if isinstance(op, WatchableOperand):
                operands.append({"type": "watchable", "value": op.path})
            else:
                operands.append({"type": "literal", "value": float(op)})
        x_signal = None
        if self.x_axis_signal is not None:
            x_signal = {"path": self.x_axis_signal.path, "name": self.x_axis_signal.name}
        return {
            "name": self.name,
            "sampling_rate_id": self.sampling_rate_id,
            "decimation": self.decimation,
            "timeout": float(self.timeout),
            "trigger_hold_time": float(self.trigger_hold_time),
            "probe_location": float(self.probe_location),
            "condition": self.condition.value,
            "operands": operands,
            "yaxes": [{"id": a.axis_id, "name": a.name} for a in self.yaxes],
            "signals": [{"path": s.path, "name": s.name, "axis_id": s.axis_id} for s in self.signals],
            "x_axis_type": self.x_axis_type.value,
            "x_axis_signal": x_signal,
        }


@dataclass(frozen=True, slots=True)
class AcquisitionInfo:
    """A stored acquisition's metadata; ``timestamp`` in epoch seconds."""

    reference_id: str
    name: str | None
    timestamp: float
    firmware_id: str
    firmware_metadata: SFDMetadata | None


def parse_acquisition_list(msg: Mapping[str, Any]) -> list[AcquisitionInfo]:
    """Parse ``response_list_datalogging_acquisitions`` (newest first, as sent)."""
    where = _ctx(msg)
    out = []
    for item in _list(msg, "acquisitions", where):
        a = _obj(item, "acquisition", where)
        out.append(
            AcquisitionInfo(
                _str(a, "reference_id", where),
                _ostr(a, "name", where),
                _num(a, "timestamp", where),
                _str(a, "firmware_id", where),
                _metadata(a.get("firmware_metadata"), where),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class DataSeries:
    """One logged series; non-finite samples (sent as strings such as ``"nan"``) become floats."""

    name: str | None
    data: tuple[float, ...]
    watchable_path: str | None
    watchable_type: str | None
    axis_id: int | None = None


@dataclass(frozen=True, slots=True)
class DataloggingAcquisition:
    """``response_read_datalogging_acquisition_content``; ``timestamp`` in epoch seconds."""

    reference_id: str
    name: str
    timestamp: float
    firmware_id: str
    firmware_name: str | None
    trigger_index: int | None
    yaxes: tuple[AxisDef, ...]
    signals: tuple[DataSeries, ...]
    xdata: DataSeries


def _series(raw: object, where: str, with_axis: bool) -> DataSeries:
    s = _obj(raw, "signal", where)
    data = []
    for x in _list(s, "data", where):
        if isinstance(x, bool) or not isinstance(x, (int, float, str)):
            raise _bad(where, "data", "numbers", x)
        try:
            data.append(float(x))
        except ValueError:
            raise _bad(where, "data", "numbers or 'nan'/'inf' strings", x) from None
    w = s.get("watchable")
    path = wtype = None
    if isinstance(w, Mapping):
        path, wtype = _ostr(w, "path", where), _ostr(w, "type", where)
    return DataSeries(
        _ostr(s, "name", where), tuple(data), path, wtype, _int(s, "axis_id", where) if with_axis else None
    )


def parse_acquisition_content(msg: Mapping[str, Any]) -> DataloggingAcquisition:
    """Parse ``response_read_datalogging_acquisition_content``."""
    where = _ctx(msg)
    yaxes = tuple(
        AxisDef(_int(_obj(a, "yaxis", where), "id", where), _str(a, "name", where))
        for a in _list(msg, "yaxes", where)
    )
    return DataloggingAcquisition(
        reference_id=_str(msg, "reference_id", where),
        name=_str(msg, "name", where),
        timestamp=_num(msg, "timestamp", where),
        firmware_id=_str(msg, "firmware_id", where),
        firmware_name=_ostr(msg, "firmware_name", where),
        trigger_index=_oint(msg, "trigger_index", where),
        yaxes=yaxes,
        signals=tuple(_series(s, where, True) for s in _list(msg, "signals", where)),
        xdata=_series(msg.get("xdata"), where, False),
    )


# ---------------------------------------------------------------------------------------------
# server statistics (scrutiny.md 1.4 get_server_stats)


@dataclass(frozen=True, slots=True)
class ServerStats:
    """``response_get_server_stats``; ``uptime`` in seconds, rates per second."""

    uptime: float
    invalid_request_count: int
    unexpected_error_count: int
    client_count: int
    to_all_clients_datarate_byte_per_sec: float
    from_any_client_datarate_byte_per_sec: float
    msg_received: int
    msg_sent: int
    device_session_count: int
    to_device_datarate_byte_per_sec: float
    from_device_datarate_byte_per_sec: float
    device_request_per_sec: float


def parse_server_stats(msg: Mapping[str, Any]) -> ServerStats:
    """Parse ``response_get_server_stats``."""
    where = _ctx(msg)
    return ServerStats(
        uptime=_num(msg, "uptime", where),
        invalid_request_count=_int(msg, "invalid_request_count", where),
        unexpected_error_count=_int(msg, "unexpected_error_count", where),
        client_count=_int(msg, "client_count", where),
        to_all_clients_datarate_byte_per_sec=_num(msg, "to_all_clients_datarate_byte_per_sec", where),
        from_any_client_datarate_byte_per_sec=_num(msg, "from_any_client_datarate_byte_per_sec", where),
        msg_received=_int(msg, "msg_received", where),
        msg_sent=_int(msg, "msg_sent", where),
        device_session_count=_int(msg, "device_session_count", where),
        to_device_datarate_byte_per_sec=_num(msg, "to_device_datarate_byte_per_sec", where),
        from_device_datarate_byte_per_sec=_num(msg, "from_device_datarate_byte_per_sec", where),
        device_request_per_sec=_num(msg, "device_request_per_sec", where),
    )
