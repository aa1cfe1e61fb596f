"""PyOpticon dashboard support: the socket protocol's sans-I/O core and a Tornado client.

Source: /work/shared/protocols/pyopticon.md.  ``protocol`` encodes requests, frames and classifies replies
without any I/O; ``client`` holds :class:`OpticonClient`, the coroutine version of pyopticon's
``PyOpticonSocketClient``; ``device`` holds :class:`OpticonDevice`, the dashboard as a virtual KATCP device.
"""

from katclient.devices.opticon.client import (
    DEFAULT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_PROBE_AFTER,
    DEFAULT_TIMEOUT,
    MAX_QUEUED_REQUESTS,
    OpticonClient,
)
from katclient.devices.opticon.device import (
    OpticonConfig,
    OpticonDevice,
    load_config,
    parse_config,
)
from katclient.devices.opticon.protocol import (
    DEFAULT_PORT,
    INTROSPECTION_EXPRESSION,
    MAX_REQUEST_BYTES,
    DashboardError,
    ErrorMode,
    ReplyTooLong,
    RequestQueueFull,
    RequestTooLong,
    UnexpectedReply,
)

__all__ = [
    "OpticonClient",
    "OpticonDevice",
    "OpticonConfig",
    "load_config",
    "parse_config",
    "DEFAULT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_PROBE_AFTER",
    "MAX_QUEUED_REQUESTS",
    "DEFAULT_PORT",
    "MAX_REQUEST_BYTES",
    "INTROSPECTION_EXPRESSION",
    "ErrorMode",
    "DashboardError",
    "RequestTooLong",
    "RequestQueueFull",
    "UnexpectedReply",
    "ReplyTooLong",
]
