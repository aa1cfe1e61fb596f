"""katclient's Tornado ScanClient against the fake scan server (and against misbehaving peers)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from fake_servers.scan_server import FakeScanServer
from katclient.devices.scan import (
    CommandSequence,
    Comment,
    Delay,
    Log,
    Loop,
    ScanClient,
    ScanFailedError,
    ScanInfo,
    ScanServerError,
    ScanSubmitError,
    ScanSyntaxError,
    ScanXMLError,
    Set,
    UnknownScanError,
    Wait,
    createTable,
)
from katclient.errors import InvalidUsage, KatclientConnectionError, KatclientTimeoutError

POLL = 0.005  # seconds between polls in these tests (the fake runs 1000x faster than real time)


@pytest.fixture
async def fake() -> AsyncIterator[FakeScanServer]:
    server = FakeScanServer(speed=1000)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(fake: FakeScanServer) -> AsyncIterator[ScanClient]:
    async with ScanClient(f"http://{fake.host}:{fake.port}") as c:
        yield c


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until ``check()`` is true, polling; fail after ``timeout`` seconds."""
    async def loop() -> None:
        while not await check():
            await asyncio.sleep(POLL)
    await asyncio.wait_for(loop(), timeout)


async def state_is(client: ScanClient, scan_id: int, *states: str) -> None:
    async def check() -> bool:
        return (await client.scan_info(scan_id)).state in states
    await until(check)


async def test_seed_example_script_end_to_end(fake: FakeScanServer, client: ScanClient) -> None:
    """Every step of the seed's example (seeds/004), with katclient's client."""
    assert repr(client).startswith("ScanClient('http://127.0.0.1:")
    info_server = await client.serverInfo()
    assert info_server.version == "4.7.0" and "<server>" in str(info_server)

    cmds = [Comment("Hello"), Set("motor_x", 10)]
    sim = await client.simulate(cmds)
    assert sim["simulation"].startswith("Simulation:\n--------\n")
    assert "Set 'motor_x' = 10.0 [was 0.0]" in sim["simulation"]

    scan_id = await client.submit(cmds, "My First Scan")
    assert scan_id == 1
    info = await client.scanInfo(scan_id)
    assert info.id == scan_id and info.name == "My First Scan"
    info = await client.waitUntilDone(scan_id, poll_period=POLL)
    assert info.state == "Finished" and info.isDone() and info.percentage() == 100

    # pause/resume/abort: run this part in real time so the 5 s delay cannot finish on its own
    fake.set_speed(1)
    scan_id = await client.submit([Delay(5)], "Not sure about this one")
    await client.pause(scan_id)
    assert (await client.scanInfo(scan_id)).state == "Paused"
    await client.resume(scan_id)
    assert (await client.scanInfo(scan_id)).state == "Running"
    await client.abort(scan_id)
    aborted = await client.scanInfo(scan_id)
    assert aborted.state == "Aborted" and aborted.error == "Aborted"
    before = [i.id for i in await client.scanInfos()]
    assert before == [scan_id, 1]  # newest first
    await client.delete(scan_id)
    assert [i.id for i in await client.scanInfos()] == [1]

    scan_id = await client.submit([Delay(5), Set("motor_x", 10)], "Changing...")
    await client.pause(scan_id)
    await client.patch(scan_id, 1, "value", 5)
    assert (await client.commands(scan_id))[1] == Set("motor_x", 5)
    await client.resume(scan_id)
    await client.abort(scan_id)
    with pytest.raises(ScanFailedError, match="Aborted") as failed:
        await client.waitUntilDone(scan_id, poll_period=POLL)
    assert failed.value.info.state == "Aborted"
    fake.set_speed(1000)

    scan_id = await client.submit([Wait("motor_x", 60, timeout=1)], "Timeout Test")
    with pytest.raises(ScanFailedError) as failed:
        await client.waitUntilDone(scan_id, poll_period=POLL)
    assert failed.value.info.state == "Failed"
    assert failed.value.info.error == "Timeout while waiting for motor_x = 60.0"

    cmds2 = [Loop("motor_x", 1, 10, 1, [
        Set("neutrons", 0),
        Loop("motor_y", 1, 3, 1, [Delay(1), Log("motor_y")]),
        Log("motor_x", "neutrons"),
    ])]
    scan_id = await client.submit(cmds2, "Data Demo")
    info = await client.waitUntilDone(scan_id, poll_period=POLL)
    assert info.state == "Finished" and info.total_work_units == 10 * (1 + 3 * 2 + 1)
    assert await client.lastSerial(scan_id) == 39  # 40 Log commands, serials from 0
    data = await client.getData(scan_id)
    assert sorted(data) == ["motor_x", "motor_y", "neutrons"]
    table = createTable(data, "motor_x", "neutrons")
    # the loop does not wait for the motor (PyScanClient sends wait=false), and the fake's motor
    # moves at 1 unit/s, so early rows may show it on its way; 3 s of delays per step let it arrive
    assert len(table[0]) == 10 and all(1.0 <= x <= 10.0 for x in table[0]) and table[0][-1] == 10.0
    assert table[1] == [0.0] * 10
    assert len(data["motor_y"]["id"]) == 30 and data["motor_y"]["value"][2] == 3.0

    await client.clear()
    assert await client.scanInfos() == []


