"""Sans-I/O model of the scan server's replies: errors, safe XML parsing, scan info, data.

Everything here works on ``bytes``/``str`` in and Python objects out; nothing knows sockets or
event loops, so the Tornado client (:mod:`katclient.devices.scan.client`), the fake server and the
future KATCP mapping all share it.  Wire facts: protocols/scan-server.md sections 3.1-3.6 (server)
and 4 (what users of PyScanClient expect).
"""

from __future__ import annotations

import datetime
import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from xml.parsers import expat

from katclient.errors import InvalidUsage, KatclientError, OperationFailure, ProtocolError

__all__ = [
    "MAX_XML_BYTES",
    "ScanError",
    "ScanXMLError",
    "ScanServerError",
    "ScanSubmitError",
    "UnknownScanError",
    "ScanFailedError",
    "ScanState",
    "DONE_STATES",
    "ScanInfo",
    "ServerInfo",
    "DeviceInfo",
    "SimulationResult",
    "ScanData",
    "DeviceSamples",
    "parse_xml",
    "parse_scan_info",
    "parse_scan_infos",
    "parse_server_info",
    "parse_devices",
    "parse_data",
    "parse_simulation",
    "parse_id",
    "parse_serial",
    "parse_error_body",
    "error_from_response",
    "createTable",
    "create_table",
]

#: Largest XML document parsed, in bytes.  The biggest real replies are data logs; cs-studio #1788
#: saw a 5 MB ``/data`` reply break the server, so 64 MiB leaves ample room while bounding memory.
MAX_XML_BYTES = 64 * 1024 * 1024

#: How much of an error body is kept on an exception (bytes), so a huge error page cannot bloat logs.
MAX_ERROR_BODY_KEPT = 4096

Value = int | float | str


# --------------------------------------------------------------------------------------------------
# Errors (all under katclient.errors, STYLE.md habit 4)
# --------------------------------------------------------------------------------------------------


class ScanError(KatclientError):
    """Root of the scan-server specific errors (a :class:`~katclient.errors.KatclientError`)."""


class ScanXMLError(ScanError, ProtocolError, ValueError):
    """XML that is malformed, unsafe (DTD/entities) or not the shape the scan server uses.

    Raised for replies from the network (a protocol error) and for command XML given by a caller
    (hence also a :class:`ValueError`).  Source: protocols/scan-server.md sections 3.4-3.8.
    """


class ScanServerError(ScanError, OperationFailure):
    """The scan server answered with an HTTP error status.

    :param status: HTTP status code (400, 404, 500, ...).
    :param reason: the server's message: the Jetty page's MESSAGE, or ``<error><message>``.
    :param body: the start of the raw body (at most :data:`MAX_ERROR_BODY_KEPT` bytes).
    :param url: the URL requested.

    Source: protocols/scan-server.md section 3.6.
    """

    def __init__(self, status: int, reason: str, body: bytes = b"", url: str = "") -> None:
        self.status = status
        self.body = body[:MAX_ERROR_BODY_KEPT]
        self.url = url
        super().__init__(reason, None)
        self.args = (f"Scan server error {status}: {reason}" + (f" ({url})" if url else ""),)


class ScanSubmitError(ScanServerError):
    """Submit or simulate failed: a 400 ``<error>`` reply (protocols/scan-server.md 3.6 item 1).

    :attr trace: the server's Java stack trace text (where the real reason usually is).
    :attr detail: the most useful line of the trace (the first exception message), or ``""``.
    """

    def __init__(self, status: int, reason: str, trace: str, body: bytes = b"", url: str = "") -> None:
        super().__init__(status, reason, body, url)
        self.trace = trace
        self.detail = _first_trace_message(trace)
        if self.detail:
            self.args = (f"{self.args[0]}: {self.detail}",)


class UnknownScanError(ScanServerError):
    """The server does not know the scan id ("Unknown scan ID N": 500 for GET, 400 for PUT/DELETE).

    :attr scan_id: the id parsed from the message, or ``None``.
    """

    def __init__(self, status: int, reason: str, body: bytes = b"", url: str = "") -> None:
        super().__init__(status, reason, body, url)
        m = re.search(r"Unknown scan ID (-?\d+)", reason)
        self.scan_id = int(m.group(1)) if m else None


