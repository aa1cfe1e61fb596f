"""EPICS/Phoebus scan server support: command model, text scan language, REST client.

- :mod:`~katclient.devices.scan.commands`: PyScanClient's command classes, producing and parsing
  the server's ``<commands>`` XML.
- :mod:`~katclient.devices.scan.language`: a ply grammar for typing a scan as text.
- :mod:`~katclient.devices.scan.model`: sans-I/O parsing of replies (``ScanInfo`` etc.), errors.
- :mod:`~katclient.devices.scan.client`: the Tornado ``ScanClient``.
- :mod:`~katclient.devices.scan.device`: ``ScanDevice``, the virtual KATCP device (``scan://``).

Facts: protocols/scan-server.md.
"""

from katclient.devices.scan.client import DEFAULT_PORT, DEFAULT_URL, ScanClient
from katclient.devices.scan.commands import (
    Command,
    CommandSequence,
    Comment,
    ConfigLog,
    Delay,
    If,
    Include,
    Log,
    Loop,
    Parallel,
    Script,
    Sequence,
    Set,
    Wait,
    addressed,
    parse_commands,
)
from katclient.devices.scan.device import ScanDevice
from katclient.devices.scan.language import ScanSyntaxError, format_scan, load_scan, parse_scan
from katclient.devices.scan.model import (
    DONE_STATES,
    DeviceInfo,
    ScanData,
    ScanError,
    ScanFailedError,
    ScanInfo,
    ScanServerError,
    ScanState,
    ScanSubmitError,
    ScanXMLError,
    ServerInfo,
    SimulationResult,
    UnknownScanError,
    create_table,
    createTable,
)

__all__ = [
    "ScanClient",
    "ScanDevice",
    "DEFAULT_URL",
    "DEFAULT_PORT",
    "Command",
    "CommandSequence",
    "Comment",
    "ConfigLog",
    "Delay",
    "If",
    "Include",
    "Log",
    "Loop",
    "Parallel",
    "Script",
    "Sequence",
    "Set",
    "Wait",
    "addressed",
    "parse_commands",
    "parse_scan",
    "format_scan",
    "load_scan",
    "ScanSyntaxError",
    "ScanInfo",
    "ScanState",
    "DONE_STATES",
    "ServerInfo",
    "DeviceInfo",
    "SimulationResult",
    "ScanData",
    "createTable",
    "create_table",
    "ScanError",
    "ScanXMLError",
    "ScanServerError",
    "ScanSubmitError",
    "UnknownScanError",
    "ScanFailedError",
]
