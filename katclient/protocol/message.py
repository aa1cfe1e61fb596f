"""KATCP messages, the escape table and the formatter (sans-I/O).

Sources: KATCP v5 specification NRF-KAT7-6.0-IFCE-002 Rev 5.1, section 2 (message
format); protocols/katcp.md sections 1.1 (line grammar, escapes), 1.2 (message ids)
and 5.2 (katcp-codec's grammar, which katclient follows byte for byte).

A :class:`Message` is immutable and validated when built: a bad name or mid fails
here, not on the wire (STYLE.md habit 5).  Arguments are always ``bytes``; helpers
encode Python values the way katcp-python does (bool ``1``/``0``, int ``%d``, float
``repr``, text UTF-8).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from typing import Any, Final

from katclient.protocol.errors import InvalidUsage

__all__ = [
    "MessageType",
    "Message",
    "MAX_MID",
    "escape",
    "unescape_table",
    "encode_argument",
    "format_message",
    "NAME_RE",
]

#: Largest message id on the wire: katcp-codec and aiokatcp reject anything above
#: 2**31 - 1 (protocols/katcp.md 5.1), so a client counter wraps back to 1 past it.
MAX_MID: Final = 2**31 - 1

#: A request/reply/inform name: ``[A-Za-z][A-Za-z0-9-]*`` (spec 2.2; katcp.md 1.1).
NAME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9-]*\Z")


class MessageType(enum.Enum):
    """The three KATCP message types, valued by their type character (spec 2.1)."""

    REQUEST = "?"
    REPLY = "!"
    INFORM = "#"


#: Bytes that must be escaped (katcp.md 1.1); :func:`escape` holds the table.
_ESCAPE_RE: Final = re.compile(rb"[\\ \0\n\r\x1b\t]")

#: Reverse table: the character after a backslash -> the bytes it stands for.
unescape_table: Final[dict[bytes, bytes]] = {
    b"\\": b"\\",
    b"_": b" ",
    b"0": b"\0",
    b"n": b"\n",
    b"r": b"\r",
    b"e": b"\x1b",
    b"t": b"\t",
    b"@": b"",
}


def escape(arg: bytes) -> bytes:
    """Escape one argument for the wire (katcp.md 1.1 and 5.2).

    :param arg: raw argument bytes (any bytes, including non-UTF-8).
    :returns: the escaped form; an empty argument becomes ``\\@``.
    """
    if not arg:
        return b"\\@"
    if _ESCAPE_RE.search(arg) is None:
        return arg
    # A chain of replace() calls is 2-3x faster than re.sub with a callback; the
    # backslash goes first so the escapes added later are not escaped again.
    return (
        arg.replace(b"\\", b"\\\\")
        .replace(b" ", b"\\_")
        .replace(b"\0", b"\\0")
        .replace(b"\n", b"\\n")
        .replace(b"\r", b"\\r")
        .replace(b"\x1b", b"\\e")
        .replace(b"\t", b"\\t")
    )


def encode_argument(value: Any) -> bytes:
    """Encode one Python value as a KATCP argument, as katcp-python does (katcp.md 1.1).

    :param value: ``bytes``/``bytearray`` (kept), ``str`` (UTF-8), ``bool`` (``1``/``0``),
        ``int`` (``%d``), ``float`` (``repr``), an :class:`enum.Enum` (its lower-case name
        with ``_`` as ``-``, or its ``katcp_value``), or any object with a ``katcp_bytes()``
        method.
    :returns: the raw (unescaped) argument bytes.
    :raises InvalidUsage: for a value of any other type.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    # Enums (Status, Lru, user enums) before int: an IntEnum must go out by name.
    katcp_bytes = getattr(value, "katcp_bytes", None)
    if katcp_bytes is not None:
        return katcp_bytes()  # type: ignore[no-any-return]
    if isinstance(value, enum.Enum):
        kv = getattr(value, "katcp_value", None)
        if kv is not None:
            return encode_argument(kv)
        return value.name.lower().replace("_", "-").encode("ascii")
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, float):
        return repr(value).encode("ascii")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise InvalidUsage(f"cannot encode {type(value).__name__} value {value!r} as a KATCP argument")


