"""The emulated device, SFD files and datalogger behind the fake Scrutiny server.

Mirrors scrutinydebugger 0.16.0's demo mode (protocols/scrutiny.md, and ``DemoDevice`` /
``DemoDeviceSFD`` of the real package):

* memory: 4 KiB at 0x1000; everything below 0x1000 and from 0x2000 up is forbidden; 0x1800-0x1FFF
  is read-only (device info ``forbidden_memory_regions`` / ``readonly_memory_regions``);
* variables of the demo SFD: ``/static/main.cpp/counter`` (float32 at 0x1000) advances by 0.1 per
  device loop while ``/static/main.cpp/counter_enable`` (bool8 at 0x1004) is set;
  ``/global/device/uptime`` (uint32, seconds); ``/global/sinewave_generator/output`` (float32) is
  ``sin(2 pi f t)`` with ``f`` = ``/global/sinewave_generator/frequency`` (float32, starts at 1);
* RPVs ``/rpv/x1000`` (float32, a new random value every loop) and ``/rpv/x2000`` (sint32, flips
  between 1 and -1 every 0.5 s);
* aliases ``/Up Time``, ``/Sine Wave``, ``/Counter/Enable``, ``/Counter/Value``,
  ``/Alias To RPV2000`` and ``/RPV1000 with gain 1000``;
* user commands: subfunction 0 answers 32 bytes of 0xAA, 1 echoes, others fail;
* a datalogger with one variable-frequency loop ("Python thread") and a 4096-byte buffer.

SFD files use the real format (a zip of ``firmwareid``, ``metadata.json``, ``varmap.json`` and
``alias.json``), so SFDs made by the real tools install here and ours install there.
Nothing here does I/O; time comes from the ``clock`` the owner passes in.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEMO_FIRMWARE_ID",
    "TEST_FIRMWARE_ID",
    "MEMORY_START",
    "MEMORY_SIZE",
    "DeviceAccessError",
    "SFDFormatError",
    "ExprError",
    "VarDef",
    "AliasDef",
    "SFD",
    "make_demo_sfd",
    "make_test_sfd",
    "decode_value",
    "encode_value",
    "coerce_value",
    "parse_math_expr",
    "EmulatedDevice",
    "Datalogger",
]

#: Firmware id of the demo device and its SFD (``DEMO_DEVICE_FIRMWAREID_STR``).
DEMO_FIRMWARE_ID = "deadbeefc001d00d0ff1cebaadf00d00"
#: Firmware id of the extra SFD the fake installs for tests (enums, bitfields, protected vars).
TEST_FIRMWARE_ID = "0123456789abcdef0123456789abcdef"
#: Start of the device's accessible memory.
MEMORY_START = 0x1000
#: Size of the device's accessible memory (0x1000-0x1FFF).
MEMORY_SIZE = 0x1000
#: Read-only region start and size (``add_readonly_region(0x1800, 0x800)``).
READONLY_START, READONLY_SIZE = 0x1800, 0x800
#: Largest SFD a fake accepts (the real ``SFD_MAX_UPLOAD_SIZE``).
MAX_SFD_SIZE = 64 * 1024 * 1024
#: Longest math expression parsed for a write, in characters (a bound on parser work).
MAX_EXPR_LENGTH = 1000


class DeviceAccessError(Exception):
    """A memory access the device refuses; ``str()`` is the reason the server reports."""


class SFDFormatError(ValueError):
    """Bytes that are not a valid SFD file."""


class ExprError(ValueError):
    """A write value string that is neither a boolean nor a valid math expression."""


# ---------------------------------------------------------------------------------------------
# value encoding (scrutiny.md 1.6)

_STRUCT_CODES = {
    "sint8": "b",
    "uint8": "B",
    "sint16": "h",
    "uint16": "H",
    "sint32": "i",
    "uint32": "I",
    "sint64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
    "bool8": "B",
}
_DTYPE_RE = re.compile(r"^(sint|uint|float|bool)(8|16|32|64)$")


def _dtype_size(dtype: str) -> int:
    return struct.calcsize(_STRUCT_CODES[dtype])


def decode_value(dtype: str, raw: bytes, endianness: str = "little") -> int | float | bool:
    """Decode device bytes of a ``dtype`` (``bool8`` gives a bool)."""
    prefix = "<" if endianness == "little" else ">"
    value = struct.unpack(prefix + _STRUCT_CODES[dtype], raw)[0]
    if dtype.startswith("bool"):
        return bool(value)
    return value  # type: ignore[no-any-return]


def encode_value(dtype: str, value: int | float | bool, endianness: str = "little") -> bytes:
    """Encode a value already coerced with :func:`coerce_value`."""
    prefix = "<" if endianness == "little" else ">"
    if dtype.startswith("bool"):
        value = 1 if value else 0
    return struct.pack(prefix + _STRUCT_CODES[dtype], value)


def int_range(dtype: str, bits: int | None = None) -> tuple[int, int]:
    """Inclusive range of an integer ``dtype``, bitfield-aware."""
    width = bits if bits is not None else _dtype_size(dtype) * 8
    if dtype.startswith("sint"):
        return -(1 << (width - 1)), (1 << (width - 1)) - 1
    return 0, (1 << width) - 1


def coerce_value(dtype: str, value: int | float | bool, bits: int | None = None) -> int | float | bool:
    """Convert a written value the way the server does: ints truncated then clamped to the type
    range (bitfield-aware), non-zero is true for bools (scrutiny.md 1.6 "Writes")."""
    if dtype.startswith("bool"):
        return bool(value)
    if dtype.startswith("float"):
        if dtype == "float32":
            return struct.unpack("<f", struct.pack("<f", float(value)))[0]  # type: ignore[no-any-return]
        return float(value)
    low, high = int_range(dtype, bits)
    return max(low, min(high, int(value)))


# ---------------------------------------------------------------------------------------------
# write-value expressions: "true"/"false" or arithmetic with 0x/0b, ^, pi and a few functions

_FUNCTIONS: dict[str, Callable[..., float]] = {
    "abs": math.fabs,
    "exp": math.exp,
    "pow": math.pow,
    "sqrt": math.sqrt,
    "mod": math.fmod,
    "ceil": math.ceil,
    "floor": math.floor,
    "round": round,
    "log": math.log,
    "ln": math.log,
    "log10": math.log10,
    "hypot": math.hypot,
    "degrees": math.degrees,
    "radians": math.radians,
    "cos": math.cos,
    "cosh": math.cosh,
    "acos": math.acos,
    "sin": math.sin,
    "sinh": math.sinh,
    "asin": math.asin,
    "tan": math.tan,
    "tanh": math.tanh,
    "atan": math.atan,
    "atan2": math.atan2,
}
_TOKEN_RE = re.compile(
    r"\s*(?:(0[xX][0-9a-fA-F]+|0[bB][01]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(.))"
)


def parse_math_expr(text: str) -> float:
    """Evaluate a write-value expression such as ``"1+0.5"``, ``"2^3"``, ``"0x10"``, ``"2*pi"``.

    :raises ExprError: on a syntax error or a math domain error.
    """
    if len(text) > MAX_EXPR_LENGTH:
        raise ExprError("expression too long")
    tokens: list[tuple[str, str]] = []
    for match in _TOKEN_RE.finditer(text):
        number, name, other = match.groups()
        if number is not None:
            tokens.append(("num", number))
        elif name is not None:
            tokens.append(("name", name.lower()))
        elif other is not None and not other.isspace():
            tokens.append(("op", other))
    parser = _ExprParser(tokens)
    try:
        value = parser.expr()
    except (ValueError, OverflowError, ZeroDivisionError, TypeError) as exc:
        raise ExprError(str(exc)) from exc
    if parser.pos != len(tokens):
        raise ExprError(f"unexpected {tokens[parser.pos][1]!r}")
    return value


class _ExprParser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, op: str) -> bool:
        if self._peek() == ("op", op):
            self.pos += 1
            return True
        return False

    def expr(self) -> float:
        value = self.term()
        while True:
            if self._take("+"):
                value += self.term()
            elif self._take("-"):
                value -= self.term()
            else:
                return value

    def term(self) -> float:
        value = self.power()
        while True:
            if self._take("*"):
                value *= self.power()
            elif self._take("/"):
                value /= self.power()
            else:
                return value

    def power(self) -> float:
        base = self.unary()
        if self._take("^"):
            return float(math.pow(base, self.power()))
        return base

    def unary(self) -> float:
        if self._take("-"):
            return -self.unary()
        if self._take("+"):
            return self.unary()
        return self.atom()

    def atom(self) -> float:
        token = self._peek()
        if token is None:
            raise ExprError("unexpected end of expression")
        kind, text = token
        self.pos += 1
        if kind == "num":
            if text[:2].lower() == "0x":
                return float(int(text, 16))
            if text[:2].lower() == "0b":
                return float(int(text[2:], 2))
            return float(text)
        if kind == "name":
            if text == "pi":
                return math.pi
            func = _FUNCTIONS.get(text)
            if func is None or not self._take("("):
                raise ExprError(f"unknown name {text!r}")
            args = [self.expr()]
            while self._take(","):
                args.append(self.expr())
            if not self._take(")"):
                raise ExprError("missing ')'")
            return float(func(*args))
        if text == "(":
            value = self.expr()
            if not self._take(")"):
                raise ExprError("missing ')'")
            return value
        raise ExprError(f"unexpected {text!r}")


# ---------------------------------------------------------------------------------------------
# SFD files


@dataclass(frozen=True)
class VarDef:
    """A variable of an SFD varmap: absolute address, optional enum and bitfield."""

    path: str
    dtype: str
    address: int
    enum: Mapping[str, Any] | None = None
    bitoffset: int | None = None
    bitsize: int | None = None

    @property
    def size(self) -> int:
        """Storage size in bytes."""
        return _dtype_size(self.dtype)


@dataclass(frozen=True)
class AliasDef:
    """An alias of an SFD: a target path with optional gain, offset and clamping."""

    path: str
    target: str
    gain: float | None = None
    offset: float | None = None
    min: float | None = None
    max: float | None = None


@dataclass
class SFD:
    """A Scrutiny Firmware Description (the parts the fake uses)."""

    firmware_id: str
    metadata: dict[str, Any]
    variables: dict[str, VarDef]
    aliases: dict[str, AliasDef] = field(default_factory=dict)
    endianness: str = "little"
    data: bytes = b""

    def to_bytes(self) -> bytes:
        """The ``.sfd`` zip file (the real format, readable by scrutinydebugger)."""
        types: dict[str, dict[str, str]] = {}
        type_ids: dict[str, str] = {}
        enums: dict[str, Any] = {}
        variables: dict[str, Any] = {}
        for var in self.variables.values():
            if var.dtype not in type_ids:
                type_ids[var.dtype] = str(len(type_ids))
                types[type_ids[var.dtype]] = {"name": var.dtype, "type": var.dtype}
            entry: dict[str, Any] = {"type_id": type_ids[var.dtype], "addr": var.address}
            if var.bitoffset is not None and var.bitsize is not None:
                entry["bitoffset"], entry["bitsize"] = var.bitoffset, var.bitsize
            if var.enum is not None:
                entry["enum"] = len(enums)
                enums[str(len(enums))] = dict(var.enum)
            variables[var.path] = entry
        varmap = {
            "endianness": self.endianness,
            "char_bit": 8,
            "type_map": types,
            "variables": variables,
            "enums": enums,
        }
        aliases = {}
        for alias in self.aliases.values():
            target = self.variables.get(alias.target)
            a: dict[str, Any] = {
                "target": alias.target,
                "target_type": "var" if target is not None else "rpv",
            }
            for key in ("gain", "offset", "min", "max"):
                if getattr(alias, key) is not None:
                    a[key] = getattr(alias, key)
            aliases[alias.path] = a
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("firmwareid", self.firmware_id)
            archive.writestr("metadata.json", json.dumps(self.metadata, indent=4))
            archive.writestr("varmap.json", json.dumps(varmap, indent=4))
            archive.writestr("alias.json", json.dumps(aliases, indent=4))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> SFD:
        """Parse an ``.sfd`` file (scalar variables at absolute addresses; others are skipped).

        :raises SFDFormatError: when it is not a valid SFD.
        """
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                names = set(archive.namelist())
                firmware_id = archive.read("firmwareid").decode("ascii").strip().lower()
                metadata = json.loads(archive.read("metadata.json"))
                varmap = json.loads(archive.read("varmap.json"))
                aliases_raw = json.loads(archive.read("alias.json")) if "alias.json" in names else {}
        except (zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError, OSError) as exc:
            raise SFDFormatError(f"not an SFD file: {exc}") from exc
        if not re.fullmatch(r"[0-9a-f]{32}", firmware_id):
            raise SFDFormatError("invalid firmware id")
        try:
            type_map = {k: v["type"] for k, v in varmap.get("type_map", {}).items()}
            enums = varmap.get("enums", {})
            variables: dict[str, VarDef] = {}
            for path, v in varmap.get("variables", {}).items():
                dtype = type_map.get(str(v.get("type_id")))
                if dtype not in _STRUCT_CODES or not isinstance(v.get("addr"), int):
                    continue  # arrays, pointers and exotic types are beyond this fake
                enum = enums.get(str(v["enum"])) if "enum" in v else None
                variables[path] = VarDef(path, dtype, v["addr"], enum, v.get("bitoffset"), v.get("bitsize"))
            aliases = {
                path: AliasDef(path, a["target"], a.get("gain"), a.get("offset"), a.get("min"), a.get("max"))
                for path, a in aliases_raw.items()
            }
            endianness = str(varmap.get("endianness", "little"))
        except (AttributeError, KeyError, TypeError) as exc:
            raise SFDFormatError(f"malformed SFD content: {exc}") from exc
        return cls(firmware_id, metadata, variables, aliases, endianness, bytes(data))


def _metadata(project: str, version: str, when: int) -> dict[str, Any]:
    return {
        "project_name": project,
        "author": "Scrutiny Debugger" if project.startswith("Scrutiny Demo") else "katclient",
        "version": version,
        "generation_info": {
            "python_version": "3.11.7",
            "scrutiny_version": "0.16.0",
            "system_type": "Linux",
            "time": when,
        },
    }


def make_demo_sfd(when: int = 0) -> SFD:
    """The demo device's SFD (never installed, loaded from memory, as in the real server)."""
    variables = [
        VarDef("/static/main.cpp/counter", "float32", 0x1000),
        VarDef("/static/main.cpp/counter_enable", "bool8", 0x1004),
        VarDef("/global/device/uptime", "uint32", 0x1008),
        VarDef("/global/sinewave_generator/output", "float32", 0x100C),
        VarDef("/global/sinewave_generator/frequency", "float32", 0x1010),
    ]
    aliases = [
        AliasDef("/Up Time", "/global/device/uptime"),
        AliasDef("/Sine Wave", "/global/sinewave_generator/output"),
        AliasDef("/Counter/Enable", "/static/main.cpp/counter_enable"),
        AliasDef("/Counter/Value", "/static/main.cpp/counter"),
        AliasDef("/Alias To RPV2000", "/rpv/x2000"),
        AliasDef("/RPV1000 with gain 1000", "/rpv/x1000", gain=1000.0),
    ]
    sfd = SFD(
        DEMO_FIRMWARE_ID,
        _metadata("Scrutiny Demo Device", "0.16.0", when),
        {v.path: v for v in variables},
        {a.path: a for a in aliases},
    )
    sfd.data = b""
    return sfd


