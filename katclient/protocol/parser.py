"""Incremental KATCP parser with bounded memory (sans-I/O).

Sources: KATCP v5 spec section 2; protocols/katcp.md 1.1 (readers split on ``\\n``
or ``\\r``, empty lines ignored, katcp-python's 2 MiB limit), 5.2 (grammar) and 5.3
(katcp-codec's over-long line handling, which this parser improves on: it reports
an endless line as soon as it crosses the limit instead of never).

Feed it chunks split anywhere; it returns, in stream order, one item per complete
line: a :class:`~katclient.protocol.message.Message` or a
:class:`~katclient.protocol.errors.KatcpSyntaxError` *object* (never raised), so
that one bad line loses nothing else.
"""

from __future__ import annotations

import re
from typing import Final

from katclient.protocol.errors import KatcpSyntaxError, LineTooLongError
from katclient.protocol.message import MAX_MID, Message, MessageType, unescape_table

__all__ = ["Parser", "parse_line", "split_arguments", "DEFAULT_MAX_LINE_LENGTH"]

#: Default longest accepted line, terminator included.  katcp-python's client closes
#: the connection past 2 MiB without a terminator (katcp.md 1.1); a 10,000-name bulk
#: ``?sensor-sampling`` is about 150 KB, so 2 MiB leaves a wide margin while bounding
#: what one peer can make us buffer.
DEFAULT_MAX_LINE_LENGTH: Final = 2 * 1024 * 1024

_EOL: Final = re.compile(rb"[\r\n]")
_HEAD: Final = re.compile(rb"([?!#])([A-Za-z][A-Za-z0-9-]*)(?:\[([1-9][0-9]*)\])?\Z")
_ESCAPE_SEQ: Final = re.compile(rb"\\(.?)", re.DOTALL)
_TYPES: Final = {b"?"[0]: MessageType.REQUEST, b"!"[0]: MessageType.REPLY, b"#"[0]: MessageType.INFORM}
_BAD_RAW: Final = re.compile(rb"[\0\x1b]")


#: A backslash not followed by a known escape letter (or at the end): only checked in
#: arguments whose ``\\\\`` pairs were split off, where every backslash starts an escape.
_BAD_ESCAPE: Final = re.compile(rb"\\(?:[^_0nret@]|\Z)")


def _unescape(arg: bytes, line: bytes) -> bytes:
    # Fastest path, the usual case (text with spaces): every backslash starts a ``\\_``.
    if arg.count(b"\\") == arg.count(b"\\_"):
        return arg.replace(b"\\_", b" ")
    # Fast path: split off escaped backslashes (pairs match left to right, as the grammar
    # pairs them), then every remaining backslash starts a two-byte escape whose result
    # holds no backslash, so plain replace() calls in any order are exact.
    pieces = arg.split(b"\\\\") if b"\\\\" in arg else [arg]
    out = []
    for piece in pieces:
        if b"\\" in piece:
            if _BAD_ESCAPE.search(piece) is not None:
                return _unescape_slow(arg, line)
            piece = (
                piece.replace(b"\\_", b" ")
                .replace(b"\\n", b"\n")
                .replace(b"\\r", b"\r")
                .replace(b"\\t", b"\t")
                .replace(b"\\0", b"\0")
                .replace(b"\\e", b"\x1b")
                .replace(b"\\@", b"")
            )
        out.append(piece)
    return out[0] if len(out) == 1 else b"\\".join(out)


def _unescape_slow(arg: bytes, line: bytes) -> bytes:
    def sub(m: re.Match[bytes]) -> bytes:
        try:
            return unescape_table[m.group(1)]
        except KeyError:
            pos = line.find(arg) + m.start() + 1
            what = "Trailing backslash" if not m.group(1) else f"Invalid escape {m.group()!r}"
            raise KatcpSyntaxError(what, line, pos) from None

    return _ESCAPE_SEQ.sub(sub, arg)


def parse_line(line: bytes) -> Message:
    """Parse one line (without its terminator) into a :class:`Message`.

    :param line: the line's bytes; must not contain ``\\r`` or ``\\n``.
    :returns: the message.
    :raises KatcpSyntaxError: when the line breaks the grammar of spec section 2
        (bad type character, bad name or mid, mid above 2**31-1, raw NUL/ESC, unknown
        escape, trailing backslash); ``.position`` is the 1-based byte position.
    """
    if b"\t" in line:
        line_ = line.replace(b"\t", b" ")
    else:
        line_ = line
    parts = line_.split(b" ")
    m = _HEAD.match(parts[0])
    if m is None:
        if not parts[0]:
            raise KatcpSyntaxError("Leading whitespace", line, 1)
        if parts[0][0] not in _TYPES:
            raise KatcpSyntaxError(f"Bad type character {chr(parts[0][0])!r}", line, 1)
        raise KatcpSyntaxError("Bad message name or message id", line, 2)
    mid_b = m.group(3)
    mid = None
    if mid_b is not None:
        if len(mid_b) > 10 or int(mid_b) > MAX_MID:
            raise KatcpSyntaxError("Message ID overflowed", line, m.start(3) + 1)
        mid = int(mid_b)
    bad = _BAD_RAW.search(line)
    if bad is not None:
        raise KatcpSyntaxError("Invalid character", line, bad.start() + 1)
    if len(parts) == 1:
        args: tuple[bytes, ...] = ()
    else:
        args = tuple(
            (_unescape(a, line) if b"\\" in a else a) for a in parts[1:] if a
        )
    return Message._make(_TYPES[line[0]], m.group(2).decode("ascii"), mid, args)


