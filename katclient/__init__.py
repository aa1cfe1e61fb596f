"""katclient: a Tornado-based KATCP inspecting client suite.

The main names are available here; the layers are :mod:`katclient.protocol`
(sans-I/O KATCP), :mod:`katclient.client` (Tornado client), :mod:`katclient.server`
(device server) and :mod:`katclient.devices` (virtual devices).

Names are imported on first use (PEP 562), so ``import katclient.protocol`` loads
no socket, event loop or Tornado module (STYLE.md habit 1).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> module that defines it.
_EXPORTS: dict[str, str] = {
    "Address": "katclient.protocol",
    "BlockingClient": "katclient.client.blocking",
    "Changes": "katclient.client.inspecting",
    "Events": "katclient.client.blocking",
    "ExponentialRandomBackoff": "katclient.client.backoff",
    "FailReply": "katclient.errors",
    "InspectingClientAsync": "katclient.client.inspecting",
    "InspectingClientStateType": "katclient.client.state",
    "InvalidReply": "katclient.errors",
    "InvalidUsage": "katclient.errors",
    "KatclientConnectionError": "katclient.errors",
    "KatclientError": "katclient.errors",
    "KatclientTimeoutError": "katclient.errors",
    "KatcpSyntaxError": "katclient.errors",
    "Message": "katclient.protocol",
    "ModelChanges": "katclient.client.inspecting",
    "OperationFailure": "katclient.errors",
    "PendingRequest": "katclient.client.blocking",
    "ProtocolError": "katclient.errors",
    "ProtocolFlags": "katclient.protocol",
    "Reading": "katclient.protocol",
    "RequestType": "katclient.client.sensor",
    "Sensor": "katclient.client.sensor",
    "Status": "katclient.protocol",
    "SyncError": "katclient.errors",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'katclient' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:
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
