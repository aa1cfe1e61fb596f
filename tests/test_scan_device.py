"""ScanDevice: the scan server as a virtual KATCP device, against the fake scan server.

Paths covered: katclient's InspectingClientAsync in-process, ``katclient inspect scan://... --json``,
``katclient bridge scan://...`` driven by ``katclient request`` (the issue's done-when scenario),
and aiokatcp's Client with a SensorWatcher.  The fake runs 100 times faster than the wall clock, so
``delay 1`` takes 10 ms and ``delay 100000`` is a scan that runs until it is aborted.
Facts: DESIGN.md section 4 and protocols/scan-server.md sections 3 and 4.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiokatcp
import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web

from fake_servers.scan_server import FakeScanServer
from katclient.client.backoff import ExponentialRandomBackoff
from katclient.client.inspecting import InspectingClientAsync
from katclient.devices.scan.client import ScanClient
from katclient.devices.scan.device import (
    ACTIVE_STATE_VALUES,
    STATE_VALUES,
    ScanDevice,
    SubmitOptions,
    active_scan,
    load_commands,
    parse_submit_options,
    scan_fields,
    state_reading,
)
from katclient.devices.scan.model import ScanInfo, ScanXMLError
from katclient.errors import FailReply
from katclient.protocol import Message, Status

ROOT = Path(__file__).resolve().parents[1]
SPEED = 100.0
WAIT = 10.0  # bound on every wait for something to happen (seconds); never reached when all is well
LONG = "delay 100000"  # runs until aborted (1000 s of real time at SPEED)
DATA_SCAN = "loop motor_x 1 3 1 { delay 1; log motor_x neutrons }"


# --------------------------------------------------------------------------------------------------
# Helpers and fixtures
# --------------------------------------------------------------------------------------------------


async def until(predicate: Callable[[], Any], timeout: float = WAIT) -> None:
    """Wait (bounded) until ``predicate()`` is true, checking every few milliseconds."""

    async def check() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(check(), timeout)


def value(client: InspectingClientAsync, name: str) -> Any:
    sensor = client.sensors.get(name)
    return None if sensor is None else sensor.value


def status(client: InspectingClientAsync, name: str) -> Status | None:
    sensor = client.sensors.get(name)
    return None if sensor is None else sensor.status


def make_device(host: str, port: int, **kw: Any) -> ScanDevice:
    backoff = ExponentialRandomBackoff(0.02, 0.1, 2.0, 0.0)
    return ScanDevice(host, port, poll_period=0.05, reconnect_delay=backoff, **kw)


@pytest.fixture
async def fake() -> AsyncIterator[FakeScanServer]:
    server = FakeScanServer(speed=SPEED)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def device(fake: FakeScanServer) -> AsyncIterator[ScanDevice]:
    dev = make_device(fake.host, fake.port)
    await dev.start()
    yield dev
    await dev.stop()


@pytest.fixture
async def client(device: ScanDevice) -> AsyncIterator[InspectingClientAsync]:
    c = InspectingClientAsync(*device.address)
    await c.connect()
    await c.until_synced(WAIT)
    yield c
    await c.aclose()


async def ok(client: InspectingClientAsync, name: str, *args: Any) -> tuple[list[bytes], list[Message]]:
    reply, informs = await client.simple_request(name, *args, timeout=WAIT)
    assert reply.reply_ok(), (name, args, reply)
    return list(reply.arguments[1:]), informs


async def fail(client: InspectingClientAsync, name: str, *args: Any) -> str:
    reply, _ = await client.simple_request(name, *args, timeout=WAIT)
    assert reply.arguments[0] == b"fail", (name, args, reply)
    reason = reply.arguments[1].decode()
    assert "\n" not in reason
    return reason


async def submit(client: InspectingClientAsync, name: str, commands: str, *options: str) -> int:
    args, _ = await ok(client, "scan-submit", name, commands, *options)
    return int(args[0])


# --------------------------------------------------------------------------------------------------
# Sans-I/O mapping helpers
# --------------------------------------------------------------------------------------------------


def test_state_readings_and_active_scan() -> None:
    assert state_reading("Running") == ("running", Status.NOMINAL)
    assert state_reading("Failed") == ("failed", Status.ERROR)
    assert state_reading("Aborted") == ("aborted", Status.WARN)
    assert state_reading("Scheduled") == ("other", Status.WARN)  # a future state (Phoebus PR #3622)
    assert {state_reading(s)[0] for s in ("Idle", "Finished", "Logged", "Paused")} <= set(STATE_VALUES)
    assert set(ACTIVE_STATE_VALUES) - {"none"} <= set(STATE_VALUES)

    def info(i: int, state: str) -> ScanInfo:
        return ScanInfo(i, f"s{i}", 1000 * i, state, 0, -1, "")

    assert active_scan([info(3, "Running"), info(2, "Paused"), info(1, "Finished")]) == info(2, "Paused")
    assert active_scan([info(1, "Idle")]) is None


def test_scan_fields_convert_times_to_seconds() -> None:
    info = ScanInfo(7, "My scan", 1_700_000_000_500, "Running", 2500, 3, "Delay 1.0 sec",
                    total_work_units=4, performed_work_units=1, finish=1_700_000_010_000, error=None)
    assert scan_fields(info) == (7, "My scan", "running", 25, 1_700_000_000.5, 2.5, 1_700_000_010.0, 3,
                                 "Delay 1.0 sec", "")
    done = ScanInfo(8, "x", 0, "Failed", 10, -1, "- end -", error="boom")
    assert scan_fields(done)[6] == "" and scan_fields(done)[9] == "boom"


def test_submit_options() -> None:
    assert parse_submit_options([]) == SubmitOptions()
    opts = parse_submit_options(["queue=false", "timeout=2.5", "pre_post=0"])
    assert opts == SubmitOptions(queue=False, timeout=2.5, deadline=None, pre_post=False)
    assert parse_submit_options(["deadline=2030-01-02T03:04:05"]).deadline == "2030-01-02 03:04:05"
    for bad, text in [("queue=maybe", "true or false"), ("timeout=-1", "seconds >= 0"),
                      ("deadline=tomorrow", "yyyy-MM-dd"), ("colour=red", "Unknown option"),
                      ("queue", "Unknown option")]:
        with pytest.raises(FailReply, match=text):
            parse_submit_options([bad])


def test_load_commands_errors_are_clear() -> None:
    assert len(load_commands(DATA_SCAN)) == 1
    assert len(load_commands("<commands><delay><seconds>1</seconds></delay></commands>")) == 1
    with pytest.raises(FailReply, match=r"Bad scan text: line 1, column 7"):
        load_commands("delay {")
    with pytest.raises(FailReply, match="Bad scan XML: Malformed"):
        load_commands("<commands><delay>")
    with pytest.raises(FailReply, match="Bad scan XML: .*bogus"):
        load_commands("<commands><bogus/></commands>")


# --------------------------------------------------------------------------------------------------
# Through InspectingClientAsync, in-process
# --------------------------------------------------------------------------------------------------


async def test_initial_model_and_request_list(client: InspectingClientAsync, device: ScanDevice) -> None:
    assert value(client, "server.version") == "4.7.0"
    assert value(client, "server.connected") is True
    assert value(client, "server.url") == device.url
    assert value(client, "server.start-time") > 1e9
    assert value(client, "active.state") == "none" and value(client, "active.id") == -1
    assert value(client, "queue.length") == 0
    assert not [n for n in client.sensors if n.startswith("scan.")]
    expected = {
        "scan-submit", "scan-simulate", "scan-info", "scan-list", "scan-wait", "scan-pause", "scan-resume",
        "scan-abort", "scan-next", "scan-move", "scan-patch", "scan-delete", "scan-clear", "scan-data",
        "scan-last-serial", "scan-commands", "scan-devices", "server-info",
    }
    assert expected <= set(client.requests)
    assert client.requests["scan-wait"].timeout_hint >= 3600
    assert "COMMANDS" in client.requests["scan-submit"].description
    _, informs = await ok(client, "server-info")
    info = {m.arguments[0].decode(): m.arguments[1].decode() for m in informs}
    assert info["version"] == "4.7.0" and info["url"] == device.url and int(info["max-mem"]) > 0


async def test_submit_wait_data_commands(client: InspectingClientAsync, fake: FakeScanServer) -> None:
    changes: list[Message] = []
    client.hook_inform("interface-changed", changes.append)
    scan_id = await submit(client, "Data Demo", DATA_SCAN)
    assert scan_id == 1 and fake.scans[1].name == "Data Demo"

    args, _ = await ok(client, "scan-wait", scan_id)
    assert args[:4] == [b"1", b"Data Demo", b"finished", b"100"]
    await until(lambda: value(client, "scan.1.state") == "finished")
    assert value(client, "scan.1.percentage") == 100 and value(client, "scan.1.error") == ""
    assert "'Data Demo'" in client.sensors["scan.1.state"].description
    assert changes  # the per-scan sensors were announced

    args, informs = await ok(client, "scan-data", scan_id)
    rows = [(m.arguments[0], int(m.arguments[1]), float(m.arguments[2]), float(m.arguments[3]))
            for m in informs]
    assert int(args[0]) == len(rows) == 6
    assert [(dev, serial, val) for dev, serial, _, val in rows] == [
        (b"motor_x", 0, 1.0), (b"neutrons", 0, 0.0), (b"motor_x", 1, 2.0), (b"neutrons", 1, 0.0),
        (b"motor_x", 2, 3.0), (b"neutrons", 2, 0.0),
    ]
    assert all(t > 1e9 for _, _, t, _ in rows)
    assert (await ok(client, "scan-last-serial", scan_id))[0] == [b"2"]

    # The commands come back in the text language and as XML, and both resubmit.
    args, _ = await ok(client, "scan-commands", scan_id)
    text = args[0].decode()
    assert text.startswith("loop motor_x 1.0 3.0 1.0 {") and "log motor_x neutrons" in text
    args, _ = await ok(client, "scan-commands", scan_id, "both")
    assert args[0].decode() == text and args[1].decode().lstrip().startswith("<commands>")
    args, _ = await ok(client, "scan-commands", scan_id, "xml")
    again = await submit(client, "again", args[0].decode())
    assert (await ok(client, "scan-wait", again))[0][2] == b"finished"
    assert (await fail(client, "scan-commands", scan_id, "yaml")).startswith("Bad value")

    args, informs = await ok(client, "scan-devices", scan_id)
    assert {m.arguments[0] for m in informs} >= {b"motor_x", b"neutrons"} and int(args[0]) == len(informs)

    args, informs = await ok(client, "scan-list")
    assert int(args[0]) == 2 and [int(m.arguments[0]) for m in informs] == [again, scan_id]  # newest first
    args, _ = await ok(client, "scan-info", scan_id)
    assert args[:3] == [b"1", b"Data Demo", b"finished"] and args[8] == b"- end -"


async def test_simulate(client: InspectingClientAsync) -> None:
    args, informs = await ok(client, "scan-simulate", "delay 3; set motor_x 2")
    assert float(args[0]) == 3.0
    lines = [m.arguments[0].decode() for m in informs]
    assert lines[0] == "Simulation:" and any("Delay 3.0 sec" in line for line in lines)
    assert lines[-1].endswith("Total estimated execution time")
    xml = "<commands><delay><seconds>2</seconds></delay></commands>"
    assert float((await ok(client, "scan-simulate", xml))[0][0]) == 2.0
    assert (await fail(client, "scan-simulate", "delay {")).startswith("Bad scan text: line 1, column 7")


async def test_sensors_follow_active_queue_patch_move_abort(
    client: InspectingClientAsync, device: ScanDevice
) -> None:
    first = await submit(client, "first", LONG)
    second = await submit(client, "second", f"{LONG}; set motor_x 10")
    third = await submit(client, "third", LONG)
    # The reply came after a poll: the device's per-scan sensors exist already.
    assert {f"scan.{i}.state" for i in (first, second, third)} <= set(device.sensors)
    await until(lambda: value(client, "active.id") == first and value(client, "queue.length") == 2
                and value(client, f"scan.{third}.state") == "idle"
                and value(client, "active.command").startswith("Delay"))  # past the pre-scan comment
    assert value(client, "active.name") == "first" and value(client, "active.state") == "running"
    assert value(client, "active.address") == 0 and value(client, "active.percentage") == 0
    assert value(client, f"scan.{first}.state") == "running"

    # patch a command of a queued scan before it runs
    await ok(client, "scan-patch", second, 1, "value", "7")
    assert "set motor_x 7" in (await ok(client, "scan-commands", second))[0][0].decode()
    assert "Invalid command address 9" in await fail(client, "scan-patch", second, 9, "value", "7")

    # move the third scan ahead of the second; aborting the first then starts the third
    await ok(client, "scan-move", third, 1)
    assert "not done" in await fail(client, "scan-delete", first)
    await ok(client, "scan-abort", first)
    await until(lambda: value(client, "active.id") == third and value(client, "queue.length") == 1)
    assert value(client, f"scan.{second}.state") == "idle"
    assert value(client, f"scan.{first}.state") == "aborted"
    assert status(client, f"scan.{first}.state") is Status.WARN
    assert value(client, f"scan.{first}.error") == "Aborted"

    # abort without an id: every scan
    await ok(client, "scan-abort")
    await until(lambda: all(value(client, f"scan.{i}.state") == "aborted" for i in (first, second, third)))
    await until(lambda: value(client, "active.state") == "none" and value(client, "queue.length") == 0)
    assert (await fail(client, "scan-wait", second)) == "Scan 2 'second' Aborted: Aborted"

    # delete and clear remove the per-scan sensors (announced with #interface-changed)
    await ok(client, "scan-delete", first)
    assert f"scan.{first}.state" not in device.sensors
    await until(lambda: f"scan.{first}.state" not in client.sensors)
    await ok(client, "scan-clear")
    assert not [n for n in device.sensors if n.startswith("scan.")]
    await until(lambda: not [n for n in client.sensors if n.startswith("scan.")])
    assert "Unknown scan ID 1" in await fail(client, "scan-info", first)


async def test_pause_resume_next(client: InspectingClientAsync) -> None:
    scan_id = await submit(client, "pausable", LONG, "queue=false")
    await until(lambda: value(client, f"scan.{scan_id}.state") == "running")
    await ok(client, "scan-pause", scan_id)
    await until(lambda: value(client, f"scan.{scan_id}.state") == "paused"
                and value(client, "active.state") == "paused")
    await ok(client, "scan-resume")  # all scans
    await until(lambda: value(client, f"scan.{scan_id}.state") == "running"
                and value(client, "active.command").startswith("Delay"))
    await ok(client, "scan-next", scan_id)  # skips the delay: the scan finishes
    args, _ = await ok(client, "scan-wait", scan_id)
    assert args[2] == b"finished"


async def test_wait_timeout_argument(client: InspectingClientAsync) -> None:
    scan_id = await submit(client, "long", LONG)
    reason = await fail(client, "scan-wait", scan_id, 0.1)
    assert re.fullmatch(rf"Scan {scan_id} not done after 0\.1 s \(state (idle|running)\)", reason), reason
    waiter = asyncio.ensure_future(client.simple_request("scan-wait", scan_id, timeout=WAIT))
    await until(lambda: value(client, "active.id") == scan_id)
    await ok(client, "scan-abort", scan_id)
    reply, _ = await waiter
    assert list(reply.arguments[:2]) == [b"fail", b"Scan 1 'long' Aborted: Aborted"]


async def test_failed_scan(client: InspectingClientAsync) -> None:
    scan_id = await submit(client, "doomed", "wait motor_x = 60 timeout=1")
    reason = await fail(client, "scan-wait", scan_id)
    assert reason == "Scan 1 'doomed' Failed: Timeout while waiting for motor_x = 60.0"
    await until(lambda: value(client, f"scan.{scan_id}.state") == "failed")
    assert status(client, f"scan.{scan_id}.state") is Status.ERROR
    assert value(client, f"scan.{scan_id}.error") == "Timeout while waiting for motor_x = 60.0"


async def test_bad_arguments_and_unknown_ids(client: InspectingClientAsync, fake: FakeScanServer) -> None:
    reason = await fail(client, "scan-submit", "x", "loop motor_x 1 {")
    assert reason.startswith("Bad scan text: line 1, column")
    assert (await fail(client, "scan-submit", "x", "<commands><delay>")).startswith("Bad scan XML: Malformed")
    assert "Unknown option" in await fail(client, "scan-submit", "x", "delay 1", "priority=high")
    assert "yyyy-MM-dd" in await fail(client, "scan-submit", "x", "delay 1", "deadline=soon")
    assert "Cannot specify both" in await fail(client, "scan-submit", "x", "delay 1", "timeout=5",
                                               "deadline=2030-01-01 10:00:00")
    # the server rejects it: its message (and the trace's reason) in one line
    reason = await fail(client, "scan-submit", "inc", "include missing.scn")
    assert reason == "inc failed to submit: Cannot open include file 'missing.scn'"
    assert not fake.scans
    for request, args in [("scan-info", ()), ("scan-wait", ()), ("scan-pause", ()), ("scan-abort", ()),
                          ("scan-data", ()), ("scan-delete", ()), ("scan-commands", ()),
                          ("scan-last-serial", ()), ("scan-move", (1,)), ("scan-patch", (0, "value", "1"))]:
        assert await fail(client, request, 42, *args) == "Unknown scan ID 42", request
    assert (await fail(client, "scan-info", "x")).startswith("Bad value")
    assert (await fail(client, "scan-info")).startswith("Too few arguments")


async def test_deadline_and_timeout_options_reach_the_server(client: InspectingClientAsync,
                                                              fake: FakeScanServer) -> None:
    timed = await submit(client, "timed", LONG, "timeout=1", "queue=false", "pre-post=false")
    reason = await fail(client, "scan-wait", timed)
    assert reason == f"Scan {timed} 'timed' Aborted: Aborted (deadline/timeout)"
    stale = await submit(client, "stale", LONG, "deadline=2000-01-01 00:00:00")
    reason = await fail(client, "scan-wait", stale)
    assert reason == f"Scan {stale} 'stale' Aborted: Aborted (stale deadline)"


async def test_server_goes_away_and_comes_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="katclient.devices.base")  # the expected reconnect warnings
    fake = FakeScanServer(speed=SPEED)
    host, port = await fake.start()
    dev = make_device(host, port)
    await dev.start()
    client = InspectingClientAsync(*dev.address)
    try:
        await client.connect()
        await client.until_synced(WAIT)
        await submit(client, "before", "comment hello")
        await until(lambda: value(client, "scan.1.state") == "finished")

        await fake.stop()
        await until(lambda: value(client, "server.connected") is False)
        assert status(client, "server.connected") is Status.NOMINAL
        await until(lambda: status(client, "scan.1.state") is Status.UNREACHABLE)
        assert value(client, "scan.1.state") == "finished"  # value kept
        assert status(client, "server.version") is Status.UNREACHABLE
        assert status(client, "queue.length") is Status.UNREACHABLE
        reason = await fail(client, "scan-list")
        assert reason.startswith("Scan server unreachable:")
        assert (await fail(client, "scan-submit", "x", "delay 1")).startswith("Scan server unreachable:")

        # It comes back by itself (a fresh server: scan 1 is gone).
        fake = FakeScanServer(port=port, speed=SPEED)
        await fake.start()
        await until(lambda: value(client, "server.connected") is True)
        await until(lambda: status(client, "queue.length") is Status.NOMINAL
                    and "scan.1.state" not in client.sensors)
        assert status(client, "server.version") is Status.NOMINAL
        scan_id = await submit(client, "after", "comment back")
        assert (await ok(client, "scan-wait", scan_id))[0][:3] == [b"1", b"after", b"finished"]
    finally:
        await client.aclose()
        await dev.stop()
        await fake.stop()


async def test_device_starts_while_the_server_is_down(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="katclient.devices.base")
    probe = FakeScanServer(speed=SPEED)
    host, port = await probe.start()
    await probe.stop()  # a port nobody listens on (for now)
    dev = make_device(host, port)
    await dev.start()
    try:
        assert dev.sensors["server.connected"].value is False
        assert not dev.backend_ready.is_set() and dev.last_backend_error is not None
        fake = FakeScanServer(port=port, speed=SPEED)
        await fake.start()
        try:
            await dev.wait_backend_ready(WAIT)
            assert dev.sensors["server.version"].value == "4.7.0"
        finally:
            await fake.stop()
    finally:
        await dev.stop()


class _Garbage(tornado.web.RequestHandler):
    def get(self, path: str) -> None:
        if path == "server/info":
            self.write("<server><version>9.9</version><start_time>0</start_time></server>")
        else:
            self.write("<html>not the scan server's XML")


async def test_garbage_from_the_server_is_a_clear_failure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="katclient.devices.base")
    http = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/(.*)", _Garbage)]))
    [sock] = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    http.add_sockets([sock])
    dev = make_device("127.0.0.1", sock.getsockname()[1])
    await dev.start()
    client = InspectingClientAsync(*dev.address)
    try:
        assert isinstance(dev.last_backend_error, ScanXMLError)
        assert dev.sensors["server.connected"].value is False
        await client.connect()
        await client.until_synced(WAIT)
        reason = await fail(client, "scan-list")
        assert reason.startswith("Bad reply from the scan server at http://127.0.0.1:")
        assert "Malformed scan list" in reason
        assert (await ok(client, "server-info"))[1][0].arguments[1] == b"9.9"  # still serving
    finally:
        await client.aclose()
        await dev.stop()
        http.stop()
        await http.close_all_connections()


# --------------------------------------------------------------------------------------------------
# Through the command line: inspect, and a bridge driven by katclient request
# --------------------------------------------------------------------------------------------------


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "katclient.cli", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_inspect_json(fake: FakeScanServer) -> None:
    async with ScanClient(f"http://{fake.host}:{fake.port}") as scan:
        scan_id = await scan.submit("comment hi", "inspected")
        await scan.wait_until_done(scan_id, poll_period=0.01, timeout=WAIT)
    code, out, err = await run_cli("inspect", f"scan://{fake.host}:{fake.port}", "--json")
    assert code == 0, err
    doc = json.loads(out)
    sensors = {s["name"]: s for s in doc["sensors"]}
    assert doc["state"] == "synced"
    assert sensors["server.version"]["value"] == "4.7.0" and sensors["server.connected"]["value"] is True
    assert sensors[f"scan.{scan_id}.state"]["value"] == "finished"
    assert sensors[f"scan.{scan_id}.state"]["type"] == "discrete"
    assert sensors[f"scan.{scan_id}.percentage"]["units"] == "%"
    assert "scan-submit" in {r["name"] for r in doc["requests"]}


async def test_done_when_request_through_bridge(fake: FakeScanServer) -> None:
    """`katclient request` submits a text-language scan to the gateway, waits for it, lists its data."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "katclient.cli", "bridge", f"scan://{fake.host}:{fake.port}",
        "--listen", "127.0.0.1:0", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("listening on "), line
        gateway = line.split("listening on ", 1)[1].strip()

        code, out, err = await run_cli("request", gateway, "scan-submit", "Data Demo", DATA_SCAN)
        assert code == 0, (out, err)
        reply = out.strip().splitlines()[-1].split()
        assert reply[0].startswith("!scan-submit") and reply[1] == "ok"
        scan_id = reply[2]
        assert fake.scans[int(scan_id)].name == "Data Demo"

        code, out, err = await run_cli("request", gateway, "scan-wait", scan_id)
        assert code == 0, (out, err)
        assert out.split()[1:5] == ["ok", scan_id, "Data\\_Demo", "finished"]

        code, out, err = await run_cli("request", gateway, "scan-data", scan_id)
        assert code == 0, (out, err)
        lines = out.strip().splitlines()
        samples = [line.split()[1:] for line in lines if line.startswith("#scan-data")]
        assert lines[-1].split()[1:] == ["ok", "6"]
        assert [(dev, serial, float(val)) for dev, serial, _, val in samples] == [
            ("motor_x", "0", 1.0), ("neutrons", "0", 0.0), ("motor_x", "1", 2.0), ("neutrons", "1", 0.0),
            ("motor_x", "2", 3.0), ("neutrons", "2", 0.0),
        ]

        # A failure is a `fail` reply: exit code 1 with the server's message.
        code, out, _ = await run_cli("request", gateway, "scan-info", "42")
        assert code == 1 and "fail Unknown\\_scan\\_ID\\_42" in out
        code, out, _ = await run_cli("request", gateway, "scan-submit", "bad", "loop {")
        assert code == 1 and "Bad\\_scan\\_text:" in out
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        assert proc.returncode == 0  # the bridge stops cleanly on SIGTERM