def split_arguments(line: bytes) -> tuple[bytes, ...]:
    """The unescaped arguments of a line whose head (type, name, mid) was already matched.

    A cheaper :func:`parse_line` for the informs of a request, which arrive by the
    thousand during inspection: an ordinary line is split on spaces and only arguments
    holding a backslash are unescaped; anything unusual (tabs, double spaces, NUL, ESC,
    trailing space) goes through :func:`parse_line`.

    :returns: ``parse_line(line).arguments``.
    :raises KatcpSyntaxError: as :func:`parse_line` does.
    """
    if b"\t" in line or b"  " in line or _BAD_RAW.search(line) is not None or line.endswith(b" "):
        return parse_line(line).arguments
    parts = line.split(b" ")
    del parts[0]
    return tuple(_unescape(p, line) if 92 in p else p for p in parts)  # 92: backslash


class Parser:
    """Incremental line splitter and parser with a bounded line length.

    :param max_line_length: longest accepted line in bytes, terminator included
        (default :data:`DEFAULT_MAX_LINE_LENGTH`).  A longer line costs at most this much
        memory: it is reported once as :class:`LineTooLongError` as soon as it crosses
        the limit, the rest of it is discarded unread, and parsing resumes after its end.
    """

    __slots__ = ("max_line_length", "_partial", "_discarding", "_discarded")

    def __init__(self, max_line_length: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        if max_line_length < 2:
            raise ValueError("max_line_length must be at least 2")
        self.max_line_length = max_line_length
        self._partial = bytearray()
        self._discarding = False
        self._discarded = 0

    @property
    def buffer_size(self) -> int:
        """Bytes of the current incomplete line held in memory (never above the limit)."""
        return len(self._partial)

    def reset(self) -> None:
        """Forget any incomplete line (for example after a reconnect)."""
        self._partial = bytearray()
        self._discarding = False
        self._discarded = 0

    def feed_lines(self, data: bytes) -> list[bytes | KatcpSyntaxError]:
        """Split ``data`` into complete, non-blank lines (terminators removed).

        :param data: the next chunk of the byte stream, split anywhere.
        :returns: one item per complete line in stream order: its ``bytes``, or a
            :class:`LineTooLongError` for a line over the limit.  Blank and
            whitespace-only lines are skipped (katcp.md 5.2).
        """
        out: list[bytes | KatcpSyntaxError] = []
        limit = self.max_line_length
        if self._discarding:
            m = _EOL.search(data)
            if m is None:
                self._discarded += len(data)
                return out
            data = data[m.end():]
            self._discarding = False
        elif 10 not in data and 13 not in data:
            # No line ends here: just accumulate, bounded.
            self._partial += data
            if len(self._partial) >= limit:
                self._overflow(out, len(self._partial))
            return out
        if self._partial:
            data = bytes(self._partial) + data
            self._partial = bytearray()
        # bytes.split is several times faster than the regex; CR is rare on the wire.
        lines = _EOL.split(data) if 13 in data else data.split(b"\n")
        tail = lines.pop()
        for line in lines:
            if not line:
                continue
            if len(line) >= limit:
                out.append(LineTooLongError(len(line) + 1, limit))
            elif line[0] in _TYPES or line.strip(b" \t"):
                out.append(line)
        if tail:
            if len(tail) >= limit:
                self._overflow(out, len(tail))
            else:
                self._partial += tail
        return out

    def _overflow(self, out: list[bytes | KatcpSyntaxError], length: int) -> None:
        out.append(LineTooLongError(length, self.max_line_length))
        self._partial = bytearray()
        self._discarding = True
        self._discarded = length

    def feed(self, data: bytes) -> list[Message | KatcpSyntaxError]:
        """Parse the next chunk of the stream.

        :param data: bytes split anywhere.
        :returns: one :class:`Message` or :class:`KatcpSyntaxError` per complete line,
            in stream order.  Errors are returned, never raised.
        """
        out: list[Message | KatcpSyntaxError] = []
        for item in self.feed_lines(data):
            if isinstance(item, bytes):
                try:
                    out.append(parse_line(item))
                except KatcpSyntaxError as exc:
                    out.append(exc)
            else:
                out.append(item)
        return out
