"""Tornado REST client of the EPICS/Phoebus scan server.

Every PyScanClient operation is a coroutine here, under a pythonic name, with the seed's name as an
alias (DESIGN.md section 3; the table is in :class:`ScanClient`'s docstring).  The thin I/O layer
is :meth:`ScanClient._request`; everything it returns is parsed by the sans-I/O helpers of
:mod:`katclient.devices.scan.model`.  Endpoints: protocols/scan-server.md section 3.2; what the
seed sends on the wire: section 4.  Deliberate differences from PyScanClient (section 5):

- the submit query is always well formed (``?a=1&b=2``; the seed could send ``?deadline=..?pre_post``);
- a ``/`` in a scan name is sent as a ``/`` (the server keeps it in the name), not as ``%2F``, which
  Jetty 11 is expected to reject as an ambiguous path separator;
- ``wait_until_done`` fails on an unknown id and on errors instead of retrying forever, and has an
  optional overall timeout;
- ``patch`` escapes its XML;
- ``ScanInfo.error`` is exposed, and unknown future states do not count as done.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import re
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Final

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.simple_httpclient import HTTPTimeoutError

from katclient.devices.scan.commands import Command, CommandSequence, Value, parse_commands, to_commands
from katclient.devices.scan.language import load_scan
from katclient.devices.scan.model import (
    MAX_XML_BYTES,
    DeviceInfo,
    ScanData,
    ScanFailedError,
    ScanInfo,
    ServerInfo,
    SimulationResult,
    error_from_response,
    parse_data,
    parse_devices,
    parse_id,
    parse_scan_info,
    parse_scan_infos,
    parse_serial,
    parse_server_info,
    parse_simulation,
)
from katclient.errors import InvalidUsage, KatclientConnectionError, KatclientTimeoutError

__all__ = ["ScanClient", "DEFAULT_URL", "DEFAULT_PORT", "DEFAULT_REQUEST_TIMEOUT", "Commands"]

logger = logging.getLogger(__name__)

#: The scan server's default port (``scan_config.xml`` ``<port>``, protocols/scan-server.md 3.1).
DEFAULT_PORT: Final = 4810
#: Default base URL.
DEFAULT_URL: Final = f"http://localhost:{DEFAULT_PORT}"
#: Default time budget of one HTTP request, in seconds (PyScanClient uses 10-20 s).
DEFAULT_REQUEST_TIMEOUT: Final = 20.0
#: Time budget for establishing the TCP connection, in seconds.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
#: Largest reply body accepted, in bytes (the same bound as the XML parser's).
MAX_REPLY_BYTES: Final = MAX_XML_BYTES
#: Shortest poll period accepted by :meth:`ScanClient.wait_until_done`, in seconds: polling faster
#: would only load the server (the seed polls every 1 s).
MIN_POLL_PERIOD: Final = 0.001

_DEADLINE_RE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
#: The server's "no deadline" value (protocols/scan-server.md 3.3).
NO_DEADLINE: Final = "0000-00-00 00:00:00"


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


#: Sentinel: "use the client's default request timeout".
DEFAULT: Final = _Default()

Timeout = float | None | _Default
#: What submit and simulate accept: commands, a sequence, or text (``<commands>`` XML, or the
#: text scan language of :mod:`katclient.devices.scan.language`).
Commands = CommandSequence | Command | Iterable[Command] | str | bytes


def _commands_body(cmds: Commands) -> bytes:
    """XML bytes for submit/simulate; XML text is sent unchanged, as PyScanClient does."""
    if isinstance(cmds, bytes):
        if cmds.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
            return cmds
        cmds = cmds.decode("utf-8")
    if isinstance(cmds, str):
        if cmds.lstrip("\ufeff \t\r\n").startswith("<"):
            return cmds.encode("utf-8")
        return load_scan(cmds).to_xml().encode("utf-8")
    return to_commands(cmds).to_xml().encode("utf-8")


def _format_deadline(deadline: str | datetime.datetime | None) -> str | None:
    if deadline is None:
        return None
    if isinstance(deadline, datetime.datetime):
        if deadline.tzinfo is not None:
            deadline = deadline.astimezone().replace(tzinfo=None)  # the server reads local time
        return deadline.strftime("%Y-%m-%d %H:%M:%S")
    if not isinstance(deadline, str) or not _DEADLINE_RE.fullmatch(deadline):
        raise InvalidUsage(f"Invalid deadline {deadline!r}; expected 'yyyy-MM-dd HH:mm:ss' or a datetime")
    return deadline


def _submit_query(queue: bool, timeout: float, deadline: str | datetime.datetime | None,
                  pre_post: bool) -> str:
    """Query string of submit (protocols/scan-server.md 3.3), always joined with ``&``."""
    params: list[tuple[str, str]] = []
    if not queue:
        params.append(("queue", "false"))
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise InvalidUsage(f"Scan timeout must be a number of seconds >= 0, got {timeout!r}")
    if math.isinf(timeout):
        timeout = 0
    seconds = math.ceil(timeout)  # the server takes whole seconds
    dl = _format_deadline(deadline)
    if seconds > 0 and dl is not None and dl != NO_DEADLINE:
        raise InvalidUsage("Cannot specify both timeout and deadline")
    if seconds > 0:
        params.append(("timeout", str(seconds)))
    if dl is not None:
        params.append(("deadline", dl))
    if not pre_post:
        params.append(("pre_post", "false"))
    if not params:
        return ""
    return "?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def _patch_body(address: int, prop: str, value: Value | bool) -> bytes:
    root = ET.Element("patch")
    ET.SubElement(root, "address").text = str(int(address))
    ET.SubElement(root, "property").text = str(prop)
    if isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    ET.SubElement(root, "value").text = text
    return ET.tostring(root, encoding="unicode").replace("\r", "&#13;").encode("utf-8")


def _scan_id(scan_id: int) -> int:
    if isinstance(scan_id, bool) or not isinstance(scan_id, int):
        raise InvalidUsage(f"Scan id must be an int, got {scan_id!r}")
    return scan_id


class ScanClient:
    """Asynchronous client of one scan server.

    :param url: base URL such as ``"http://host:4810"``, or just a host name (PyScanClient's
        ``ScanClient('localhost')``), which is combined with ``port``.
    :param port: port used when ``url`` is a host name (default 4810).
    :param request_timeout: default time budget of each request, in seconds (None: no limit).
    :param connect_timeout: time budget of the TCP connect, in seconds.

    Use ``async with ScanClient(...) as client:`` or call :meth:`close`.  Requests need a running
    event loop; the HTTP client is created on the first request.  Each method that takes
    ``request_timeout`` (``timeout`` for :meth:`scan_info`/:meth:`scan_infos`, as in the seed)
    accepts seconds, None for no limit, or :data:`DEFAULT`.

    Errors: :class:`~katclient.errors.KatclientConnectionError` (server unreachable or gone),
    :class:`~katclient.errors.KatclientTimeoutError` (no reply in time),
    :class:`~katclient.devices.scan.model.ScanServerError` and subclasses (an HTTP error; carries the
    server's message), :class:`~katclient.devices.scan.model.ScanXMLError` (a reply that is not the
    expected XML), :class:`~katclient.errors.InvalidUsage` (bad arguments).

    ============================  ==============================================
    PyScanClient                  katclient
    ============================  ==============================================
    ``serverInfo()``              :meth:`server_info` (str() gives the XML)
    ``simulate(cmds)``            :meth:`simulate`
    ``submit(cmds, name, ...)``   :meth:`submit`
    ``scanInfos()``               :meth:`scan_infos`
    ``scanInfo(id)``              :meth:`scan_info`
    ``waitUntilDone(id)``         :meth:`wait_until_done`
    ``pause/resume/abort(id)``    :meth:`pause`, :meth:`resume`, :meth:`abort`
    (none)                        :meth:`next`, :meth:`move`
    ``patch(id, addr, p, v)``     :meth:`patch`
    ``delete(id)``, ``clear()``   :meth:`delete`, :meth:`clear`
    ``getData(id)``               :meth:`data`
    ``lastSerial(id)``            :meth:`last_serial`
    ``scanCmds(id)``              :meth:`commands_xml` (:meth:`commands` parses it)
    ``scanDevices(id)``           :meth:`devices_xml` (:meth:`devices` parses it)
    ============================  ==============================================
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        port: int | None = None,
        *,
        request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        if "://" in url:
            if port is not None:
                raise InvalidUsage("Give either a URL or a host and port, not a URL and a port")
            base = url.rstrip("/")
        else:
            base = f"http://{url}:{int(port if port is not None else DEFAULT_PORT)}"
        parsed = urllib.parse.urlsplit(base)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise InvalidUsage(f"Invalid scan server URL {url!r}")
        self.base_url = base
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self._http: AsyncHTTPClient | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"ScanClient({self.base_url!r})"

    async def __aenter__(self) -> ScanClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client (idempotent).  Later requests raise InvalidUsage."""
        self._closed = True
        if self._http is not None:
            self._http.close()
            self._http = None

    # ------------------------------------------------------------------------------------------
    # I/O
    # ------------------------------------------------------------------------------------------

    def _timeout(self, timeout: Timeout) -> float:
        t = self.request_timeout if isinstance(timeout, _Default) else timeout
        return 0.0 if t is None else float(t)  # tornado: 0 means no limit

    async def _request(self, method: str, path: str, body: bytes | None = None,
                       timeout: Timeout = DEFAULT) -> bytes:
        """Send one request and return the reply body.

        Headers as PyScanClient sends them (protocols/scan-server.md section 4): ``Accept: */*``;
        POST and PUT carry ``Content-Type: text/xml`` (an empty PUT has ``Content-Length: 0``).

        :raises KatclientConnectionError: cannot connect, or the connection broke.
        :raises KatclientTimeoutError: no complete reply within the timeout.
        :raises ScanServerError: HTTP status >= 400 (with the server's message).
        """
        if self._closed:
            raise InvalidUsage("ScanClient is closed")
        if self._http is None:
            self._http = AsyncHTTPClient(force_instance=True, max_body_size=MAX_REPLY_BYTES,
                                         max_buffer_size=MAX_REPLY_BYTES)
        url = self.base_url + path
        headers = {"Accept": "*/*"}
        if method in ("POST", "PUT"):
            headers["Content-Type"] = "text/xml"
            body = body or b""
        request_timeout = self._timeout(timeout)
        request = HTTPRequest(
            url, method=method, headers=headers, body=body, request_timeout=request_timeout,
            connect_timeout=min(self.connect_timeout, request_timeout) if request_timeout else self.connect_timeout,
            follow_redirects=False, decompress_response=True,
        )
        logger.debug("%s %s", method, url)
        try:
            response: HTTPResponse = await self._http.fetch(request, raise_error=False)
        except HTTPTimeoutError as e:
            raise KatclientTimeoutError(f"{method} {url}: no reply within {request_timeout} s ({e})") from e
        except HTTPClientError as e:
            raise KatclientConnectionError(f"{method} {url}: {e}") from e
        except OSError as e:
            raise KatclientConnectionError(f"Cannot reach scan server at {self.base_url}: {e}") from e
        except asyncio.TimeoutError as e:  # pragma: no cover - tornado raises HTTPTimeoutError
            raise KatclientTimeoutError(f"{method} {url}: no reply within {request_timeout} s") from e
        if response.code >= 400:
            raise error_from_response(response.code, response.body or b"",
                                      response.headers.get("Content-Type", ""), url)
        if response.code < 200 or response.code >= 300:
            raise KatclientConnectionError(f"{method} {url}: unexpected HTTP status {response.code}")
        return response.body or b""

    # ------------------------------------------------------------------------------------------
    # Server
    # ------------------------------------------------------------------------------------------

    async def server_info(self, *, request_timeout: Timeout = DEFAULT) -> ServerInfo:
        """``GET /server/info``: version, start time, config, memory.  One request (cheap to poll)."""
        return parse_server_info(await self._request("GET", "/server/info", timeout=request_timeout))

    async def simulate(self, cmds: Commands, *, request_timeout: Timeout = DEFAULT) -> SimulationResult:
        """``POST /simulate``: the server's dry run with time estimates (protocols/scan-server.md 3.7).

        :param cmds: commands, a sequence, or text (``<commands>`` XML or the text language).
        :returns: the log text and total seconds; also indexable as ``['simulation']``/``['seconds']``.
        :raises ScanSubmitError: the server could not parse or implement the commands (400).
        :raises ScanSyntaxError: ``cmds`` is scan text with a syntax error.
        """
        body = _commands_body(cmds)
        return parse_simulation(await self._request("POST", "/simulate", body, timeout=request_timeout))

    async def submit(
        self,
        cmds: Commands,
        name: str = "UnNamed",
        queue: bool = True,
        timeout: float = 0,
        deadline: str | datetime.datetime | None = None,
        pre_post: bool = True,
        *,
        request_timeout: Timeout = DEFAULT,
    ) -> int:
        """``POST /scan/{name}``: submit a scan for execution.

        :param cmds: commands, a sequence, or text (``<commands>`` XML or the text language).
        :param name: scan name.
        :param queue: True to queue (one queued scan runs at a time, in order); False to run now,
            in parallel with others.
        :param timeout: seconds after the *start* when the scan aborts itself (0: none; rounded up
            to whole seconds, which is what the server takes).
        :param deadline: local time ``"yyyy-MM-dd HH:mm:ss"`` or a datetime when the scan aborts
            itself; not together with ``timeout``.
        :param pre_post: run the server's pre- and post-scan commands.
        :returns: the new scan's id.
        :raises ScanSubmitError: the server rejected the commands (its trace says why).
        :raises InvalidUsage: bad timeout/deadline, or both given.
        """
        query = _submit_query(queue, timeout, deadline, pre_post)
        body = _commands_body(cmds)
        path = "/scan/" + urllib.parse.quote(name, safe="/")
        return parse_id(await self._request("POST", path + query, body, timeout=request_timeout))

    # ------------------------------------------------------------------------------------------
    # Scan information
    # ------------------------------------------------------------------------------------------

    async def scan_infos(self, timeout: Timeout = DEFAULT) -> list[ScanInfo]:
        """``GET /scans``: every scan the server knows, newest first.  One request.

        :param timeout: request timeout in seconds (PyScanClient's ``timeout``).
        """
        return parse_scan_infos(await self._request("GET", "/scans", timeout=timeout))

    async def scan_info(self, scan_id: int, timeout: Timeout = DEFAULT) -> ScanInfo:
        """``GET /scan/{id}``: one scan's state and progress.  One request.

        :param timeout: request timeout in seconds (PyScanClient's ``timeout``).
        :raises UnknownScanError: the server does not know the id.
        """
        return parse_scan_info(await self._request("GET", f"/scan/{_scan_id(scan_id)}", timeout=timeout))

    async def wait_until_done(self, scan_id: int, poll_period: float = 1.0, timeout: float | None = None,
                              *, request_timeout: Timeout = DEFAULT) -> ScanInfo:
        """Poll ``GET /scan/{id}`` until the scan is done.

        :param poll_period: seconds between polls (the seed's 1 s by default).
        :param timeout: overall seconds to wait (None: no limit).
        :returns: the final info (state Finished or Logged).
        :raises ScanFailedError: the scan ended Aborted or Failed (``.info.error`` says why).
        :raises UnknownScanError: the id is unknown (never retried, unlike PyScanClient).
        :raises KatclientTimeoutError: ``timeout`` passed first.
        :raises KatclientConnectionError: the server went away.
        """
        if not poll_period >= MIN_POLL_PERIOD:
            raise InvalidUsage(f"poll_period must be >= {MIN_POLL_PERIOD} s, got {poll_period!r}")
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            info = await self.scan_info(scan_id, timeout=request_timeout)
            if info.state in ("Aborted", "Failed"):
                raise ScanFailedError(info)
            if info.done:
                return info
            delay = poll_period
            if end is not None:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    raise KatclientTimeoutError(f"Scan {scan_id} not done after {timeout} s (state {info.state})")
                delay = min(delay, remaining)
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------------------------------
    # Control
    # ------------------------------------------------------------------------------------------

    async def _put(self, scan_id: int, what: str, body: bytes = b"", request_timeout: Timeout = DEFAULT) -> None:
        await self._request("PUT", f"/scan/{_scan_id(scan_id)}/{what}", body, timeout=request_timeout)

    async def pause(self, scan_id: int = -1, *, request_timeout: Timeout = DEFAULT) -> None:
        """``PUT /scan/{id}/pause``: pause before the next command (id -1: all scans).

        :raises ScanServerError: unknown id (400 "Unknown scan ID N").
        """
        await self._put(scan_id, "pause", request_timeout=request_timeout)

    async def resume(self, scan_id: int = -1, *, request_timeout: Timeout = DEFAULT) -> None:
        """``PUT /scan/{id}/resume`` (id -1: all scans)."""
        await self._put(scan_id, "resume", request_timeout=request_timeout)

    async def abort(self, scan_id: int = -1, *, request_timeout: Timeout = DEFAULT) -> None:
        """``PUT /scan/{id}/abort`` (id -1: all scans)."""
        await self._put(scan_id, "abort", request_timeout=request_timeout)

    async def next(self, scan_id: int = -1, *, request_timeout: Timeout = DEFAULT) -> None:
        """``PUT /scan/{id}/next``: finish the current Delay/Wait/Set wait/Loop step early."""
        await self._put(scan_id, "next", request_timeout=request_timeout)

    async def move(self, scan_id: int, steps: int, *, request_timeout: Timeout = DEFAULT) -> None:
        """``PUT /scan/{id}/move/{steps}``: reorder an Idle queued scan (positive: earlier)."""
        await self._put(scan_id, f"move/{int(steps)}", request_timeout=request_timeout)

    async def patch(self, scan_id: int, address: int, property: str, value: Value | bool, *,
                    request_timeout: Timeout = DEFAULT) -> None:
        """``PUT /scan/{id}/patch``: change a property of a command that has not run yet.

        :param address: command address (pre-order from 0; the server only looks into Loop bodies).
        :param property: the server's property id, e.g. ``value``, ``seconds``, ``desired_value``
            (protocols/scan-server.md 3.10).
        :param value: new value (sent as text, XML-escaped).
        :raises ScanServerError: 400 "Invalid command address N", "Cannot update P of ...".
        """
        await self._put(scan_id, "patch", _patch_body(address, property, value), request_timeout)

    async def delete(self, scan_id: int, *, request_timeout: Timeout = DEFAULT) -> None:
        """``DELETE /scan/{id}``: remove a done scan (a scan that is not done stays, silently)."""
        await self._request("DELETE", f"/scan/{_scan_id(scan_id)}", timeout=request_timeout)

    async def clear(self, *, request_timeout: Timeout = DEFAULT) -> None:
        """``DELETE /scans/completed``: remove every done scan and its data."""
        await self._request("DELETE", "/scans/completed", timeout=request_timeout)

    # ------------------------------------------------------------------------------------------
    # Data, commands, devices
    # ------------------------------------------------------------------------------------------

    async def data(self, scan_id: int, *, request_timeout: Timeout = DEFAULT) -> ScanData:
        """``GET /scan/{id}/data`` as ``{device: {'id': [...], 'time': [ms...], 'value': [...]}}``."""
        return parse_data(await self._request("GET", f"/scan/{_scan_id(scan_id)}/data", timeout=request_timeout))

    async def last_serial(self, scan_id: int, *, request_timeout: Timeout = DEFAULT) -> int:
        """``GET /scan/{id}/last_serial``: last data serial handed out (-1: nothing logged)."""
        path = f"/scan/{_scan_id(scan_id)}/last_serial"
        return parse_serial(await self._request("GET", path, timeout=request_timeout))

    async def commands_xml(self, scan_id: int, *, request_timeout: Timeout = DEFAULT) -> str:
        """``GET /scan/{id}/commands`` as the raw XML text (what PyScanClient's ``scanCmds`` returns).

        :raises ScanServerError: 500 "Commands not available for logged scan".
        """
        body = await self._request("GET", f"/scan/{_scan_id(scan_id)}/commands", timeout=request_timeout)
        return body.decode("utf-8", "replace")

    async def commands(self, scan_id: int, *, request_timeout: Timeout = DEFAULT) -> CommandSequence:
        """``GET /scan/{id}/commands`` parsed into commands (server defaults filled in)."""
        return parse_commands(await self.commands_xml(scan_id, request_timeout=request_timeout))

    async def devices_xml(self, scan_id: int = -1, *, request_timeout: Timeout = DEFAULT) -> str:
        """``GET /scan/{id}/devices`` as raw XML (PyScanClient's ``scanDevices``); id -1: defaults."""
        body = await self._request("GET", f"/scan/{_scan_id(scan_id)}/devices", timeout=request_timeout)
        return body.decode("utf-8", "replace")

    async def devices(self, scan_id: int = -1, *, request_timeout: Timeout = DEFAULT) -> list[DeviceInfo]:
        """``GET /scan/{id}/devices`` parsed: name, alias and status of each device."""
        return parse_devices(await self.devices_xml(scan_id, request_timeout=request_timeout))

    # ------------------------------------------------------------------------------------------
    # PyScanClient names (DESIGN.md section 3)
    # ------------------------------------------------------------------------------------------

    serverInfo = server_info
    scanInfos = scan_infos
    scanInfo = scan_info
    waitUntilDone = wait_until_done
    getData = data
    lastSerial = last_serial
    scanCmds = commands_xml
    scanDevices = devices_xml