class ScanFailedError(ScanError, OperationFailure):
    """A scan ended Aborted or Failed (raised by ``wait_until_done``).

    :attr info: the final :class:`ScanInfo`; ``info.error`` holds the server's error text.
    """

    def __init__(self, info: ScanInfo) -> None:
        self.info = info
        reason = f"Scan {info.id} '{info.name}' {info.state}"
        if info.error:
            reason += f": {info.error}"
        super().__init__(reason, info)


def _first_trace_message(trace: str) -> str:
    for line in trace.splitlines():
        line = line.strip()
        if line and not line.startswith("at ") and not line.startswith("..."):
            m = re.match(r"(?:Caused by: )?(?:[\w$]+\.)+[\w$]*(?:Exception|Error)(?:: (.*))?$", line)
            if m:
                if m.group(1):
                    return m.group(1)
                continue
            return line
    return ""


# --------------------------------------------------------------------------------------------------
# Safe XML
# --------------------------------------------------------------------------------------------------


def _forbid(what: str) -> Any:
    def handler(*_args: object) -> None:
        raise ScanXMLError(f"XML with {what} refused (DTDs and entities are not used by the scan server)")

    return handler


def parse_xml(data: bytes | str, *, what: str = "XML") -> ET.Element:
    """Parse an XML document safely into an :class:`~xml.etree.ElementTree.Element`.

    Built on expat with a ``TreeBuilder``: a document type declaration, entity declaration or
    external entity reference is refused outright, so entity expansion ("billion laughs") and
    external entities cannot happen; comments and processing instructions are dropped.  This
    needs no third-party package (``defusedxml`` does the same thing).

    :param data: the document (bytes in the declared or UTF-8 encoding, or text).
    :param what: name of the document used in error messages.
    :raises ScanXMLError: malformed, unsafe, or larger than :data:`MAX_XML_BYTES`.
    """
    if len(data) > MAX_XML_BYTES:
        raise ScanXMLError(f"{what} too large ({len(data)} bytes, limit {MAX_XML_BYTES})")
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.StartDoctypeDeclHandler = _forbid("a DOCTYPE")
    parser.EntityDeclHandler = _forbid("an ENTITY declaration")
    parser.UnparsedEntityDeclHandler = _forbid("an unparsed ENTITY")
    parser.ExternalEntityRefHandler = _forbid("an external entity")
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
        return builder.close()
    except expat.ExpatError as e:
        raise ScanXMLError(f"Malformed {what}: {e}") from e
    except ScanXMLError:
        raise
    except (ValueError, AssertionError) as e:  # TreeBuilder.close() on an empty/odd document
        raise ScanXMLError(f"Malformed {what}: {e}") from e


def _root(data: bytes | str, tag: str, what: str) -> ET.Element:
    root = parse_xml(data, what=what)
    if root.tag != tag:
        raise ScanXMLError(f"Expected <{tag}> in {what}, got <{root.tag}>")
    return root


def _text(elem: ET.Element, tag: str, where: str) -> str:
    child = elem.find(tag)
    if child is None:
        raise ScanXMLError(f"Missing <{tag}> in {where}")
    return child.text or ""


def _opt_text(elem: ET.Element, tag: str) -> str | None:
    child = elem.find(tag)
    if child is None:
        return None
    return child.text or ""