def make_test_sfd(when: int = 0) -> SFD:
    """An extra SFD for tests: an enum, a bitfield, an int with min/max alias, a read-only and a
    forbidden variable.  It lives in the demo device's memory above the demo variables."""
    variables = [
        VarDef("/app/gain", "float32", 0x1100),
        VarDef(
            "/app/mode", "uint8", 0x1104, enum={"name": "Mode", "values": {"IDLE": 0, "RUN": 1, "FAULT": 2}}
        ),
        VarDef("/app/flags/ready", "uint8", 0x1105, bitoffset=2, bitsize=3),
        VarDef("/app/level", "sint16", 0x1106),
        VarDef("/app/big", "uint64", 0x1108),
        VarDef("/app/calibration", "float64", 0x1800),
        VarDef("/app/protected", "uint32", 0x0100),
    ]
    aliases = [
        AliasDef("/Gain x2", "/app/gain", gain=2.0, offset=1.0),
        AliasDef("/Level clamped", "/app/level", min=-100.0, max=100.0),
    ]
    sfd = SFD(
        TEST_FIRMWARE_ID,
        _metadata("katclient test firmware", "1.2.3", when),
        {v.path: v for v in variables},
        {a.path: a for a in aliases},
    )
    sfd.data = sfd.to_bytes()
    return sfd


