"""Scan commands: PyScanClient's command classes, producing and parsing the server's command XML.

The class names and constructor signatures are PyScanClient's (``scan.commands``), because users
know them (DESIGN.md section 3): ``Comment``, ``Set``, ``Delay``, ``Wait``, ``Loop``, ``Log``,
``Include``, ``Script``, ``Parallel``, ``Sequence``, ``If``, ``ConfigLog`` and ``CommandSequence``.

XML facts are in protocols/scan-server.md section 3.8.  :meth:`Command.to_element` emits what
PyScanClient emits (so a scan behaves the same on the server whichever client sent it), and
:func:`parse_commands` reads both that and the server's own re-serialisation (``GET
/scan/{id}/commands``), applying the server's defaults where an element is missing.

Equality is *semantic*: options that the server ignores in a given configuration (a Set's tolerance
when it does not wait, a timeout without completion or wait) do not take part, so
``parse_commands(seq.to_xml()) == seq`` holds for every sequence.  Commands are mutable (like the
seed's), hence unhashable.
"""

from __future__ import annotations

import math
import numbers
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

from katclient.devices.scan.model import ScanXMLError, parse_xml
from katclient.errors import InvalidUsage

__all__ = [
    "Value",
    "Command",
    "Comment",
    "ConfigLog",
    "Delay",
    "Set",
    "Wait",
    "Log",
    "Loop",
    "Parallel",
    "Sequence",
    "If",
    "Include",
    "Script",
    "CommandSequence",
    "COMPARISONS",
    "comparison_name",
    "parse_commands",
    "command_from_element",
    "addressed",
    "to_commands",
]

#: A device value: a number (int or finite float) or text.
Value = int | float | str

#: Comparison enum names with the symbols PyScanClient and the text language use for them
#: (Phoebus ``Comparison``; IN and NOT_IN keep their value as text, protocols/scan-server.md 3.8).
COMPARISONS: dict[str, str] = {
    "EQUALS": "=",
    "UNEQUAL": "!=",
    "ABOVE": ">",
    "AT_LEAST": ">=",
    "BELOW": "<",
    "AT_MOST": "<=",
    "INCREASE_BY": "increase by",
    "DECREASE_BY": "decrease by",
    "IN": "in",
    "NOT_IN": "not in",
}
_SYMBOLS = {sym: name for name, sym in COMPARISONS.items()}
_SYMBOLS.update({"==": "EQUALS", "<>": "UNEQUAL", "to increase by": "INCREASE_BY",
                 "to decrease by": "DECREASE_BY", "increase_by": "INCREASE_BY",
                 "decrease_by": "DECREASE_BY", "not_in": "NOT_IN"})
_IF_COMPARISONS = frozenset(COMPARISONS) - {"INCREASE_BY", "DECREASE_BY"}

# Java's Double.parseDouble accepts (roughly) this; the server's StringOrDouble.parse tries it first.
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT_RE = re.compile(r"[+-]?\d+")
# Characters XML 1.0 cannot carry (the server would replace C0 controls by '_', section 3.1).
_BAD_XML_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def comparison_name(comparison: str, *, allowed: Iterable[str] = COMPARISONS) -> str:
    """Normalise a comparison given as a symbol (``'>='``, ``'increase by'``) or enum name.

    :returns: the enum name, e.g. ``'AT_LEAST'``.
    :raises InvalidUsage: unknown, or not in ``allowed``.
    """
    text = " ".join(str(comparison).split())
    name = _SYMBOLS.get(text.lower()) or _SYMBOLS.get(text) or text.upper()
    allowed = frozenset(allowed)
    if name not in allowed:
        choices = ", ".join(repr(COMPARISONS[n]) for n in COMPARISONS if n in allowed)
        raise InvalidUsage(f"Invalid comparison {comparison!r}; use one of {choices}")
    return name


def _check_text(text: Any, what: str) -> str:
    if not isinstance(text, str):
        raise InvalidUsage(f"{what} must be text, got {text!r}")
    m = _BAD_XML_CHARS.search(text)
    if m:
        raise InvalidUsage(f"{what} contains a character XML cannot carry: {m.group()!r}")
    return text