# --------------------------------------------------------------------------------------------------
# aiokatcp, an independent KATCP client
# --------------------------------------------------------------------------------------------------


async def test_aiokatcp_syncs_and_submits(device: ScanDevice) -> None:
    client = await aiokatcp.Client.connect(*device.address)
    try:
        watcher = aiokatcp.SensorWatcher(client)
        client.add_sensor_watcher(watcher)
        await asyncio.wait_for(watcher.synced.wait(), WAIT)
        assert watcher.sensors["server.version"].value == b"4.7.0"
        assert watcher.sensors["server.connected"].value is True
        assert watcher.sensors["active.state"].value.value == b"none"

        reply, informs = await client.request("scan-submit", "from aiokatcp", DATA_SCAN)
        scan_id = int(reply[0])
        state = f"scan.{scan_id}.state"
        await until(lambda: state in watcher.sensors and watcher.synced.is_set())
        await until(lambda: watcher.sensors[state].value.value == b"finished")
        assert watcher.sensors[f"scan.{scan_id}.percentage"].value == 100
        reply, informs = await client.request("scan-data", scan_id)
        assert int(reply[0]) == len(informs) == 6
        with pytest.raises(aiokatcp.FailReply, match="Unknown scan ID 42"):
            await client.request("scan-info", 42)
    finally:
        client.close()
        await client.wait_closed()