# ---------------------------------------------------------------------------------------------
# the device


@dataclass(frozen=True)
class Region:
    """A memory region ``[start, start + size)``."""

    start: int
    size: int

    @property
    def end(self) -> int:
        """Last address (inclusive)."""
        return self.start + self.size - 1

    def touches(self, address: int, size: int) -> bool:
        """True when ``[address, address + size)`` overlaps this region."""
        return address <= self.end and address + size - 1 >= self.start


class EmulatedDevice:
    """The demo device: memory, RPVs and the tasks that make values move.

    :param clock: monotonic seconds (the owner's loop time, so virtual time works).
    :param rand: source of uniform floats for ``/rpv/x1000``.
    """

    display_name = "EmulatedDevice"
    max_tx_data_size = 128
    max_rx_data_size = 128
    max_bitrate_bps = 100_000
    rx_timeout_us = 50_000
    heartbeat_timeout_us = 3_000_000
    address_size_bits = 32
    forbidden = (
        Region(0, MEMORY_START),
        Region(MEMORY_START + MEMORY_SIZE, 2**32 - (MEMORY_START + MEMORY_SIZE)),
    )
    readonly = (Region(READONLY_START, READONLY_SIZE),)
    #: RPV id -> dtype (``configure_rpvs`` of the demo device).
    rpv_types = {0x1000: "float32", 0x2000: "sint32"}

    def __init__(self, clock: Callable[[], float], rand: Callable[[], float] = random.random) -> None:
        self._clock = clock
        self._rand = rand
        self.firmware_id = DEMO_FIRMWARE_ID
        self.memory = bytearray(MEMORY_SIZE)
        self.rpvs: dict[int, int | float] = {0x1000: 0.0, 0x2000: 1}
        self.start_time = clock()
        self._rpv2000_flip = self.start_time + 0.5
        self.poke(0x1010, struct.pack("<f", 1.0))  # sinewave frequency = 1 Hz

    # -- memory

    def poke(self, address: int, data: bytes) -> None:
        """Write memory without access checks (the firmware itself)."""
        offset = address - MEMORY_START
        self.memory[offset : offset + len(data)] = data

    def peek(self, address: int, size: int) -> bytes:
        """Read memory without access checks (the firmware itself)."""
        offset = address - MEMORY_START
        return bytes(self.memory[offset : offset + size])

    def read(self, address: int, size: int) -> bytes:
        """Read memory as the server's memory reader does.

        :raises DeviceAccessError: ``Size too big``, ``Read out of bound``, ``Forbidden region``.
        """
        if size > 2**14 - 1:
            raise DeviceAccessError("Size too big")
        if address + size > 2**self.address_size_bits:
            raise DeviceAccessError("Read out of bound")
        if any(r.touches(address, size) for r in self.forbidden):
            raise DeviceAccessError("Forbidden region")
        return self.peek(address, size)

    def write(self, address: int, data: bytes) -> None:
        """Write memory as the server's memory writer does.

        :raises DeviceAccessError: ``Forbidden`` or ``Read only``.
        """
        if any(r.touches(address, len(data)) for r in self.forbidden):
            raise DeviceAccessError("Forbidden")
        if any(r.touches(address, len(data)) for r in self.readonly):
            raise DeviceAccessError("Read only")
        self.poke(address, data)

    def writable(self, address: int, size: int) -> bool:
        """True when a watchable write may touch ``[address, address + size)`` ("Not allowed" else)."""
        regions = self.forbidden + self.readonly
        return not any(r.touches(address, size) for r in regions)

    def readable(self, address: int, size: int) -> bool:
        """True when ``[address, address + size)`` is not forbidden."""
        return not any(r.touches(address, size) for r in self.forbidden)

    # -- behaviour

    def tick(self) -> None:
        """One pass of the device loop: the demo tasks (``task_update_mem``, ``task_update_rpv``)."""
        now = self._clock()
        if self.peek(0x1004, 1) != b"\x00":
            counter = struct.unpack("<f", self.peek(0x1000, 4))[0] + 0.1
            self.poke(0x1000, struct.pack("<f", counter))
        self.poke(0x1008, struct.pack("<I", min(2**32 - 1, int(round(now - self.start_time)))))
        freq = struct.unpack("<f", self.peek(0x1010, 4))[0]
        sine = math.sin(2 * math.pi * (now - self.start_time) * freq) if math.isfinite(freq) else float("nan")
        self.poke(0x100C, struct.pack("<f", sine))
        if now >= self._rpv2000_flip:
            self.rpvs[0x2000] = 1 if int(self.rpvs[0x2000]) < 0 else -1
            self._rpv2000_flip = now + 0.5
        self.rpvs[0x1000] = coerce_value("float32", self._rand())

    def user_command(self, subfunction: int, data: bytes) -> bytes:
        """Run a user command.

        :raises DeviceAccessError: ``Device responded with code FailureToProceed`` for unknown ones.
        """
        if subfunction == 0:
            return b"\xaa" * 32
        if subfunction == 1:
            return bytes(data)
        raise DeviceAccessError("Device responded with code FailureToProceed")


