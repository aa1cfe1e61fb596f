"""The fake scan server on the wire: PyScanClient's request shapes (protocols/scan-server.md 4) and
the server's semantics (section 3), checked with raw HTTP requests (http.client).

PyScanClient itself could not be run here: it is not on PyPI, and the only stored copies of its
source are old Python 2 (urllib2) versions.  So ``_SeedClient`` below sends exactly the requests
section 4 describes (headers, name quoting, query building including its ``?..?pre_post`` bug) and
parses replies the way section 4 says the seed does.
"""

from __future__ import annotations

import asyncio
import http.client as httpclient
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fake_servers.scan_server import FakeDevice, FakeScanServer, java_double
from katclient.devices.scan import CommandSequence, Comment, Delay, Log, Loop, Parallel, Set, Wait
from katclient.devices.scan.commands import ConfigLog, If, Include, Script, Sequence

POLL = 0.005


@pytest.fixture
async def fake() -> AsyncIterator[FakeScanServer]:
    server = FakeScanServer(speed=1000, scripts={"Echo": lambda srv, args: srv.devices["neutrons"].write(
        float(args[0]), srv.clock.now())}, include_files={
        "prep.scn": "<commands><set><device>$(M)</device><value>7</value><wait>false</wait></set></commands>"})
    await server.start()
    yield server
    await server.stop()


def _http(base: str, method: str, path: str, body: bytes | None = None,
          content_type: str | None = "text/xml") -> tuple[int, dict[str, str], bytes]:
    """One request as python-requests would send it: Accept */*; Content-Type only with a body."""
    url = urllib.parse.urlsplit(base)
    conn = httpclient.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        headers = {"Accept": "*/*"}
        if method in ("POST", "PUT") and content_type is not None:
            headers["Content-Type"] = content_type
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


async def http(fake: FakeScanServer, method: str, path: str, body: bytes | None = None,
               content_type: str | None = "text/xml") -> tuple[int, dict[str, str], bytes]:
    if method == "PUT" and body is None:
        body = b""  # PyScanClient's empty PUT: Content-Length 0
    return await asyncio.to_thread(_http, f"http://{fake.host}:{fake.port}", method, path, body, content_type)


