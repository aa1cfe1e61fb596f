"""Sans-I/O KATCP: messages, parser and formatter, escapes, flags, sensor types, statuses,
readings and sampling strategies.

This package imports no socket and no event loop (STYLE.md habit 1) and nothing else
of katclient.  Sources: KATCP v5 spec NRF-KAT7-6.0-IFCE-002 Rev 5.1 and
protocols/katcp.md.
"""

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
from katclient.protocol.flags import V4, V5_0_IM, V5_1_BIMT, ProtocolFlags
from katclient.protocol.message import (
    MAX_MID,
    Message,
    MessageType,
    encode_argument,
    escape,
    format_lines,
    format_message,
)
from katclient.protocol.parser import DEFAULT_MAX_LINE_LENGTH, Parser, parse_line
from katclient.protocol.sampling import V4_STRATEGIES, Sampling, Strategy, parse_sampling
from katclient.protocol.sensors import (
    SENSOR_TYPES,
    STATUS_FROM_WIRE,
    Address,
    Lru,
    Reading,
    SensorType,
    Status,
    decode_timestamp,
    encode_timestamp,
    sensor_type,
)

__all__ = [
    "Address",
    "DEFAULT_MAX_LINE_LENGTH",
    "FailReply",
    "InvalidReply",
    "InvalidUsage",
    "KatclientConnectionError",
    "KatclientError",
    "KatclientTimeoutError",
    "KatcpSyntaxError",
    "LineTooLongError",
    "Lru",
    "MAX_MID",
    "Message",
    "MessageType",
    "OperationFailure",
    "Parser",
    "ProtocolError",
    "ProtocolFlags",
    "Reading",
    "SENSOR_TYPES",
    "STATUS_FROM_WIRE",
    "Sampling",
    "SensorType",
    "Status",
    "Strategy",
    "SyncError",
    "V4",
    "V4_STRATEGIES",
    "V5_0_IM",
    "V5_1_BIMT",
    "decode_timestamp",
    "encode_argument",
    "encode_timestamp",
    "escape",
    "format_lines",
    "format_message",
    "parse_line",
    "parse_sampling",
    "sensor_type",
]