async def test_every_other_operation(fake: FakeScanServer, client: ScanClient) -> None:
    # text language and raw XML are both accepted by submit and simulate
    sim = await client.simulate("delay 2; comment hi")
    assert sim.seconds == pytest.approx(2.1)
    scan_id = await client.submit("loop motor_y 1 3 1 { log motor_y }", "text")
    xml_id = await client.submit(CommandSequence(Comment("x")).to_xml(), "xml", queue=False, pre_post=False)
    await client.wait_until_done(scan_id, POLL)
    await client.wait_until_done(xml_id, POLL)
    assert await client.commands(scan_id) == CommandSequence(Loop("motor_y", 1, 3, 1, Log("motor_y")))
    assert (await client.scanCmds(scan_id)).startswith("<commands>")
    devices = await client.devices(scan_id)
    assert devices[0].name == "motor_y" and devices[0].status == "3.0"
    assert "<devices>" in await client.scanDevices()
    assert {d.name for d in await client.devices()} >= {"motor_x", "neutrons"}
    # next skips a long delay; move reorders the queue
    fake.set_speed(1)
    long_id = await client.submit([Delay(3600)], "long")
    await state_is(client, long_id, "Running")
    idle1 = await client.submit([Comment("a")], "idle1")
    idle2 = await client.submit([Comment("b")], "idle2")
    await client.move(idle2, 1)
    await client.next(long_id)
    fake.set_speed(1000)
    await client.wait_until_done(idle1, POLL)
    first, second = (await client.scan_info(idle2)), (await client.scan_info(idle1))
    assert first.finish is not None and second.finish is not None and first.finish <= second.finish
    # timeout and deadline
    timed = await client.submit([Delay(3600)], "t", queue=False, timeout=0.2)  # rounded up to 1 s
    with pytest.raises(ScanFailedError, match=r"Aborted \(deadline/timeout\)"):
        await client.wait_until_done(timed, POLL)
    stale = await client.submit([Comment("late")], "d", deadline=datetime.datetime(2001, 1, 1))
    with pytest.raises(ScanFailedError, match=r"Aborted \(stale deadline\)"):
        await client.wait_until_done(stale, POLL)
    ok = await client.submit([Comment("in time")], "d2", deadline="2999-01-01 00:00:00", pre_post=False)
    assert (await client.wait_until_done(ok, POLL)).state == "Finished"
    # a name with '/' and non-ASCII characters arrives intact
    named = await client.submit([Comment("n")], "a/b c ü?&")
    assert (await client.scan_info(named)).name == "a/b c ü?&"


async def test_wait_until_done_fails_fast(fake: FakeScanServer, client: ScanClient) -> None:
    with pytest.raises(UnknownScanError) as err:
        await client.wait_until_done(42, POLL)
    assert err.value.status == 500 and err.value.scan_id == 42 and "Unknown scan ID 42" in str(err.value)
    fake.set_speed(1)
    scan_id = await client.submit([Delay(3600)], "forever")
    with pytest.raises(KatclientTimeoutError):
        await client.wait_until_done(scan_id, POLL, timeout=0.05)
    await client.abort()
    with pytest.raises(ScanFailedError):
        await client.wait_until_done(scan_id, POLL)
    with pytest.raises(InvalidUsage):
        await client.wait_until_done(scan_id, poll_period=0)


async def test_server_errors_carry_the_message(client: ScanClient) -> None:
    with pytest.raises(ScanSubmitError) as err:
        await client.submit("<commands><bogus/></commands>", "Bad")
    assert err.value.status == 400 and err.value.reason == "Bad failed to submit"
    assert err.value.detail == "Unknown scan command ID bogus"
    with pytest.raises(ScanSubmitError, match="Failed to simulate"):
        await client.simulate("<scan/>")
    with pytest.raises(UnknownScanError) as put_err:
        await client.pause(99)
    assert put_err.value.status == 400
    with pytest.raises(UnknownScanError):
        await client.delete(99)
    scan_id = await client.submit([Delay(1)], "p")
    with pytest.raises(ScanServerError, match="Cannot update nonsense of DelayCommand"):
        await client.patch(scan_id, 0, "nonsense", 1)
    with pytest.raises(ScanServerError, match="Invalid command address 5"):
        await client.patch(scan_id, 5, "seconds", 1)
    with pytest.raises(ScanSyntaxError):
        await client.submit("loop x {", "syntax")


