"""katclient: a Tornado-based KATCP inspecting client suite.

The main names are re-exported here; the layers are :mod:`katclient.protocol`
(sans-I/O KATCP), :mod:`katclient.client` (Tornado client), :mod:`katclient.server`
(device server) and :mod:`katclient.devices` (virtual devices).
"""

from katclient.client.backoff import ExponentialRandomBackoff
from katclient.client.blocking import BlockingClient, Events, PendingRequest
from katclient.client.inspecting import Changes, InspectingClientAsync, ModelChanges
from katclient.client.sensor import RequestType, Sensor
from katclient.client.state import InspectingClientStateType
from katclient.errors import (
    FailReply,
    InvalidReply,
    InvalidUsage,
    KatclientConnectionError,
    KatclientError,
    KatclientTimeoutError,
    KatcpSyntaxError,
    OperationFailure,
    ProtocolError,
    SyncError,
)
from katclient.protocol import Address, Message, ProtocolFlags, Reading, Status

__version__ = "0.1.0"

__all__ = [
    "Address",
    "BlockingClient",
    "Changes",
    "Events",
    "ExponentialRandomBackoff",
    "FailReply",
    "InspectingClientAsync",
    "InspectingClientStateType",
    "InvalidReply",
    "InvalidUsage",
    "KatclientConnectionError",
    "KatclientError",
    "KatclientTimeoutError",
    "KatcpSyntaxError",
    "Message",
    "ModelChanges",
    "OperationFailure",
    "PendingRequest",
    "ProtocolError",
    "ProtocolFlags",
    "Reading",
    "RequestType",
    "Sensor",
    "Status",
    "SyncError",
    "__version__",
]
