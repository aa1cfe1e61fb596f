"""KATCP device server on tornado.tcpserver: sensors, sampling strategies, standard requests.

Sources: KATCP v5 spec NRF-KAT7-6.0-IFCE-002 Rev 5.1 and protocols/katcp.md sections 1
and 4.  The wire format and sensor types come from :mod:`katclient.protocol`.
"""

from katclient.server.connection import ClientConnection, format_address
from katclient.server.request import RequestContext, requires, timeout_hint
from katclient.server.sampling import Sampler
from katclient.server.sensor import Sensor, SensorObserver, SensorSet
from katclient.server.server import (
    DEFAULT_MAX_BACKLOG,
    DEFAULT_MAX_IN_FLIGHT,
    LOG_LEVELS,
    SHUTDOWN_REASON,
    DeviceServer,
)

__all__ = [
    "ClientConnection",
    "DEFAULT_MAX_BACKLOG",
    "DEFAULT_MAX_IN_FLIGHT",
    "DeviceServer",
    "LOG_LEVELS",
    "RequestContext",
    "SHUTDOWN_REASON",
    "Sampler",
    "Sensor",
    "SensorObserver",
    "SensorSet",
    "format_address",
    "requires",
    "timeout_hint",
]