async def test_invalid_arguments(client: ScanClient) -> None:
    with pytest.raises(InvalidUsage, match="both timeout and deadline"):
        await client.submit([Comment("x")], timeout=5, deadline="2030-01-01 10:00:00")
    with pytest.raises(InvalidUsage, match="Invalid deadline"):
        await client.submit([Comment("x")], deadline="tomorrow")
    with pytest.raises(InvalidUsage):
        await client.submit([Comment("x")], timeout=-1)
    with pytest.raises(InvalidUsage):
        await client.scan_info("1")  # type: ignore[arg-type]
    with pytest.raises(InvalidUsage):
        await client.submit(["not a command"])  # type: ignore[list-item]
    assert ScanClient("localhost").base_url == "http://localhost:4810"
    assert ScanClient("scanhost", 4811).base_url == "http://scanhost:4811"
    with pytest.raises(InvalidUsage):
        ScanClient("http://host:1", 2)
    with pytest.raises(InvalidUsage):
        ScanClient("ftp://host")
    closed = ScanClient("localhost")
    closed.close()
    with pytest.raises(InvalidUsage, match="closed"):
        await closed.server_info()


async def test_server_gone_gives_connection_error() -> None:
    server = FakeScanServer(speed=1000)
    host, port = await server.start()
    async with ScanClient(f"http://{host}:{port}") as c:
        await c.server_info()
        await server.stop()
        with pytest.raises(KatclientConnectionError) as err:
            await c.server_info()
        assert isinstance(err.value, ConnectionError)


async def test_silent_server_gives_timeout() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with ScanClient(f"http://127.0.0.1:{port}", request_timeout=0.1) as c:
            with pytest.raises(KatclientTimeoutError) as err:
                await c.scan_infos()
            assert isinstance(err.value, TimeoutError)
    finally:
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()


class _Garbage(tornado.web.RequestHandler):
    BODIES = {
        "/server/info": b"this is not XML",
        "/scans": b'<!DOCTYPE scans [<!ENTITY x "y">]><scans>&x;</scans>',
        "/scan/1": b"<scan><id>1</id><name>x</name>",
        "/scan/2": b"<scan><id>2</id></scan>",
        "/scan/1/last_serial": b"<foo/>",
        "/scan/1/data": b"<data><device><name>x</name><samples><sample id='z'/></samples></device></data>",
        "/scan/3": b"<html>a proxy page</html>",
    }

    def get(self) -> None:
        self.set_header("Content-Type", "text/xml")
        self.finish(self.BODIES[self.request.path])

    def post(self) -> None:
        self.finish(b"<simulation><log>x</log></simulation>" if "simulate" in self.request.path else b"<ok/>")


@pytest.fixture
async def garbage_url() -> AsyncIterator[str]:
    app = tornado.web.Application([(r"/.*", _Garbage)])
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    server.stop()
    await server.close_all_connections()


async def test_bad_xml_replies_give_clear_errors(garbage_url: str) -> None:
    async with ScanClient(garbage_url) as c:
        with pytest.raises(ScanXMLError, match="Malformed server info"):
            await c.server_info()
        with pytest.raises(ScanXMLError, match="DOCTYPE"):
            await c.scan_infos()
        with pytest.raises(ScanXMLError, match="Malformed"):
            await c.scan_info(1)
        with pytest.raises(ScanXMLError, match="Missing <name>"):
            await c.scan_info(2)
        with pytest.raises(ScanXMLError, match="Expected <scan>"):
            await c.scan_info(3)
        with pytest.raises(ScanXMLError, match="Expected <serial>"):
            await c.last_serial(1)
        with pytest.raises(ScanXMLError, match="Invalid integer"):
            await c.data(1)
        with pytest.raises(ScanXMLError, match="Expected scan <id>, got <ok>"):
            await c.submit([Comment("x")])
        with pytest.raises(ScanXMLError, match="Missing <seconds>"):
            await c.simulate([Comment("x")])
        # the client keeps working after bad replies
        with pytest.raises(ScanXMLError):
            await c.server_info()


def test_scan_info_is_a_value() -> None:
    info = ScanInfo(1, "n", 0, "Finished", 5, -1, "- end -", 2, 2, 10, None)
    assert info.done and info.percentage() == 100 and info.finish_datetime() is not None