# ---------------------------------------------------------------------------------------------
# the datalogger


#: Bytes of the per-sample time stamp when the X axis is measured time.
_TIME_BYTES = 4


class Datalogger:
    """A simplified copy of the emulated device's datalogger: samples every loop (with decimation)
    into a 4096-byte buffer, triggers on a condition, stops when the part after the trigger
    (``1 - probe_location`` of the buffer) is full or ``timeout`` seconds after the trigger.

    :param read: ``read(signal) -> float`` giving a signal's current value.
    :param signals: opaque signal handles, in order (Y signals, then the X signal if any).
    :param sizes: each signal's size in bytes.
    :param condition: the trigger condition name (``true``, ``eq``, ...).
    :param operands: callables giving each operand's current value.
    :param measured_time: whether a time stamp is stored per sample.
    """

    BUFFER_SIZE = 4096
    #: Samples the emulated loop produces per device tick (the demo loop runs faster than our tick).
    SAMPLES_PER_TICK = 10
    #: Emulated loop period in seconds.
    LOOP_PERIOD = 0.001

    def __init__(
        self,
        read: Callable[[Any], float],
        signals: list[Any],
        sizes: list[int],
        condition: str,
        operands: list[Callable[[], float]],
        decimation: int,
        probe_location: float,
        timeout: float,
        hold_time: float,
        measured_time: bool,
    ) -> None:
        self._read = read
        self._signals = signals
        self._condition = condition
        self._operands = operands
        self._decimation = decimation
        self._timeout = timeout
        self._hold_time = hold_time
        bytes_per_sample = sum(sizes) + (_TIME_BYTES if measured_time else 0)
        self._capacity = max(2, self.BUFFER_SIZE // max(1, bytes_per_sample))
        self._post_trigger = max(1, round((1.0 - probe_location) * self._capacity))
        self.samples: list[list[float]] = []
        self.times: list[float] = []
        self.trigger_index: int | None = None
        self._loop_count = 0
        self._t = 0.0
        self._trigger_time: float | None = None
        self._hold_since: float | None = None
        self._cmt_last: float | None = None
        self.done = False

    @property
    def triggered(self) -> bool:
        """True once the trigger fired."""
        return self.trigger_index is not None

    @property
    def completion(self) -> float:
        """Fraction of the post-trigger part acquired (0 before the trigger)."""
        if self.trigger_index is None:
            return 0.0
        return min(1.0, (len(self.samples) - self.trigger_index) / self._post_trigger)

    def _check(self) -> bool:
        ops = [f() for f in self._operands]
        c = self._condition
        if c == "true":
            return True
        if c == "eq":
            return ops[0] == ops[1]
        if c == "neq":
            return ops[0] != ops[1]
        if c == "lt":
            return ops[0] < ops[1]
        if c == "let":
            return ops[0] <= ops[1]
        if c == "gt":
            return ops[0] > ops[1]
        if c == "get":
            return ops[0] >= ops[1]
        if c == "within":
            return abs(ops[0] - ops[1]) <= abs(ops[2])
        if c == "cmt":
            last, self._cmt_last = self._cmt_last, ops[0]
            if last is None:
                return False
            diff = ops[0] - last
            return diff >= ops[1] if ops[1] >= 0 else diff <= ops[1]
        return False

    def tick(self) -> None:
        """Run one device tick's worth of loop iterations."""
        for _ in range(self.SAMPLES_PER_TICK):
            if self.done:
                return
            self._t += self.LOOP_PERIOD
            if self._loop_count % self._decimation == 0:
                self.samples.append([self._read(s) for s in self._signals])
                self.times.append(self._t)
                if self.trigger_index is None and len(self.samples) > self._capacity - self._post_trigger:
                    del self.samples[0], self.times[0]  # ring buffer before the trigger
            self._loop_count += 1
            if self.trigger_index is None:
                if self._check():
                    if self._hold_since is None:
                        self._hold_since = self._t
                    if self._t - self._hold_since >= self._hold_time:
                        self.trigger_index = max(0, len(self.samples) - 1)
                        self._trigger_time = self._t
                else:
                    self._hold_since = None
            elif len(self.samples) - self.trigger_index >= self._post_trigger or (
                self._timeout > 0
                and self._trigger_time is not None
                and self._t - self._trigger_time >= self._timeout
            ):
                self.done = True