def _check_number(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise InvalidUsage(f"{what} must be a number, got {x!r}")
    f = float(x)
    if not math.isfinite(f):
        raise InvalidUsage(f"{what} must be finite, got {x!r}")
    return f


def _check_real(x: Any, what: str) -> int | float:
    """A finite number, kept as ``int`` when it is an integer type."""
    f = _check_number(x, what)
    return int(x) if isinstance(x, numbers.Integral) else f


def _check_value(v: Any, what: str) -> Value:
    """A device value: bool becomes 0/1, other numbers int/float, text stays text."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return _check_number(v, what)
    if isinstance(v, str):
        return _check_text(v, what)
    raise InvalidUsage(f"{what} must be a number or text, got {v!r}")


def _value_text(v: Value) -> str:
    """Value as PyScanClient writes it: text in double quotes, numbers as ``str``."""
    return f'"{v}"' if isinstance(v, str) else str(v)


def _parse_number(text: str) -> int | float | None:
    t = text.strip()
    if _INT_RE.fullmatch(t):
        return int(t)
    if _NUMBER_RE.fullmatch(t):
        return float(t)
    return None


def _parse_value(text: str | None, default: Value = 0) -> Value:
    """The server's ``StringOrDouble.parse``: a number if possible, else text without its quotes."""
    if text is None:
        return default
    n = _parse_number(text)
    if n is not None:
        return n
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        return text[1:-1]
    return text


# --------------------------------------------------------------------------------------------------
# XML helpers
# --------------------------------------------------------------------------------------------------


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    e = ET.SubElement(parent, tag)
    if text is not None:
        e.text = text
    return e


def _child(elem: ET.Element, tag: str) -> ET.Element | None:
    for c in elem:
        if c.tag == tag:
            return c
    return None


def _child_text(elem: ET.Element, tag: str) -> str | None:
    c = _child(elem, tag)
    if c is None:
        return None
    return c.text or ""


def _child_str(elem: ET.Element, tag: str, default: str = "") -> str:
    t = _child_text(elem, tag)
    return default if t is None else t


def _child_float(elem: ET.Element, tag: str, default: float) -> float:
    t = _child_text(elem, tag)
    if t is None:
        return default
    n = _parse_number(t)
    if n is None:
        raise ScanXMLError(f"Invalid number {t!r} in <{elem.tag}><{tag}>")
    return float(n)


def _child_bool(elem: ET.Element, tag: str, default: bool) -> bool:
    t = _child_text(elem, tag)
    return default if t is None else t.strip().lower() == "true"


def _fmt_num(x: float) -> str:
    """Float for XML: integral values as ``10.0``, others as Python's shortest repr."""
    return repr(float(x))


# --------------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------------


class Command:
    """Base of all scan commands.

    :attr errhandler: name of a server-side error handler class (``<error_handler>``), or None.
    """

    #: The XML element name of the command.
    tag: ClassVar[str] = ""
    _registry: ClassVar[dict[str, type[Command]]] = {}

    errhandler: str | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.tag:
            Command._registry[cls.tag] = cls

    def _set_errhandler(self, errhandler: str | None) -> None:
        self.errhandler = None if not errhandler else _check_text(errhandler, "error handler")

    # -- subclass hooks --
    def _key(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def _add_xml(self, elem: ET.Element) -> None:
        raise NotImplementedError

    @classmethod
    def _from_element(cls, elem: ET.Element) -> Command:
        raise NotImplementedError

    def _args_repr(self) -> list[str]:
        raise NotImplementedError

    # -- public API --
    def to_element(self) -> ET.Element:
        """:returns: this command as an XML element (PyScanClient's ``genXML``)."""
        elem = ET.Element(self.tag)
        self._add_xml(elem)
        if self.errhandler:
            _sub(elem, "error_handler", self.errhandler)
        return elem

    genXML = to_element

    @property
    def body(self) -> list[Command]:
        """Body commands (empty for commands without a body)."""
        return []

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other) or not isinstance(other, Command):
            return NotImplemented
        return self._key() == other._key() and self.errhandler == other.errhandler

    __hash__ = None  # type: ignore[assignment]  # mutable, like the seed's commands

    def __repr__(self) -> str:
        args = self._args_repr()
        if self.errhandler:
            args.append(f"errhandler={self.errhandler!r}")
        return f"{type(self).__name__}({', '.join(args)})"


def _body_list(body: Any, args: tuple[Any, ...]) -> list[Command]:
    items: list[Command] = []
    for part in (body, *args):
        if part is None:
            continue
        if isinstance(part, Command):
            items.append(part)
        elif isinstance(part, (str, bytes)):
            raise InvalidUsage(f"Expected a command, got {part!r}")
        else:
            for c in part:
                if not isinstance(c, Command):
                    raise InvalidUsage(f"Expected a command, got {c!r}")
                items.append(c)
    return items


#: Deepest nesting of bodies accepted when parsing XML: the model's recursion (equality, XML
#: output, formatting) must stay far below Python's recursion limit.
MAX_NESTING = 100


def _parse_body(elem: ET.Element) -> list[Command]:
    body = _child(elem, "body")
    return [] if body is None else [command_from_element(c) for c in body]


def _check_depth(root: ET.Element) -> None:
    """Refuse documents nested deeper than :data:`MAX_NESTING` command bodies (iteratively)."""
    limit = 2 * MAX_NESTING + 3  # commands > command > body > command > ... > leaf > text
    stack = [(root, 1)]
    while stack:
        elem, depth = stack.pop()
        if depth > limit:
            raise ScanXMLError(f"Commands nested deeper than {MAX_NESTING} levels")
        stack.extend((c, depth + 1) for c in elem)


class Comment(Command):
    """A comment; the server only prints it.  ``<comment><text>`` (patch property ``comment``).

    :param text: comment text.
    """

    tag = "comment"

    def __init__(self, text: str = "", errhandler: str | None = None) -> None:
        self.text = _check_text(text, "comment")
        self._set_errhandler(errhandler)

    def _key(self) -> tuple[Any, ...]:
        return (self.text,)

    def _add_xml(self, elem: ET.Element) -> None:
        _sub(elem, "text", self.text)

    @classmethod
    def _from_element(cls, elem: ET.Element) -> Command:
        return cls(_child_str(elem, "text"))

    def _args_repr(self) -> list[str]:
        return [repr(self.text)]


class ConfigLog(Command):
    """Switch automatic logging of written values on or off.  ``<config_log><automatic>``.

    :param automatic: log every Set/Loop write automatically?
    """

    tag = "config_log"

    def __init__(self, automatic: bool = True, errhandler: str | None = None) -> None:
        self.automatic = bool(automatic)
        self._set_errhandler(errhandler)

    def _key(self) -> tuple[Any, ...]:
        return (self.automatic,)

    def _add_xml(self, elem: ET.Element) -> None:
        _sub(elem, "automatic", "true" if self.automatic else "false")

    @classmethod
    def _from_element(cls, elem: ET.Element) -> Command:
        return cls(_child_bool(elem, "automatic", False))

    def _args_repr(self) -> list[str]:
        return [repr(self.automatic)]


class Delay(Command):
    """Wait for some time.  ``<delay><seconds>`` (patch property ``seconds``).

    :param seconds: delay in seconds (>= 0).
    """

    tag = "delay"

    def __init__(self, seconds: float = 0.0, errhandler: str | None = None) -> None:
        self.seconds = _check_real(seconds, "delay seconds")
        if self.seconds < 0:
            raise InvalidUsage(f"delay seconds must be >= 0, got {seconds!r}")
        self._set_errhandler(errhandler)

    def _key(self) -> tuple[Any, ...]:
        return (self.seconds,)

    def _add_xml(self, elem: ET.Element) -> None:
        _sub(elem, "seconds", str(self.seconds))

    @classmethod
    def _from_element(cls, elem: ET.Element) -> Command:
        return cls(max(0, _num_or_int(elem, "seconds", 0.0)))

    def _args_repr(self) -> list[str]:
        return [repr(self.seconds)]


def _readback_arg(readback: Any, device: str) -> bool | str:
    if readback is True or readback is False:
        return readback
    if readback is None:
        return False
    name = _check_text(readback, "readback device")
    if name == "" or name == device:
        return True
    return name


class Set(Command):
    """Write a value to a device, optionally with completion and readback check.

    :param device: device name.
    :param value: number or text.
    :param completion: await the put-callback completion.
    :param readback: ``False`` for no check, ``True`` to check ``device`` itself, or the name of a
        readback device.  With a readback the server waits until it matches (``<wait>true``).
    :param readback_value: value the readback must show (None: the written value).
    :param tolerance: numeric tolerance of the readback check.
    :param timeout: seconds for completion and readback (0 = forever); only sent when used.

    XML: ``device``, ``value`` (text quoted), ``completion`` if true, ``wait`` always, and when
    waiting ``readback``, ``readback_value`` (if given) and ``tolerance``; ``timeout`` if > 0 and
    used.  Missing elements mean the server's defaults: wait true, tolerance 0.1
    (protocols/scan-server.md 3.8, 3.10).
    """

    tag = "set"

    def __init__(
        self,
        device: str,
        value: Value,
        completion: bool = False,
        readback: bool | str = False,
        readback_value: Value | None = None,
        tolerance: float = 0.0,
        timeout: float = 0.0,
        errhandler: str | None = None,
    ) -> None:
        self.device = _check_text(device, "device name")
        self.value = _check_value(value, "set value")
        self.completion = bool(completion)
        self.readback: bool | str = _readback_arg(readback, self.device)
        # "" means "use the written value" on the server, exactly like None
        self.readback_value = (
            None if readback_value is None or readback_value == "" else _check_value(readback_value, "readback value")
        )
        self.tolerance = _check_number(tolerance, "tolerance")
        self.timeout = _check_number(timeout, "timeout")
        self._set_errhandler(errhandler)

    @property
    def wait(self) -> bool:
        """Does the server wait for the readback? (True exactly when ``readback`` is not False)."""
        return self.readback is not False

    def _key(self) -> tuple[Any, ...]:
        uses_timeout = self.completion or self.wait
        return (
            self.device,
            self.value,
            self.completion,
            self.readback,
            self.readback_value if self.wait else None,
            self.tolerance if self.wait else None,
            self.timeout if uses_timeout and self.timeout > 0 else 0.0,
        )

    def _add_xml(self, elem: ET.Element) -> None:
        _sub(elem, "device", self.device)
        _sub(elem, "value", _value_text(self.value))
        if self.completion:
            _sub(elem, "completion", "true")
        _sub(elem, "wait", "true" if self.wait else "false")
        if self.wait:
            _sub(elem, "readback", self.device if self.readback is True else str(self.readback))
            if self.readback_value is not None:
                _sub(elem, "readback_value", _value_text(self.readback_value))
            _sub(elem, "tolerance", _fmt_num(self.tolerance))
        if (self.completion or self.wait) and self.timeout > 0:
            _sub(elem, "timeout", _fmt_num(self.timeout))

    @classmethod
    def _from_element(cls, elem: ET.Element) -> Command:
        device = _child_str(elem, "device")
        wait = _child_bool(elem, "wait", True)
        rb_value = _child_text(elem, "readback_value")
        parsed_rb = None if rb_value is None else _parse_value(rb_value)
        return cls(
            device,
            _parse_value(_child_text(elem, "value"), 0),
            completion=_child_bool(elem, "completion", False),
            readback=(_child_str(elem, "readback") or True) if wait else False,
            readback_value=None if parsed_rb == "" else parsed_rb,
            tolerance=max(0.0, _child_float(elem, "tolerance", 0.1)),
            timeout=max(0.0, _child_float(elem, "timeout", 0.0)),
        )

    def _args_repr(self) -> list[str]:
        args = [repr(self.device), repr(self.value)]
        if self.completion:
            args.append("completion=True")
        if self.wait:
            args.append(f"readback={self.readback!r}")
            if self.readback_value is not None:
                args.append(f"readback_value={self.readback_value!r}")
            args.append(f"tolerance={self.tolerance!r}")
        if (self.completion or self.wait) and self.timeout > 0:
            args.append(f"timeout={self.timeout!r}")
        return args


class Wait(Command):
    """Wait until a device meets a condition.

    :param device: device name.
    :param value: desired value (for ``in``/``not in``: the list as text, kept verbatim).
    :param comparison: ``'='``, ``'!='``, ``'>'``, ``'>='``, ``'<'``, ``'<='``, ``'increase by'``,
        ``'decrease by'``, ``'in'``, ``'not in'`` or the enum name (``'AT_LEAST'``).
    :param tolerance: tolerance for ``'='``; 0 (the default) is not sent, so the server's 0.1 applies.
    :param timeout: seconds (0 = forever); the scan fails when it expires.

    Patch properties: ``device_name``, ``desired_value``, ``comparison``, ``tolerance``, ``timeout``.
    """

    tag = "wait"

    def __init__(
        self,
        device: str,
        value: Value,
        comparison: str = "=",
        tolerance: float = 0.0,
        timeout: float = 0.0,
        errhandler: str | None = None,
    ) -> None:
        self.device = _check_text(device, "device name")
        self.comparison = comparison_name(comparison)
        if self.comparison in ("IN", "NOT_IN"):
            self.value: Value = _check_text(str(value), "wait value")
        else:
            self.value = _check_value(value, "wait value")
        self.tolerance = _check_number(tolerance, "tolerance")
        self.timeout = _check_number(timeout, "timeout")
        self._set_errhandler(errhandler)

    def _key(self) -> tuple[Any, ...]:
        return (self.device, self.value, self.comparison, max(self.tolerance, 0.0), max(self.timeout, 0.0))

    def _add_xml(self, elem: ET.Element) -> None:
        _sub(elem, "device", self.device)
        raw = self.comparison in ("IN", "NOT_IN")
        _sub(elem, "value", str(self.value) if raw else _value_text(self.value))
        _sub(elem, "comparison", self.comparison)
        if self.tolerance > 0:
            _sub(elem, "tolerance", _fmt_num(self.tolerance))
        if self.timeout > 0:
            _sub(elem, "timeout", _fmt_num(self.timeout))

    @classmethod
    def _from_element(cls, elem: ET.Element) -> Command:
        cmp_text = _child_str(elem, "comparison", "EQUALS").strip()
        try:
            comparison = comparison_name(cmp_text)
        except InvalidUsage:
            comparison = "EQUALS"  # the server turns an invalid comparison into EQUALS
        raw = _child_text(elem, "value")
        value: Value = (raw if raw is not None else "0") if comparison in ("IN", "NOT_IN") else _parse_value(raw, 0)
        return cls(
            _child_str(elem, "device"),
            value,
            comparison,
            tolerance=max(0.0, _child_float(elem, "tolerance", 0.0)),
            timeout=max(0.0, _child_float(elem, "timeout", 0.0)),
        )

    def _args_repr(self) -> list[str]:
        args = [repr(self.device), repr(self.value)]
        if self.comparison != "EQUALS":
            args.append(f"comparison={COMPARISONS[self.comparison]!r}")
        if self.tolerance > 0:
            args.append(f"tolerance={self.tolerance!r}")
        if self.timeout > 0:
            args.append(f"timeout={self.timeout!r}")
        return args


class Log(Command):
    """Log the current value of devices, all under one serial.  ``<log><devices><device>*``.

    :param devices: device names, as separate arguments or one list (``Log('a', 'b')``,
        ``Log(['a', 'b'])``).
    """

    tag = "log"

    def __init__(self, devices: str | Iterable[str] | None = None, *args: str,
                 errhandler: str | None = None) -> None:
        names: list[str] = []
        if isinstance(devices, str):
            names.append(devices)
        elif devices is not None:
            names.extend(devices)
        names.extend(args)
        self.devices = [_check_text(d, "device name") for d in names]
        self._set_errhandler(errhandler)

    def _key(self) -> tuple[Any, ...]:
        return tuple(self.devices)

    def _add_xml(self, elem: ET.Element) -> None:
        devices = _sub(elem, "devices")
        for d in self.devices:
            _sub(devices, "device", d)

    @classmethod
    def _from_element(cls, elem: ET.Element) -> Command:
        devices = _child(elem, "devices")
        if devices is None:
            raise ScanXMLError("Missing 'devices'")
        return cls([c.text or "" for c in devices if c.tag == "device"])

    def _args_repr(self) -> list[str]:
        return [repr(d) for d in self.devices]


class _BodyCommand(Command):
    _body: list[Command]

    @property
    def body(self) -> list[Command]:
        """The body commands (a live list, like PyScanClient's ``getBody()``)."""
        return self._body

    def getBody(self) -> list[Command]:
        """PyScanClient name of :attr:`body`."""
        return self._body

    def _add_body(self, elem: ET.Element, always: bool) -> None:
        if self._body or always:
            body = _sub(elem, "body")
            for c in self._body:
                body.append(c.to_element())

    def _body_repr(self) -> str:
        return "[" + ", ".join(repr(c) for c in self._body) + "]"


class Loop(_BodyCommand):
    """Step a device from ``start`` to ``end`` and run the body at each step.

    :param device: loop device.
    :param start: first value.
    :param end: last value.
    :param step: step size (not 0; a step against the range direction makes a "reversing" loop).
    :param body: body command(s); more may follow as positional arguments.
    :param completion: await put-callback completion at each step.
    :param readback: as for :class:`Set`; without one the loop does not wait (``<wait>false``).
    :param tolerance: readback tolerance (default ``abs(step) / 10``).
    :param timeout: seconds for completion/readback (0 = forever).

    Patch properties: ``start``, ``end``, ``step_size`` and the Set-like ones.
    """

    tag = "loop"

    def __init__(
        self,
        device: str,
        start: float,
        end: float,
        step: float,
        body: Command | Iterable[Command] | None = None,
        *args: Command,
        completion: bool = False,
        readback: bool | str = False,
        tolerance: float | None = None,
        timeout: float = 0.0,
        errhandler: str | None = None,
    ) -> None:
        self.device = _check_text(device, "device name")
        self.start = _check_real(start, "loop start")
        self.end = _check_real(end, "loop end")
        self.step = _check_real(step, "loop step")
        if self.step == 0:
            raise InvalidUsage("loop step must not be 0")
        self._body = _body_list(body, args)
        self.completion = bool(completion)
        self.readback: bool | str = _readback_arg(readback, self.device)
        self.tolerance = abs(float(step)) / 10.0 if tolerance is None else _check_number(tolerance, "tolerance")
        self.timeout = _check_number(timeout, "timeout")
        self._set_errhandler(errhandler)

    @property
    def wait(self) -> bool:
        """Does the server wait for the readback at each step? (``readback`` is not False)."""
        return self.readback is not False

    def _key(self) -> tuple[Any, ...]:
        return (
            self.device, self.start, self.end, self.step, self.completion, self.readback,
            self.tolerance if self.wait else None,
            self.timeout if (self.completion or self.wait) and self.timeout > 0 else 0.0,
            tuple(self._body),
        )

    def _add_xml(self, elem: ET.Element) -> None:
        _sub(elem, "device", self.device)
        _sub(elem, "start", str(self.start))
        _sub(elem, "end", str(self.end))
        _sub(elem, "step", str(self.step))
        if self.completion:
            _sub(elem, "completion", "true")
        _sub(elem, "wait", "true" if self.wait else "false")
        if self.wait:
            _sub(elem, "readback", self.device if self.readback is True else str(self.readback))
            _sub(elem, "tolerance", _fmt_num(self.tolerance))
        if (self.completion or self.wait) and self.timeout > 0:
            _sub(elem, "timeout", _fmt_num(self.timeout))
        self._add_body(elem, always=True)

    @classmethod
    def _from_element(cls, elem: ET.Element) -> Command:
        body = _parse_body(elem)
        wait = _child_bool(elem, "wait", True)
        step = _num_or_int(elem, "step", 1.0)
        return cls(
            _child_str(elem, "device"),
            _num_or_int(elem, "start", 0.0),
            _num_or_int(elem, "end", 10.0),
            step if step != 0 else 1.0,  # the server turns a 0 step into 1
            body,
            completion=_child_bool(elem, "completion", False),
            readback=(_child_str(elem, "readback") or True) if wait else False,
            tolerance=max(0.0, _child_float(elem, "tolerance", 0.1)),
            timeout=max(0.0, _child_float(elem, "timeout", 0.0)),
        )

    def _args_repr(self) -> list[str]:
        args = [repr(self.device), repr(self.start), repr(self.end), repr(self.step)]
        if self._body:
            args.append(self._body_repr())
        if self.completion:
            args.append("completion=True")
        if self.wait:
            args.append(f"readback={self.readback!r}")
            args.append(f"tolerance={self.tolerance!r}")
        if (self.completion or self.wait) and self.timeout > 0:
            args.append(f"timeout={self.timeout!r}")
        return args

    # PyScanClient's setters
    def getDevice(self) -> str:
        """:returns: the loop device."""
        return self.device

    def setCompletion(self, completion: bool) -> None:
        """Change ``completion``."""
        self.completion = bool(completion)

    def setReadback(self, readback: bool | str) -> None:
        """Change ``readback``."""
        self.readback = _readback_arg(readback, self.device)

    def setTolerance(self, tolerance: float) -> None:
        """Change ``tolerance``."""
        self.tolerance = _check_number(tolerance, "tolerance")

    def setTimeout(self, timeout: float) -> None:
        """Change ``timeout`` (seconds)."""
        self.timeout = _check_number(timeout, "timeout")


def _num_or_int(elem: ET.Element, tag: str, default: float) -> int | float:
    text = _child_text(elem, tag)
    if text is None:
        return default
    n = _parse_number(text)
    if n is None:
        raise ScanXMLError(f"Invalid number {text!r} in <{elem.tag}><{tag}>")
    return n


class Parallel(_BodyCommand):
    """Run the body commands concurrently.  ``<parallel><timeout><body>``.

    :param body: command(s); more may follow as positional arguments.
    :param timeout: seconds after which the whole Parallel fails (0 = none).
    """

    tag = "parallel"

    def __init__(self, body: Command | Iterable[Command] | None = None, *args: Command,
                 timeout: float = 0.0, errhandler: str | None = None, errHandler: str | None = None) -> None:
        self._body = _body_list(body, args)
        self.timeout = _check_number(timeout, "timeout")
        self._set_errhandler(errhandler or errHandler)

    def _key(self) -> tuple[Any, ...]:
        return (max(self.timeout, 0.0), tuple(self._body))

    def _add_xml(self, elem: ET.Element) -> None:
        if self.timeout > 0:
            _sub(elem, "timeout", _fmt_num(self.timeout))
        self._add_body(elem, always=False)

    @classmethod
    def _from_element(cls, elem: ET.Element) -> Command:
        return cls(_parse_body(elem), timeout=max(0.0, _child_float(elem, "timeout", 0.0)))

    def _args_repr(self) -> list[str]:
        args = [repr(c) for c in self._body]
        if self.timeout > 0:
            args.append(f"timeout={self.timeout!r}")
        return args


class Sequence(_BodyCommand):
    """Run the body commands in order (useful inside :class:`Parallel`).  ``<sequence><body>``.

    Unlike PyScanClient, nested Sequences are *not* flattened: they are distinct commands on the
    server (each has an address and a work unit), so flattening would change patch addresses.
    """

    tag = "sequence"

    def __init__(self, body: Command | Iterable[Command] | None = None, *args: Command,
                 errhandler: str | None = None) -> None:
        self._body = _body_list(body, args)
        self._set_errhandler(errhandler)

    def append(self, *commands: Command) -> None:
        """Append command(s) to the body."""
        self._body.extend(_body_list(None, commands))

    def _key(self) -> tuple[Any, ...]:
        return tuple(self._body)

    def _add_xml(self, elem: ET.Element) -> None:
        self._add_body(elem, always=False)

    @classmethod
    def _from_element(cls, elem: ET.Element) -> Command:
        return cls(_parse_body(elem))

    def _args_repr(self) -> list[str]:
        return [repr(c) for c in self._body]


class If(_BodyCommand):
    """Run the body only if a device meets a condition (read once, no waiting).

    :param device: device name.
    :param comparison: as for :class:`Wait` but without increase/decrease.
    :param value: value to compare with.
    :param body: command(s); more may follow as positional arguments.
    :param tolerance: tolerance for ``'='`` (default 0.1, always sent).
    """

    tag = "if"

    def __init__(self, device: str, comparison: str, value: Value,
                 body: Command | Iterable[Command] | None = None, *args: Command,
                 tolerance: float = 0.1, errhandler: str | None = None) -> None:
        self.device = _check_text(device, "device name")
        self.comparison = comparison_name(comparison, allowed=_IF_COMPARISONS)
        if self.comparison in ("IN", "NOT_IN"):
            self.value: Value = _check_text(str(value), "if value")
        else:
            self.value = _check_value(value, "if value")
        self._body = _body_list(body, args)
        self.tolerance = _check_number(tolerance, "tolerance")
        self._set_errhandler(errhandler)

    def _key(self) -> tuple[Any, ...]:
        return (self.device, self.comparison, self.value, max(self.tolerance, 0.0), tuple(self._body))

    def _add_xml(self, elem: ET.Element) -> None:
        _sub(elem, "device", self.device)
        _sub(elem, "comparison", self.comparison)
        raw = self.comparison in ("IN", "NOT_IN")
        _sub(elem, "value", str(self.value) if raw else _value_text(self.value))
        _sub(elem, "tolerance", _fmt_num(self.tolerance))
        self._add_body(elem, always=True)

    @classmethod
    def _from_element(cls, elem: ET.Element) -> Command:
        cmp_text = _child_str(elem, "comparison", "EQUALS").strip()
        try:
            comparison = comparison_name(cmp_text, allowed=_IF_COMPARISONS)
        except InvalidUsage:
            comparison = "EQUALS"
        raw = _child_text(elem, "value")
        value: Value = (raw if raw is not None else "0") if comparison in ("IN", "NOT_IN") else _parse_value(raw, 0)
        return cls(_child_str(elem, "device"), comparison, value, _parse_body(elem),
                   tolerance=max(0.0, _child_float(elem, "tolerance", 0.1)))

    def _args_repr(self) -> list[str]:
        args = [repr(self.device), repr(COMPARISONS[self.comparison]), repr(self.value)]
        if self._body:
            args.append(self._body_repr())
        args.append(f"tolerance={self.tolerance!r}")
        return args


class Include(Command):
    """Run the commands of a scan file on the server's script path, with macros.

    :param scan: scan file name (resolved by the server at submit time).
    :param macros: ``"name=value, other=42"`` or None.
    """

    tag = "include"

    def __init__(self, scan: str, macros: str | None = None, errhandler: str | None = None) -> None:
        self.scan_file = _check_text(scan, "scan file")
        self.macros = _check_text(macros or "", "macros")
        self._set_errhandler(errhandler)

    def _key(self) -> tuple[Any, ...]:
        return (self.scan_file, self.macros)

    def _add_xml(self, elem: ET.Element) -> None:
        _sub(elem, "scan_file", self.scan_file)
        if self.macros:
            _sub(elem, "macros", self.macros)

    @classmethod
    def _from_element(cls, elem: ET.Element) -> Command:
        return cls(_child_str(elem, "scan_file"), _child_str(elem, "macros"))

    def _args_repr(self) -> list[str]:
        args = [repr(self.scan_file)]
        if self.macros:
            args.append(f"macros={self.macros!r}")
        return args


class Script(Command):
    """Run a server-side (Jython) script class with text arguments.

    :param script: class name (the server loads ``<lower-case name>.py`` from its script path).
    :param args: arguments, turned to text as PyScanClient does (``str(arg)``); a single list
        argument is taken as the argument list.
    """

    tag = "script"

    def __init__(self, script: str, *args: Any, errhandler: str | None = None,
                 errHandler: str | None = None) -> None:
        self.script = _check_text(script, "script name")
        if len(args) == 1 and isinstance(args[0], (list, tuple)):
            args = tuple(args[0])
        self.arguments = [_check_text(a if isinstance(a, str) else str(a), "script argument") for a in args]
        self._set_errhandler(errhandler or errHandler)

    def _key(self) -> tuple[Any, ...]:
        return (self.script, tuple(self.arguments))

    def _add_xml(self, elem: ET.Element) -> None:
        _sub(elem, "path", self.script)
        if self.arguments:
            args = _sub(elem, "arguments")
            for a in self.arguments:
                _sub(args, "argument", a)

    @classmethod
    def _from_element(cls, elem: ET.Element) -> Command:
        args_elem = _child(elem, "arguments")
        args = [] if args_elem is None else [a.text or "" for a in args_elem if a.tag == "argument"]
        return cls(_child_str(elem, "path"), args)

    def _args_repr(self) -> list[str]:
        return [repr(self.script), *(repr(a) for a in self.arguments)]


# --------------------------------------------------------------------------------------------------
# Sequences, parsing, addresses
# --------------------------------------------------------------------------------------------------


def _flatten(items: Iterable[Any]) -> list[Command]:
    out: list[Command] = []
    for item in items:
        if isinstance(item, Command):
            out.append(item)
        elif isinstance(item, CommandSequence):
            out.extend(item.commands)
        elif isinstance(item, (str, bytes)):
            raise InvalidUsage(f"Expected a command, got {item!r}")
        else:
            try:
                out.extend(_flatten(item))
            except TypeError:
                raise InvalidUsage(f"Expected a command, got {item!r}") from None
    return out


class CommandSequence:
    """The commands of one scan (PyScanClient's ``CommandSequence``): a list with XML output.

    :param commands: commands, lists of commands, or other sequences (all appended in order).
    """

    def __init__(self, *commands: Command | Iterable[Command]) -> None:
        self.commands: list[Command] = _flatten(commands)

    def append(self, *commands: Command | Iterable[Command]) -> None:
        """Append commands or lists of commands."""
        self.commands.extend(_flatten(commands))

    def __len__(self) -> int:
        return len(self.commands)

    def __iter__(self) -> Iterator[Command]:
        return iter(self.commands)

    def __getitem__(self, index: int) -> Command:
        return self.commands[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CommandSequence):
            return self.commands == other.commands
        if isinstance(other, list):
            return self.commands == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def to_element(self) -> ET.Element:
        """:returns: the ``<commands>`` element."""
        root = ET.Element("commands")
        for c in self.commands:
            root.append(c.to_element())
        return root

    def to_xml(self) -> str:
        """The ``<commands>`` document as text.

        :returns: no declaration, two-space indentation (the layout PyScanClient sends,
            protocols/scan-server.md 3.8).
        """
        root = self.to_element()
        ET.indent(root, "  ")
        # ElementTree leaves CR raw in text, and an XML parser would turn it into LF: escape it.
        return ET.tostring(root, encoding="unicode").replace("\r", "&#13;")

    def genSCN(self) -> str:
        """PyScanClient name of :meth:`to_xml`."""
        return self.to_xml()

    @classmethod
    def from_xml(cls, xml: bytes | str) -> CommandSequence:
        """Parse a ``<commands>`` document; see :func:`parse_commands`."""
        return parse_commands(xml)

    def __repr__(self) -> str:
        return f"CommandSequence({self.commands!r})"

    def format(self) -> str:
        """:returns: one command per line, as Python (PyScanClient's ``toSeqString``)."""
        if not self.commands:
            return "[]"
        return "[\n  " + ",\n  ".join(repr(c) for c in self.commands) + "\n]"

    toSeqString = format


def command_from_element(elem: ET.Element) -> Command:
    """Build one command from its XML element (server defaults for missing elements).

    :raises ScanXMLError: unknown command tag ("Unknown scan command ID x") or a bad number.
    """
    cls = Command._registry.get(elem.tag)
    if cls is None:
        raise ScanXMLError(f"Unknown scan command ID {elem.tag}")
    try:
        cmd = cls._from_element(elem)
    except InvalidUsage as e:
        raise ScanXMLError(f"Invalid <{elem.tag}>: {e}") from e
    handler = _child_text(elem, "error_handler")
    cmd._set_errhandler(handler.strip() if handler else None)
    return cmd


def parse_commands(xml: bytes | str) -> CommandSequence:
    """Parse a ``<commands>`` document (the body of submit/simulate, or ``GET .../commands``).

    Unknown child elements (such as old clients' ``<address>``) are ignored, as the server does.

    :raises ScanXMLError: malformed or unsafe XML, a root other than ``<commands>`` ("Wrong
        document type"), an unknown command, or a bad number (protocols/scan-server.md 3.8).
    """
    root = parse_xml(xml, what="scan commands")
    if root.tag != "commands":
        raise ScanXMLError(f"Wrong document type: expected <commands>, got <{root.tag}>")
    _check_depth(root)
    return CommandSequence([command_from_element(e) for e in root])


def to_commands(cmds: CommandSequence | Command | Iterable[Command]) -> CommandSequence:
    """Coerce a command, a list of commands or a sequence to a :class:`CommandSequence`.

    :raises InvalidUsage: something in it is not a command.
    """
    if isinstance(cmds, CommandSequence):
        return cmds
    if isinstance(cmds, Command):
        return CommandSequence(cmds)
    if isinstance(cmds, (str, bytes)):
        raise InvalidUsage("Expected commands, got text (parse it with parse_scan or load_scan)")
    return CommandSequence(*cmds)


def addressed(commands: Iterable[Command], start: int = 0) -> Iterator[tuple[int, Command]]:
    """Yield ``(address, command)`` pre-order, depth first, as the server numbers commands.

    A command with a body takes the next address, then its body the following ones
    (protocols/scan-server.md 3.10).
    """
    address = start

    def walk(cmds: Iterable[Command]) -> Iterator[tuple[int, Command]]:
        nonlocal address
        for c in cmds:
            yield address, c
            address += 1
            if c.body:
                yield from walk(c.body)

    yield from walk(commands)