def _int(text: str, tag: str, where: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ScanXMLError(f"Invalid integer {text!r} in <{tag}> of {where}") from None


# --------------------------------------------------------------------------------------------------
# Scan info
# --------------------------------------------------------------------------------------------------


class ScanState(str, Enum):
    """The server's ``ScanState`` names (protocols/scan-server.md 3.4).  ``ScanInfo.state`` stays a
    plain ``str`` so that states added later (Phoebus PR #3622) are tolerated."""

    Idle = "Idle"
    Running = "Running"
    Paused = "Paused"
    Aborted = "Aborted"
    Failed = "Failed"
    Finished = "Finished"
    Logged = "Logged"


#: States after which a scan never changes again.  PyScanClient treats *anything but* Idle, Running
#: and Paused as done; katclient lists the done states instead, so an unknown future state (such as
#: a "scheduled" one, Phoebus PR #3622) does not end ``wait_until_done`` early.
DONE_STATES = frozenset({"Aborted", "Failed", "Finished", "Logged"})


def _ms_to_datetime(ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ms / 1000.0)


@dataclass(frozen=True)
class ScanInfo:
    """One scan as ``GET /scan/{id}`` describes it (protocols/scan-server.md 3.4).

    Times ``created`` and ``finish`` are epoch milliseconds, ``runtime`` is milliseconds.
    ``total_work_units``/``performed_work_units`` are 0 when the server omitted them; ``finish`` and
    ``error`` are ``None`` when absent.  ``address``/``command`` are the innermost active command.
    """

    id: int
    name: str
    created: int
    state: str
    runtime: int
    address: int
    command: str
    total_work_units: int = 0
    performed_work_units: int = 0
    finish: int | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        """True once the state is one of :data:`DONE_STATES`."""
        return self.state in DONE_STATES

    def is_done(self) -> bool:
        """:returns: True if the scan completed, successfully or not (see :data:`DONE_STATES`)."""
        return self.done

    isDone = is_done

    def percentage(self) -> int:
        """:returns: percent of work done, 0..100 (performed x 100 / total; 0 without work units)."""
        if self.total_work_units <= 0:
            return 0
        return int(self.performed_work_units * 100 / self.total_work_units)

    def created_datetime(self) -> datetime.datetime:
        """:returns: the local-time :class:`~datetime.datetime` when the scan was created."""
        return _ms_to_datetime(self.created)

    createdDatetime = created_datetime

    def finish_datetime(self) -> datetime.datetime | None:
        """:returns: the (estimated while running) end as local :class:`~datetime.datetime`, or None."""
        return None if self.finish is None else _ms_to_datetime(self.finish)

    def __str__(self) -> str:
        text = f"'{self.name}' [{self.id}]: {self.state}"
        if self.state == "Running":
            text += f", {self.percentage()} %"
        if self.error:
            text += f" ({self.error})"
        return text


def _scan_info_from(elem: ET.Element) -> ScanInfo:
    where = "<scan>"
    total = _opt_text(elem, "total_work_units")
    performed = _opt_text(elem, "performed_work_units")
    finish = _opt_text(elem, "finish")
    return ScanInfo(
        id=_int(_text(elem, "id", where), "id", where),
        name=_text(elem, "name", where),
        created=_int(_text(elem, "created", where), "created", where),
        state=_text(elem, "state", where).strip(),
        runtime=_int(_text(elem, "runtime", where), "runtime", where),
        address=_int(_text(elem, "address", where), "address", where),
        command=_text(elem, "command", where),
        total_work_units=0 if total is None else _int(total, "total_work_units", where),
        performed_work_units=0 if performed is None else _int(performed, "performed_work_units", where),
        finish=None if finish is None else _int(finish, "finish", where),
        error=_opt_text(elem, "error"),
    )


def parse_scan_info(data: bytes | str) -> ScanInfo:
    """Parse the reply of ``GET /scan/{id}``.

    :raises ScanXMLError: not a ``<scan>`` or a required element (id, name, created, state,
        runtime, address, command; as PyScanClient requires) is missing or not an integer.
    """
    return _scan_info_from(_root(data, "scan", "scan info"))


def parse_scan_infos(data: bytes | str) -> list[ScanInfo]:
    """Parse the reply of ``GET /scans`` (newest first, as the server orders it).

    :raises ScanXMLError: as :func:`parse_scan_info`.
    """
    return [_scan_info_from(e) for e in _root(data, "scans", "scan list").findall("scan")]


# --------------------------------------------------------------------------------------------------
# Server info, devices, simulation, ids, serials
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerInfo:
    """``GET /server/info`` (protocols/scan-server.md 3.2): ``start_time`` in epoch ms, memory in bytes.

    ``xml`` keeps the raw reply, which is what PyScanClient's ``serverInfo()`` returned; ``str()``
    gives that text too.
    """

    version: str
    start_time: int
    scan_config: str = ""
    script_paths: tuple[str, ...] = ()
    macros: str = ""
    used_mem: int = 0
    max_mem: int = 0
    non_heap: int = 0
    xml: str = field(default="", compare=False, repr=False)

    def start_datetime(self) -> datetime.datetime:
        """:returns: server start as local :class:`~datetime.datetime`."""
        return _ms_to_datetime(self.start_time)

    def __str__(self) -> str:
        return self.xml or repr(self)


def _decode(data: bytes | str) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def parse_server_info(data: bytes | str) -> ServerInfo:
    """Parse ``GET /server/info``.  :raises ScanXMLError: not a ``<server>`` or bad numbers."""
    root = _root(data, "server", "server info")
    where = "<server>"

    def num(tag: str) -> int:
        t = _opt_text(root, tag)
        return 0 if t is None or not t.strip() else _int(t, tag, where)

    paths = _opt_text(root, "script_paths") or ""
    return ServerInfo(
        version=_text(root, "version", where).strip(),
        start_time=num("start_time"),
        scan_config=_opt_text(root, "scan_config") or "",
        script_paths=tuple(p.strip() for p in paths.split(",") if p.strip()),
        macros=_opt_text(root, "macros") or "",
        used_mem=num("used_mem"),
        max_mem=num("max_mem"),
        non_heap=num("non_heap"),
        xml=_decode(data),
    )


@dataclass(frozen=True)
class DeviceInfo:
    """One ``<device>`` of ``GET /scan/{id}/devices``: name, alias and status text ("" if none)."""

    name: str
    alias: str
    status: str = ""


def parse_devices(data: bytes | str) -> list[DeviceInfo]:
    """Parse ``GET /scan/{id}/devices``.  :raises ScanXMLError: not a ``<devices>`` document."""
    root = _root(data, "devices", "device list")
    out = []
    for d in root.findall("device"):
        name = _text(d, "name", "<device>")
        out.append(DeviceInfo(name=name, alias=_opt_text(d, "alias") or name, status=_opt_text(d, "status") or ""))
    return out


@dataclass(frozen=True)
class SimulationResult:
    """``POST /simulate``: the printable log and the estimated total seconds.

    Indexable like PyScanClient's dict: ``result['simulation']`` and ``result['seconds']``.
    """

    simulation: str
    seconds: float

    def __getitem__(self, key: str) -> str | float:
        if key == "simulation":
            return self.simulation
        if key == "seconds":
            return self.seconds
        raise KeyError(key)


def parse_simulation(data: bytes | str) -> SimulationResult:
    """Parse the ``<simulation>`` reply (protocols/scan-server.md 3.7).

    :raises ScanXMLError: not ``<simulation>`` with ``<log>`` and a numeric ``<seconds>``.
    """
    root = _root(data, "simulation", "simulation")
    log = _text(root, "log", "<simulation>")
    seconds_text = _text(root, "seconds", "<simulation>")
    try:
        seconds = float(seconds_text)
    except ValueError:
        raise ScanXMLError(f"Invalid <seconds> {seconds_text!r} in <simulation>") from None
    return SimulationResult(simulation=log, seconds=seconds)


def parse_id(data: bytes | str) -> int:
    """Parse the submit reply ``<id>N</id>``.  :raises ScanXMLError: any other root or text."""
    root = parse_xml(data, what="submit reply")
    if root.tag != "id":
        raise ScanXMLError(f"Expected scan <id>, got <{root.tag}>")
    return _int(root.text or "", "id", "submit reply")


def parse_serial(data: bytes | str) -> int:
    """Parse ``GET /scan/{id}/last_serial`` (``<serial>N</serial>``, -1 if nothing was logged)."""
    root = _root(data, "serial", "last serial")
    return _int(root.text or "", "serial", "last serial")


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------

#: ``{'id': [serial, ...], 'time': [epoch ms, ...], 'value': [float or str, ...]}``
DeviceSamples = dict[str, list[Any]]
#: ``{device alias: DeviceSamples}`` as PyScanClient's ``getData`` returns it.
ScanData = dict[str, DeviceSamples]


def parse_data(data: bytes | str) -> ScanData:
    """Parse ``GET /scan/{id}/data`` into PyScanClient's dict form (protocols/scan-server.md 3.5).

    Values become ``float`` where that parses, else stay text (arrays stay ``"[1.0, 2.0]"``).

    :raises ScanXMLError: not ``<data>``, or a sample without a numeric id or time.
    """
    root = _root(data, "data", "data log")
    out: ScanData = {}
    for dev in root.findall("device"):
        name = _text(dev, "name", "<device>")
        ids: list[Any] = []
        times: list[Any] = []
        values: list[Any] = []
        samples = dev.find("samples")
        for sample in samples.findall("sample") if samples is not None else ():
            ids.append(_int(sample.get("id", ""), "sample id", "<sample>"))
            times.append(_int(_text(sample, "time", "<sample>"), "time", "<sample>"))
            raw = _opt_text(sample, "value") or ""
            try:
                values.append(float(raw))
            except ValueError:
                values.append(raw)
        out[name] = {"id": ids, "time": times, "value": values}
    return out


def create_table(data: ScanData, *devices: str) -> list[list[Any]]:
    """Align the samples of some devices by serial into columns.

    One row per distinct serial of the listed devices, in ascending order; a device without a
    sample at that serial repeats its previous value (``None`` before its first sample).  This is
    PyScanClient's ``createTable`` behaviour.

    :param data: as returned by ``ScanClient.data`` / ``getData``.
    :param devices: device names (aliases) present in ``data``.
    :returns: ``table`` with ``table[i]`` the column of ``devices[i]``.
    :raises InvalidUsage: a device is not in ``data``.
    """
    missing = [d for d in devices if d not in data]
    if missing:
        raise InvalidUsage(f"No data for device(s) {', '.join(missing)}; have {', '.join(data) or 'none'}")
    columns: list[Sequence[tuple[int, Any]]] = [
        sorted(zip(data[d]["id"], data[d]["value"]), key=lambda s: s[0]) for d in devices
    ]
    serials = sorted({s for col in columns for s, _ in col})
    result: list[list[Any]] = [[] for _ in devices]
    for i, col in enumerate(columns):
        pos = 0
        current: Any = None
        for serial in serials:
            while pos < len(col) and col[pos][0] <= serial:
                current = col[pos][1]
                pos += 1
            result[i].append(current)
    return result


createTable = create_table


# --------------------------------------------------------------------------------------------------
# HTTP error bodies
# --------------------------------------------------------------------------------------------------

_TITLE_RE = re.compile(r"<title>\s*Error\s+(\d+)\s*(.*?)\s*</title>", re.IGNORECASE | re.DOTALL)
_MESSAGE_RE = re.compile(r"<th>\s*MESSAGE:\s*</th>\s*<td>(.*?)</td>", re.IGNORECASE | re.DOTALL)
_H2_RE = re.compile(r"<h2>\s*HTTP ERROR\s+(\d+)\s*(.*?)\s*</h2>", re.IGNORECASE | re.DOTALL)


def parse_error_body(status: int, body: bytes, content_type: str = "") -> tuple[str, str | None]:
    """Extract the server's message from an error reply (protocols/scan-server.md 3.6).

    :returns: ``(message, trace)``; ``trace`` is the Java trace of an ``<error>`` body, else ``None``.
        Jetty's HTML page gives its MESSAGE row (or title); anything else gives the start of the
        body text, or the bare status when the body is empty.
    """
    text = body[:MAX_ERROR_BODY_KEPT * 16].decode("utf-8", "replace")
    stripped = text.lstrip()
    if stripped.startswith("<error") or (stripped.startswith("<?xml") and "<error" in stripped[:200]):
        try:
            root = parse_xml(body, what="error reply")
        except ScanXMLError:
            root = None
        if root is not None and root.tag == "error":
            return (root.findtext("message") or "").strip(), root.findtext("trace") or ""
    for regex, group in ((_MESSAGE_RE, 1), (_TITLE_RE, 2), (_H2_RE, 2)):
        m = regex.search(text)
        if m:
            message = html.unescape(re.sub(r"<[^>]+>", "", m.group(group))).strip()
            if message and message != str(status):
                return message, None
    snippet = " ".join(stripped.split())[:200]
    return (snippet or f"HTTP {status}"), None


def error_from_response(status: int, body: bytes, content_type: str = "", url: str = "") -> ScanServerError:
    """Build the exception for an HTTP error reply.

    :returns: :class:`ScanSubmitError` for an ``<error>`` body, :class:`UnknownScanError` for
        "Unknown scan ID N", else :class:`ScanServerError`; each carries the server's message.
    """
    message, trace = parse_error_body(status, body, content_type)
    if trace is not None:
        return ScanSubmitError(status, message, trace, body, url)
    if message.startswith("Unknown scan ID"):
        return UnknownScanError(status, message, body, url)
    return ScanServerError(status, message, body, url)