class Message(tuple):  # type: ignore[type-arg]
    """An immutable KATCP message: type, name, message id and arguments.

    Built as ``Message(MessageType.REQUEST, "watchdog", mid=3)`` or with the
    :meth:`request`, :meth:`reply` and :meth:`inform` helpers.  Arguments given as
    Python values are encoded with :func:`encode_argument`.

    :ivar mtype: the :class:`MessageType`.
    :ivar name: the message name (``str``, ASCII).
    :ivar mid: the message id (``int`` in 1..:data:`MAX_MID`) or ``None``.
    :ivar arguments: ``tuple[bytes, ...]`` of raw (unescaped) arguments.
    :raises InvalidUsage: for a bad name, mid or argument type (spec 2.2, 2.3).
    """

    __slots__ = ()

    def __new__(
        cls, mtype: MessageType, name: str, *arguments: Any, mid: int | None = None
    ) -> Message:
        if not isinstance(mtype, MessageType):
            raise InvalidUsage(f"mtype must be a MessageType, got {mtype!r}")
        if not isinstance(name, str) or NAME_RE.match(name) is None:
            raise InvalidUsage(f"invalid KATCP message name {name!r}")
        if mid is not None and (type(mid) is not int or not 1 <= mid <= MAX_MID):
            raise InvalidUsage(f"message id must be an int in 1..{MAX_MID}, got {mid!r}")
        args = tuple(a if type(a) is bytes else encode_argument(a) for a in arguments)
        return tuple.__new__(cls, (mtype, name, mid, args))

    @classmethod
    def _make(cls, mtype: MessageType, name: str, mid: int | None, arguments: tuple[bytes, ...]) -> Message:
        """Build without validation (the parser already checked the grammar)."""
        return tuple.__new__(cls, (mtype, name, mid, arguments))

    @property
    def mtype(self) -> MessageType:
        return self[0]  # type: ignore[no-any-return]

    @property
    def name(self) -> str:
        return self[1]  # type: ignore[no-any-return]

    @property
    def mid(self) -> int | None:
        return self[2]  # type: ignore[no-any-return]

    @property
    def arguments(self) -> tuple[bytes, ...]:
        return self[3]  # type: ignore[no-any-return]

    # -- constructors -----------------------------------------------------------------
    @classmethod
    def request(cls, name: str, *arguments: Any, mid: int | None = None) -> Message:
        """A request ``?name[mid] args``."""
        return cls(MessageType.REQUEST, name, *arguments, mid=mid)

    @classmethod
    def reply(cls, name: str, *arguments: Any, mid: int | None = None) -> Message:
        """A reply ``!name[mid] args``; the first argument should be ``ok``, ``fail`` or ``invalid``."""
        return cls(MessageType.REPLY, name, *arguments, mid=mid)

    @classmethod
    def inform(cls, name: str, *arguments: Any, mid: int | None = None) -> Message:
        """An inform ``#name[mid] args``."""
        return cls(MessageType.INFORM, name, *arguments, mid=mid)

    @classmethod
    def reply_to_request(cls, request: Message, *arguments: Any) -> Message:
        """A reply with the name and mid of ``request``."""
        return cls(MessageType.REPLY, request.name, *arguments, mid=request.mid)

    @classmethod
    def inform_for_request(cls, request: Message, *arguments: Any) -> Message:
        """An inform with the name and mid of ``request`` (spec 2.4: informs that belong to a request)."""
        return cls(MessageType.INFORM, request.name, *arguments, mid=request.mid)

    # -- queries ----------------------------------------------------------------------
    def reply_ok(self) -> bool:
        """True only for a reply whose first argument is ``ok`` (katcp.md 1.1)."""
        return self[0] is MessageType.REPLY and bool(self[3]) and self[3][0] == b"ok"

    @property
    def code(self) -> bytes | None:
        """The reply code (``b"ok"``, ``b"fail"``, ``b"invalid"``) of a reply, else ``None``."""
        if self[0] is MessageType.REPLY and self[3]:
            return self[3][0]  # type: ignore[no-any-return]
        return None

    def text_arguments(self) -> list[str]:
        """Arguments decoded as UTF-8 (undecodable bytes kept with ``surrogateescape``)."""
        return [a.decode("utf-8", "surrogateescape") for a in self[3]]

    def __bytes__(self) -> bytes:
        return format_message(self)

    def __repr__(self) -> str:
        return f"<Message {bytes(self)[:-1]!r}>"

    def __str__(self) -> str:
        return bytes(self)[:-1].decode("utf-8", "backslashreplace")

    # tuple's own comparison is kept: two messages are equal when all four fields are.


def format_message(msg: Message) -> bytes:
    """Serialise a message to one wire line, terminated by ``\\n`` (katcp.md 5.2).

    :param msg: the message.
    :returns: ``b"?name[mid] arg1 arg2\\n"`` with every argument escaped.
    """
    mtype, name, mid, args = msg
    head = mtype.value + name if mid is None else f"{mtype.value}{name}[{mid}]"
    if not args:
        return head.encode("ascii") + b"\n"
    return b" ".join([head.encode("ascii"), *map(escape, args)]) + b"\n"


def format_lines(messages: Iterable[Message]) -> bytes:
    """Serialise several messages into one buffer (one write instead of many)."""
    return b"".join(map(format_message, messages))
