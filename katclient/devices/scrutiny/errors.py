"""Exceptions of the Scrutiny client, under katclient's one hierarchy (:mod:`katclient.errors`).

Source: protocols/scrutiny.md section 1.2 (the ``error`` reply) and 1.7 (the SDK's error model, which
these mirror: a server ``error`` reply or a failed device completion becomes an operation failure
carrying the server's text).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from katclient.errors import InvalidUsage, OperationFailure, ProtocolError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from katclient.devices.scrutiny.model import WriteResult

__all__ = ["ScrutinyError", "ScrutinyBatchWriteError", "ScrutinyProtocolError", "MessageTooLargeError"]


class ScrutinyError(OperationFailure):
    """The Scrutiny server answered, and the answer is a failure.

    Raised for ``{"cmd": "error", "msg": ...}`` replies (scrutiny.md 1.2) and for device-side
    completions with ``success: false`` (a write's ``failure_reason``, a memory operation's
    ``detail_msg``, a datalogging acquisition's ``detail_msg``).

    :param msg: the server's message text (``msg``, ``failure_reason`` or ``detail_msg``).
    :param request_cmd: the command that failed (the ``request_cmd`` field, or the command sent).
    :param reply: the raw reply dict, when there is one.
    """

    def __init__(self, msg: str, request_cmd: str = "", reply: object = None) -> None:
        self.msg = msg
        self.request_cmd = request_cmd
        super().__init__(msg, reply)

    def __str__(self) -> str:
        return f"{self.request_cmd}: {self.msg}" if self.request_cmd else self.msg


class ScrutinyBatchWriteError(ScrutinyError):
    """At least one write of a batch failed on the device (scrutiny.md 1.4 ``write_watchable``).

    :param results: one :class:`~katclient.devices.scrutiny.model.WriteResult` per requested write,
        in request order; the failed ones carry the device's ``failure_reason``.
    """

    def __init__(self, results: Sequence[WriteResult]) -> None:
        self.results = tuple(results)
        failed = [r for r in self.results if not r.success]
        text = "; ".join(f"{r.path}: {r.failure_reason or 'failed'}" for r in failed)
        super().__init__(f"{len(failed)} of {len(self.results)} writes failed: {text}", "write_watchable")


class ScrutinyProtocolError(ProtocolError):
    """The server sent a message that does not have the shape scrutiny.md section 1.4/1.5 documents.

    :param reason: what is wrong.
    :param message: the offending decoded message (or ``None``).
    """

    def __init__(self, reason: str, message: object = None) -> None:
        self.reason = reason
        self.message = message
        super().__init__(reason)


class MessageTooLargeError(InvalidUsage):
    """An outgoing message would exceed ``STREAM_MTU`` once framed (scrutiny.md 1.1).

    :param size: payload size in bytes, as it would be sent.
    :param limit: the limit in bytes.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message payload of {size} bytes exceeds the {limit}-byte limit")
