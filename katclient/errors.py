"""katclient's exception hierarchy (re-exported from :mod:`katclient.protocol.errors`)."""

from katclient.protocol.errors import (
    FailReply,
    InvalidReply,
    InvalidUsage,
    KatclientConnectionError,
    KatclientError,
    KatclientTimeoutError,
    KatcpSyntaxError,
    LineTooLongError,
    OperationFailure,
    ProtocolError,
    SyncError,
)

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