class _SeedClient:
    """The seed's requests, per protocols/scan-server.md section 4 (blocking, http.client)."""

    def __init__(self, host: str, port: int) -> None:
        self.base = f"http://{host}:{port}"

    def _req(self, method: str, path: str, body: bytes | None = None) -> bytes:
        status, _, data = _http(self.base, method, path, body if body is not None or method != "PUT" else b"")
        if status >= 400:
            raise Exception(f"Scan server at {self.base} returned error code {status}\nServer error message:\n"
                            f"----\n{data!r}\n----")
        return data

    def submit(self, cmds: CommandSequence, name: str = "UnNamed", queue: bool = True, timeout: int = 0,
               deadline: str | None = None, pre_post: bool = True) -> int:
        path = "/scan/" + urllib.parse.quote(name, "")
        sep = "?"
        if not queue:
            path += "?queue=false"
            sep = "&"
        if timeout > 0:
            path += f"{sep}timeout={timeout}"
            sep = "&"
        if deadline:
            path += f"{sep}deadline={urllib.parse.quote(deadline)}"  # the seed keeps '?' here: its bug
        if not pre_post:
            path += f"{sep}pre_post=false"
        xml = ET.fromstring(self._req("POST", path, cmds.to_xml().encode()))
        if xml.tag != "id":
            raise Exception(f"Expected scan <id>, got <{xml.tag}>")
        return int(xml.text or "")

    def simulate(self, cmds: CommandSequence) -> dict[str, Any]:
        xml = ET.fromstring(self._req("POST", "/simulate", cmds.to_xml().encode()))
        return {"simulation": xml.findtext("log"), "seconds": float(xml.findtext("seconds") or "")}

    def scan_info(self, scan_id: int) -> dict[str, Any]:
        xml = ET.fromstring(self._req("GET", f"/scan/{scan_id}"))
        required = ("id", "name", "created", "state", "runtime", "address", "command")
        info = {tag: xml.find(tag).text for tag in required}  # type: ignore[union-attr]  # raises if missing
        for tag in ("finish", "total_work_units", "performed_work_units"):
            if xml.find(tag) is not None:
                info[tag] = xml.findtext(tag)
        return info

    def wait_until_done(self, scan_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = self.scan_info(scan_id)
            if info["state"] not in ("Idle", "Running", "Paused"):
                if info["state"] in ("Aborted", "Failed"):
                    raise Exception(str(info))
                return info
            time.sleep(POLL)
        raise TimeoutError(scan_id)

    def put(self, scan_id: int, what: str, body: bytes | None = None) -> None:
        self._req("PUT", f"/scan/{scan_id}/{what}", body)

    def get_data(self, scan_id: int) -> dict[str, dict[str, list[Any]]]:
        xml = ET.fromstring(self._req("GET", f"/scan/{scan_id}/data"))
        data: dict[str, dict[str, list[Any]]] = {}
        for dev in xml.findall("device"):
            samples = dev.find("samples").findall("sample")  # type: ignore[union-attr]
            data[dev.findtext("name") or ""] = {
                "id": [int(s.attrib["id"]) for s in samples],
                "time": [int(s.findtext("time") or "") for s in samples],
                "value": [float(s.findtext("value") or "") for s in samples],
            }
        return data


async def test_seed_request_shapes_work(fake: FakeScanServer) -> None:
    seed = _SeedClient(fake.host, fake.port)

    def script() -> None:
        assert b"<version>4.7.0</version>" in seed._req("GET", "/server/info")
        sim = seed.simulate(CommandSequence(Comment("Hello"), Set("motor_x", 10)))
        assert sim["simulation"].endswith("   Total estimated execution time\n") and sim["seconds"] == 0.1
        scan_id = seed.submit(CommandSequence(Comment("Hello"), Set("motor_x", 10)), "My First Scan")
        assert seed.wait_until_done(scan_id)["state"] == "Finished"
        other = seed.submit(CommandSequence(Delay(1)), "Wörk 1", queue=False, timeout=36000, pre_post=False)
        assert seed.scan_info(other)["name"] == "Wörk 1"
        seed.wait_until_done(other)
        loop = CommandSequence(Loop("motor_y", 1, 3, 1, Log("motor_y")))
        data_id = seed.submit(loop, "Data")
        seed.wait_until_done(data_id)
        assert seed.get_data(data_id)["motor_y"]["id"] == [0, 1, 2]
        assert seed._req("GET", f"/scan/{data_id}/last_serial") == b"<serial>2</serial>"
        assert seed._req("GET", f"/scan/{data_id}/commands").startswith(b"<commands>")
        patch = b"<patch><address>1</address><property>device_names</property><value>a, b</value></patch>"
        seed.put(data_id, "patch", patch)
        assert b"<device>b</device>" in seed._req("GET", f"/scan/{data_id}/commands")
        for what in ("pause", "resume", "abort"):
            seed._req("PUT", f"/scan/-1/{what}", b"")
        seed._req("DELETE", f"/scan/{data_id}")
        seed._req("DELETE", "/scans/completed")
        # the seed's deadline bug: '?deadline=..?pre_post=false' is rejected as the real server does
        with pytest.raises(Exception, match="error code 400") as err:
            seed.submit(CommandSequence(Comment("x")), "late", deadline="2030-01-01 10:00:00", pre_post=False)
        assert "Invalid deadline" in str(err.value)
        # ... and its '%2F' for a '/' in a name is an ambiguous path separator for Jetty 11
        with pytest.raises(Exception, match="Ambiguous URI path separator"):
            seed.submit(CommandSequence(Comment("x")), "a/b")

    await asyncio.to_thread(script)


async def test_reply_layouts(fake: FakeScanServer) -> None:
    status, headers, body = await http(fake, "POST", "/scan/Lay%20out", CommandSequence(Comment("x")).to_xml().encode())
    assert status == 200 and body == b"<id>1</id>\n" and headers["Content-Type"] == "text/xml"
    await asyncio.sleep(0)
    for path in ("/scan/1", "/scans", "/scan/1/data", "/scan/1/devices", "/server/info"):
        status, headers, body = await http(fake, "GET", path)
        assert status == 200 and body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<'), path
        assert headers["Content-Type"] == "text/xml"
    for path in ("/scan/1/last_serial", "/scan/1/commands"):
        status, _, body = await http(fake, "GET", path)
        assert status == 200 and not body.startswith(b"<?xml"), path
    status, _, body = await http(fake, "GET", "/scan/1")
    tags = [e.tag for e in ET.fromstring(body)]
    assert tags[:5] == ["id", "name", "created", "state", "runtime"]
    assert tags[-2:] == ["address", "command"] or tags[-3:-1] == ["address", "command"]
    status, _, body = await http(fake, "POST", "/simulate", CommandSequence(Delay(2)).to_xml().encode())
    assert body.startswith(b"<simulation><log><![CDATA[Simulation:\n--------\n00:00:00 - Delay 2.0 sec\n")
    assert b"<seconds>2.0</seconds>" in body
    status, _, body = await http(fake, "PUT", "/scan/1/pause")
    assert (status, body) == (200, b"")


@pytest.mark.parametrize("method, path, body, content_type, status, message", [
    ("GET", "/scan/abc", None, None, 400, "Cannot parse path element 'abc'"),
    ("GET", "/scan/", None, None, 400, "Missing scan ID"),
    ("GET", "/scan/99", None, None, 500, "Unknown scan ID 99"),
    ("GET", "/scan/99/data", None, None, 500, "Unknown scan ID 99"),
    ("GET", "/scan/1/bogus", None, None, 500, "Unknown request object bogus"),
    ("PUT", "/scan/99/pause", b"", "text/xml", 400, "Unknown scan ID 99"),
    ("PUT", "/scan/1/jump", b"", "text/xml", 400, "Unknown command 'jump'"),
    ("PUT", "/scan/1", b"", "text/xml", 400, "Missing scan ID and command"),
    ("PUT", "/scan/1/patch", b"<patch><address>0</address></patch>", "text/xml", 400,
     "Missing &lt;property&gt; for patch"),
    ("PUT", "/scan/1/patch", b"<patch><address>0</address><property>text</property><value>v</value></patch>",
     "text/xml", 400, "Cannot update text of CommentCommand"),
    ("DELETE", "/scan/99", None, None, 400, "Unknown scan ID 99"),
    ("DELETE", "/scans/old", None, None, 400, "Illegal path '/scans/old'"),
    ("GET", "/server/nope", None, None, 400, "Invalid request /server/nope"),
    ("GET", "/nowhere", None, None, 404, "Not Found"),
    ("POST", "/scan/x", b"<commands/>", "text/plain", 400, "Expecting XML content with scan, got format"),
    ("POST", "/scan/x", b"<commands/>", None, 500, "NullPointerException"),
    ("POST", "/scan/x?timeout=abc", b"<commands/>", "text/xml", 400, "Invalid timeout 'abc'"),
    ("POST", "/scan/x?timeout=5&deadline=2030-01-01%2010:00:00", b"<commands/>", "text/xml", 400,
     "Cannot specify both timeout and deadline"),
    ("POST", "/scan/a%2Fb", b"<commands/>", "text/xml", 400, "Ambiguous URI path separator"),
])
async def test_jetty_error_pages(fake: FakeScanServer, method: str, path: str, body: bytes | None,
                                 content_type: str | None, status: int, message: str) -> None:
    await http(fake, "POST", "/scan/first", CommandSequence(Comment("x")).to_xml().encode())
    got_status, headers, got = await http(fake, method, path, body, content_type)
    assert got_status == status
    assert headers["Content-Type"].startswith("text/html")
    text = got.decode()
    assert f"<title>Error {status} " in text and f"<h2>HTTP ERROR {status} " in text
    assert message in text
    # the server keeps serving after every error
    assert (await http(fake, "GET", "/server/info"))[0] == 200


async def test_submit_errors_are_xml(fake: FakeScanServer) -> None:
    cases = [
        ("/scan/Bad", b"<commands><bogus/></commands>", "Bad failed to submit", "Unknown scan command ID bogus"),
        ("/scan/Bad", b"<scan/>", "Bad failed to submit", "Wrong document type"),
        ("/scan/Bad", b"<commands><include><scan_file>missing.scn</scan_file></include></commands>",
         "Bad failed to submit", "Cannot open include file 'missing.scn'"),
        ("/scan/Bad", b"<commands><script><path>Nope</path></script></commands>", "Bad failed to submit",
         "Cannot load script class 'Nope'"),
        ("/simulate", b"<commands><bogus/></commands>", "Failed to simulate", "Unknown scan command ID bogus"),
        ("/scan", b"not xml", "failed to submit", "Malformed"),
    ]
    for path, body, message, trace in cases:
        status, headers, got = await http(fake, "POST", path, body)
        assert status == 400 and headers["Content-Type"] == "text/xml"
        root = ET.fromstring(got)
        assert root.tag == "error" and message in (root.findtext("message") or "")
        assert trace in (root.findtext("trace") or "")


async def info(fake: FakeScanServer, scan_id: int) -> ET.Element:
    status, _, body = await http(fake, "GET", f"/scan/{scan_id}")
    assert status == 200
    return ET.fromstring(body)


async def until_state(fake: FakeScanServer, scan_id: int, *states: str) -> ET.Element:
    async def loop() -> ET.Element:
        while True:
            e = await info(fake, scan_id)
            if e.findtext("state") in states:
                return e
            await asyncio.sleep(POLL)
    return await asyncio.wait_for(loop(), 10)


async def submit(fake: FakeScanServer, cmds: list[Any], query: str = "", name: str = "s") -> int:
    status, _, body = await http(fake, "POST", f"/scan/{name}{query}", CommandSequence(cmds).to_xml().encode())
    assert status == 200, body
    return int(ET.fromstring(body).text or "")


async def test_queue_runs_one_at_a_time(fake: FakeScanServer) -> None:
    fake.set_speed(1)
    first = await submit(fake, [Delay(3600)])
    second = await submit(fake, [Delay(3600)])
    third = await submit(fake, [Comment("c")])
    now = await submit(fake, [Delay(3600)], "?queue=false")
    await until_state(fake, first, "Running")
    await until_state(fake, now, "Running")  # not queued: runs in parallel
    assert (await info(fake, second)).findtext("state") == "Idle"
    idle = await info(fake, second)
    assert [idle.findtext(t) for t in ("runtime", "performed_work_units", "address", "command")] == [
        "0", "0", "-1", ""]
    await http(fake, "PUT", f"/scan/{third}/move/1")  # third before second
    await http(fake, "PUT", f"/scan/{first}/abort")
    await until_state(fake, third, "Finished")
    assert (await until_state(fake, second, "Running")).findtext("state") == "Running"
    await http(fake, "PUT", "/scan/-1/abort")
    for scan_id in (second, now):
        done = await until_state(fake, scan_id, "Aborted")
        assert done.findtext("error") == "Aborted" and done.findtext("command") == "- end -"
    # DELETE removes only done scans; a running one stays, silently
    running = await submit(fake, [Delay(3600)])
    await until_state(fake, running, "Running")
    assert (await http(fake, "DELETE", f"/scan/{running}"))[0] == 200
    assert (await info(fake, running)).findtext("state") == "Running"
    await http(fake, "PUT", f"/scan/{running}/abort")


async def test_addresses_work_units_and_patch(fake: FakeScanServer) -> None:
    fake.set_speed(1)
    cmds = [Comment("a"), Loop("x", 1, 2, 1, Delay(3600), Comment("b")), Parallel(Delay(1), Delay(2)), Delay(9)]
    scan_id = await submit(fake, cmds, "?pre_post=false")
    running = await until_state(fake, scan_id, "Running")
    assert running.findtext("total_work_units") == str(1 + 2 * 2 + 3 + 1)
    await asyncio.wait_for(_until_address(fake, scan_id, "2"), 10)
    e = await info(fake, scan_id)
    assert e.findtext("command", "").startswith("Delay 3600.0 sec. Remaining: ")
    # patch: address 3 (in the Loop body) is found, 6 (inside Parallel) is not, 7 is the last Delay
    body = b"<patch><address>%d</address><property>%s</property><value>%s</value></patch>"
    assert (await http(fake, "PUT", f"/scan/{scan_id}/patch", body % (3, b"comment", b"patched")))[0] == 200
    assert (await http(fake, "PUT", f"/scan/{scan_id}/patch", body % (6, b"seconds", b"1")))[0] == 400
    assert (await http(fake, "PUT", f"/scan/{scan_id}/patch", body % (7, b"seconds", b"0.5")))[0] == 200
    _, _, xml = await http(fake, "GET", f"/scan/{scan_id}/commands")
    assert b"<text>patched</text>" in xml and b"<seconds>0.5</seconds>" in xml
    # next finishes the long delay early (twice: one per loop step)
    fake.set_speed(1000)
    for performed in (3, 5):  # work units after each skipped step: 'a', Delay, 'b' (, Delay, 'b')
        await asyncio.wait_for(_until_address(fake, scan_id, "2"), 10)
        await http(fake, "PUT", f"/scan/{scan_id}/next")
        await asyncio.wait_for(_until_performed(fake, scan_id, performed), 10)
    done = await until_state(fake, scan_id, "Finished")
    assert done.findtext("performed_work_units") == done.findtext("total_work_units")


async def _until_address(fake: FakeScanServer, scan_id: int, address: str) -> None:
    while (await info(fake, scan_id)).findtext("address") != address:
        await asyncio.sleep(POLL)


async def _until_performed(fake: FakeScanServer, scan_id: int, performed: int) -> None:
    while int((await info(fake, scan_id)).findtext("performed_work_units") or 0) < performed:
        await asyncio.sleep(POLL)


async def test_timeouts_deadlines_and_failures(fake: FakeScanServer) -> None:
    cases: list[tuple[list[Any], str, str, str]] = [
        ([Delay(3600)], "?timeout=2", "Aborted", "Aborted (deadline/timeout)"),
        ([Delay(1)], "?deadline=2001-01-01%2000:00:00", "Aborted", "Aborted (stale deadline)"),
        ([Set("setpoint", 5, readback="motor_x", timeout=1)], "", "Failed",
         "Timeout while waiting for motor_x = 5.0"),
        ([Set("motor_x", 5, completion=True, readback="neutrons")], "", "Failed", "neutrons != 5.0 after completion"),
        ([Parallel(Delay(3600), timeout=3)], "", "Failed", "Parallel time out (3.0 sec)"),
        ([Parallel(Wait("neutrons", 1, timeout=1), Delay(3600))], "", "Failed",
         "Timeout while waiting for neutrons = 1.0 (Parallel)"),
        ([Wait("neutrons", 10, "increase by", timeout=1)], "", "Failed",
         "Timeout while waiting for neutrons to increase by 10.0"),
    ]
    for cmds, query, state, error in cases:
        scan_id = await submit(fake, cmds, query)
        done = await until_state(fake, scan_id, "Aborted", "Failed", "Finished")
        assert (done.findtext("state"), done.findtext("error")) == (state, error)
        assert done.findtext("address") == "-1" and done.find("finish") is not None


async def test_device_semantics_and_data(fake: FakeScanServer) -> None:
    fake.devices["slow"] = FakeDevice("slow", 0.0, slew_rate=2.0)
    cmds = [
        ConfigLog(True),
        Set("slow", 10, readback=True, tolerance=0.01),  # waits for the slew: 5 simulated seconds
        Set("motor_y", 3, completion=True, readback="motor_y.RBV"),
        ConfigLog(False),
        If("slow", ">=", 9.99, [Log("slow", "motor_y")]),
        If("slow", "<", 0, [Log("never")]),
        Include("prep.scn", macros="M=neutrons"),
        Script("Echo", "42"),
        Log("neutrons", "shutter"),
        Sequence(Wait("neutrons", 42, "in" if False else "=")),
    ]
    scan_id = await submit(fake, cmds)
    done = await until_state(fake, scan_id, "Finished", "Failed")
    assert done.findtext("state") == "Finished", done.findtext("error")
    assert int(done.findtext("runtime") or 0) >= 5000  # the slew took 5 simulated seconds
    _, _, body = await http(fake, "GET", f"/scan/{scan_id}/data")
    data = ET.fromstring(body)
    rows = {(d.findtext("name"), s.get("id"), s.findtext("value"))
            for d in data.findall("device") for s in d.iter("sample")}
    assert rows == {("slow", "0", "10.0"), ("motor_y.RBV", "1", "3.0"), ("slow", "2", "10.0"),
                    ("motor_y", "2", "3.0"), ("neutrons", "3", "42.0"), ("shutter", "3", "closed")}
    assert (await http(fake, "GET", f"/scan/{scan_id}/last_serial"))[2] == b"<serial>3</serial>"
    _, _, devices = await http(fake, "GET", f"/scan/{scan_id}/devices")
    assert [d.findtext("name") for d in ET.fromstring(devices)][:3] == ["slow", "motor_y", "motor_y.RBV"]


async def test_pre_post_and_simulation(fake: FakeScanServer) -> None:
    fake.pre_scan = [Log("neutrons")]
    with_pre = await submit(fake, [Comment("x")])
    without = await submit(fake, [Comment("x")], "?pre_post=false")
    await until_state(fake, without, "Finished")
    await until_state(fake, with_pre, "Finished")
    assert (await http(fake, "GET", f"/scan/{with_pre}/last_serial"))[2] == b"<serial>0</serial>"
    assert (await http(fake, "GET", f"/scan/{without}/last_serial"))[2] == b"<serial>-1</serial>"
    cmds = CommandSequence(Set("motor_x", 2, readback=True), Loop("motor_y", 1, 2, 1, Delay(10)),
                           Parallel(Delay(1), Delay(2)), If("neutrons", "=", 0, Comment("zero")))
    status, _, body = await http(fake, "POST", "/simulate", cmds.to_xml().encode())
    root = ET.fromstring(body)
    assert status == 200 and float(root.findtext("seconds") or "") == pytest.approx(2 + 1 + 10 + 1 + 10 + 3 + 0.1)
    lines = (root.findtext("log") or "").splitlines()
    assert lines[:3] == ["Simulation:", "--------",
                         "00:00:00 - Set 'motor_x' = 2.0 (wait for 'motor_x') [was 0.0]"]
    assert "00:00:02 - Set 'motor_y' = 1.0 [was 0.0]" in lines
    assert "00:00:24 - Start following commands in parallel" in lines
    assert "00:00:27 - End If" in lines
    assert lines[-2:] == ["--------", "00:00:27   Total estimated execution time"]
    assert java_double(1e7) == "1.0E7" and java_double(0.0001) == "1.0E-4" and java_double(5) == "5.0"


async def test_fake_keeps_serving_after_garbage(fake: FakeScanServer) -> None:
    reader, writer = await asyncio.open_connection(fake.host, fake.port)
    writer.write(b"\x00\xffGARBAGE / HTTP/9\r\n\r\n")
    await writer.drain()
    await reader.read()  # the fake closes the connection
    writer.close()
    await writer.wait_closed()
    status, _, body = await http(fake, "POST", "/scan/x", b"<commands><comment>" * 3)
    assert status == 400
    assert (await http(fake, "GET", "/scans"))[0] == 200


def test_module_runs_and_announces() -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "fake_servers.scan_server", "--port", "0", "--speed", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert m, line
        status, _, body = _http(f"http://127.0.0.1:{m.group(1)}", "GET", "/server/info")
        assert status == 200 and b"4.7.0" in body
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err


async def test_reversing_loop_alternates_direction(fake: FakeScanServer) -> None:
    fake.devices["y"] = FakeDevice("y", 0.0)
    scan_id = await submit(fake, [Loop("x", 0, 1, 1, Loop("y", 0, 2, -1, Log("y")))], "?pre_post=false")
    await until_state(fake, scan_id, "Finished")
    _, _, body = await http(fake, "GET", f"/scan/{scan_id}/data")
    values = [s.findtext("value") for s in ET.fromstring(body).iter("sample")]
    assert values == ["0.0", "1.0", "2.0", "2.0", "1.0", "0.0"]
