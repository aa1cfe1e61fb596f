"""Scrutiny Debugger server API: sans-I/O codec and model, and a Tornado client.

Source: protocols/scrutiny.md.  Layers, bottom up:

* :mod:`.framing` - the ``<SCRUTINY size=.. flags=..>`` datagram codec (bytes in, bytes out);
* :mod:`.model`, :mod:`.datatypes`, :mod:`.events` - typed messages, results and events;
* :mod:`.client` - :class:`ScrutinyClient`, the Tornado I/O layer.

The KATCP mapping (:class:`~katclient.devices.scrutiny.device.ScrutinyDevice`, in :mod:`.device`)
builds on these.  The client and the device are imported lazily, so importing the codec does not
import Tornado.
"""

from typing import TYPE_CHECKING, Any

from katclient.devices.scrutiny.datatypes import DataKind, DataType
from katclient.devices.scrutiny.errors import (
    MessageTooLargeError,
    ScrutinyBatchWriteError,
    ScrutinyError,
    ScrutinyProtocolError,
)
from katclient.devices.scrutiny.events import (
    DataloggerStateChanged,
    DataloggingListChanged,
    DeviceGone,
    DeviceReady,
    ScrutinyEvent,
    ServerConnected,
    ServerDisconnected,
    SFDLoaded,
    SFDUnloaded,
    StatusUpdated,
    SubscriptionsRestored,
    status_events,
)
from katclient.devices.scrutiny.framing import (
    STREAM_MTU,
    FrameDecoder,
    FrameError,
    FrameErrorKind,
    MessageDecoder,
    decode_payload,
    encode_frame,
    encode_message,
)
from katclient.devices.scrutiny.model import (
    AcquisitionInfo,
    AxisDef,
    DataloggerState,
    DataloggingAcquisition,
    DataloggingConfig,
    DataloggingStatus,
    DataSeries,
    DeviceCommState,
    DeviceInfo,
    DeviceLinkInfo,
    EnumDef,
    LoggedSignal,
    MemoryRegion,
    ServerStats,
    ServerStatus,
    SFDInfo,
    SFDMetadata,
    TriggerCondition,
    UserCommandResponse,
    VarFactoryInfo,
    WatchableCount,
    WatchableInfo,
    WatchableList,
    WatchableOperand,
    WatchableType,
    WatchableValue,
    WriteResult,
    XAxisType,
)
from katclient.devices.scrutiny.sfd import read_sfd_firmware_id

if TYPE_CHECKING:  # pragma: no cover - the I/O layer is imported lazily, see __getattr__
    from katclient.devices.scrutiny.client import (
        DEFAULT,
        DEFAULT_PORT,
        DEFAULT_TIMEOUT,
        DEFAULT_WRITE_TIMEOUT,
        STATUS_INTERVAL,
        DataloggingRequest,
        ScrutinyClient,
        StreamFactory,
        Subscription,
    )
    from katclient.devices.scrutiny.device import ScrutinyDevice

_CLIENT_NAMES = frozenset(
    {
        "DEFAULT",
        "DEFAULT_PORT",
        "DEFAULT_TIMEOUT",
        "DEFAULT_WRITE_TIMEOUT",
        "STATUS_INTERVAL",
        "DataloggingRequest",
        "ScrutinyClient",
        "StreamFactory",
        "Subscription",
    }
)


def __getattr__(name: str) -> Any:
    # The Tornado client is imported on first use, so the sans-I/O modules of this package can be
    # imported without sockets or an event loop (STYLE.md habit 1).
    if name in _CLIENT_NAMES:
        from katclient.devices.scrutiny import client

        return getattr(client, name)
    if name == "ScrutinyDevice":  # the KATCP mapping (imports the KATCP server): also lazy
        from katclient.devices.scrutiny import device

        return device.ScrutinyDevice
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    # KATCP mapping
    "ScrutinyDevice",
    # client
    "ScrutinyClient",
    "DataloggingRequest",
    "Subscription",
    "StreamFactory",
    "DEFAULT",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WRITE_TIMEOUT",
    "STATUS_INTERVAL",
    # errors
    "ScrutinyError",
    "ScrutinyBatchWriteError",
    "ScrutinyProtocolError",
    "MessageTooLargeError",
    # framing
    "STREAM_MTU",
    "FrameDecoder",
    "MessageDecoder",
    "FrameError",
    "FrameErrorKind",
    "encode_frame",
    "encode_message",
    "decode_payload",
    # model
    "DataKind",
    "DataType",
    "WatchableType",
    "WatchableInfo",
    "WatchableList",
    "WatchableCount",
    "WatchableValue",
    "VarFactoryInfo",
    "EnumDef",
    "WriteResult",
    "ServerStatus",
    "DeviceCommState",
    "DataloggerState",
    "DataloggingStatus",
    "DeviceLinkInfo",
    "DeviceInfo",
    "MemoryRegion",
    "ServerStats",
    "SFDInfo",
    "SFDMetadata",
    "UserCommandResponse",
    "DataloggingConfig",
    "TriggerCondition",
    "XAxisType",
    "AxisDef",
    "LoggedSignal",
    "WatchableOperand",
    "AcquisitionInfo",
    "DataSeries",
    "DataloggingAcquisition",
    "read_sfd_firmware_id",
    # events
    "ScrutinyEvent",
    "ServerConnected",
    "ServerDisconnected",
    "DeviceReady",
    "DeviceGone",
    "SFDLoaded",
    "SFDUnloaded",
    "DataloggerStateChanged",
    "StatusUpdated",
    "DataloggingListChanged",
    "SubscriptionsRestored",
    "status_events",
]
