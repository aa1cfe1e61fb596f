"""The one exception hierarchy of katclient.

Every error katclient raises derives from :class:`KatclientError`.  Timeouts and
connection problems also derive from the matching builtin, so ``except
TimeoutError`` and ``except ConnectionError`` work as a user expects (STYLE.md
habit 4, after h11 ``_util.py`` and caproto ``CaprotoTimeoutError``).

This module lives in the sans-I/O layer because that layer imports nothing else
of katclient; :mod:`katclient.errors` re-exports every name.
"""

from __future__ import annotations

__all__ = [
    "KatclientError",
    "ProtocolError",
    "KatcpSyntaxError",
    "LineTooLongError",
    "KatclientTimeoutError",
    "KatclientConnectionError",
    "OperationFailure",
    "FailReply",
    "InvalidReply",
    "InvalidUsage",
    "SyncError",
]


class KatclientError(Exception):
    """Root of every exception raised by katclient."""


class ProtocolError(KatclientError):
    """A peer sent something that breaks its wire protocol."""


class KatcpSyntaxError(ProtocolError, ValueError):
    """A KATCP line could not be parsed (KATCP v5 spec section 2; protocols/katcp.md 1.1).

    :param reason: one-line description of what is wrong.
    :param line: the offending line (as received, possibly truncated for display).
    :param position: 1-based byte position in the line where parsing failed, or ``None``.
    """

    def __init__(self, reason: str, line: bytes = b"", position: int | None = None) -> None:
        self.reason = reason
        self.line = line
        self.position = position
        where = f" at character {position}" if position is not None else ""
        shown = line[:80] + (b"..." if len(line) > 80 else b"")
        super().__init__(f"{reason}{where}: {shown!r}" if line else f"{reason}{where}")


class LineTooLongError(KatcpSyntaxError):
    """A line exceeded the parser's maximum line length; it was discarded (protocols/katcp.md 5.3).

    :param length: number of bytes the line had when it was given up on (at least the limit).
    :param limit: the maximum line length in force, in bytes, terminator included.
    """

    def __init__(self, length: int, limit: int) -> None:
        self.length = length
        self.limit = limit
        super().__init__(f"Line too long ({length} bytes, limit {limit})")


class KatclientTimeoutError(KatclientError, TimeoutError):
    """An operation did not complete in its time budget (seconds)."""


class KatclientConnectionError(KatclientError, ConnectionError):
    """The peer is not connected, went away, or could not be reached."""


class OperationFailure(KatclientError):
    """The device answered, and the answer is a failure.

    :param reason: the device's reason text (decoded as UTF-8 with replacement).
    :param reply: the raw reply :class:`~katclient.protocol.Message` when there is one.
    """

    def __init__(self, reason: str = "", reply: object = None) -> None:
        self.reason = reason
        self.reply = reply
        super().__init__(reason)


class FailReply(OperationFailure):
    """A ``fail`` reply.  Raise it from a request handler to reply ``!name fail <reason>``."""


class InvalidReply(OperationFailure):
    """An ``invalid`` reply.  Raise it from a request handler to reply ``!name invalid <reason>``."""


class InvalidUsage(KatclientError, ValueError):
    """The caller used the API wrongly (bad argument, wrong state)."""


class SyncError(KatclientError):
    """Inspecting a device failed (an error reply or timeout during ``?help``/``?sensor-list``)."""
