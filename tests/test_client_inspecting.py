"""InspectingClientAsync against scripted faulty servers and aiokatcp's DeviceServer (a real peer)."""

import asyncio
import gc
import weakref

import aiokatcp
import pytest

from katclient.client.backoff import ExponentialRandomBackoff
from katclient.client.inspecting import InspectingClientAsync, ModelChanges, parse_target
from katclient.client.state import CONNECTED, DATA_SYNCED_CHANGED, DISCONNECTED, SYNCED, VALID_STATES
from katclient.protocol import (
    Address,
    FailReply,
    KatclientConnectionError,
    KatclientTimeoutError,
    Message,
    Status,
)
from tests.scripted_katcp import ScriptedConnection, ScriptedServer

TIMEOUT = 10.0


def make_client(port: int, **kw: object) -> InspectingClientAsync:
    client = InspectingClientAsync("127.0.0.1", port, **kw)  # type: ignore[arg-type]
    client.resync_delay = ExponentialRandomBackoff(0.05, 1.0, 2.0, 0.0)
    client.reconnect_delay = ExponentialRandomBackoff(0.02, 0.5, 2.0, 0.0)
    return client


async def wait_until(predicate, timeout: float = TIMEOUT) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


# --------------------------------------------------------------------- a real peer: aiokatcp


class AioDevice(aiokatcp.DeviceServer):
    VERSION = "aio-dev-1.0"
    BUILD_STATE = "aio-dev-1.0.0"

    def __init__(self, port: int = 0) -> None:
        super().__init__("127.0.0.1", port)
        S = aiokatcp.Sensor
        nominal = S.Status.NOMINAL
        self.sensors.add(S(float, "temp", "Temperature", "degC", default=21.5, initial_status=nominal))
        self.sensors.add(S(int, "count", "A counter", "", default=7, initial_status=nominal))
        self.sensors.add(S(bool, "on", "Power", "", default=True, initial_status=nominal))
        self.sensors.add(S(str, "label", "A label with spaces", "", default="hello world", initial_status=nominal))
        self.sensors.add(
            S(aiokatcp.Timestamp, "when", "A time", "", default=aiokatcp.Timestamp(1700000000.25),
              initial_status=nominal)
        )
        self.sensors.add(
            S(aiokatcp.Address, "addr", "An address", "", default=aiokatcp.Address(
                __import__("ipaddress").ip_address("10.0.0.1"), 7147), initial_status=nominal)
        )

    async def request_echo(self, ctx: aiokatcp.RequestContext, *args: str) -> tuple[str, ...]:
        """Echo the arguments."""
        return tuple(args)

    async def request_boom(self, ctx: aiokatcp.RequestContext) -> None:
        """Always fail."""
        raise aiokatcp.FailReply("it went boom")

    async def request_add(self, ctx: aiokatcp.RequestContext, name: str, type_name: str) -> None:
        """Add (or replace) a sensor and announce it."""
        stype = {"float": float, "integer": int}[type_name]
        self.sensors.add(aiokatcp.Sensor(stype, name, "added", "", initial_status=aiokatcp.Sensor.Status.NOMINAL))
        self.mass_inform("interface-changed", "sensor-list")


@pytest.fixture
async def aio_device():
    dev = AioDevice()
    await dev.start()
    yield dev
    if dev.server is not None:
        await dev.stop()


def port_of(dev: aiokatcp.DeviceServer) -> int:
    return dev.server.sockets[0].getsockname()[1]


async def test_sync_against_aiokatcp_has_real_values(aio_device: AioDevice) -> None:
    client = make_client(port_of(aio_device))
    states: list[tuple[object, object]] = []
    client.set_state_callback(lambda s, c: states.append((s, c)))
    await client.connect()
    try:
        await client.until_synced(TIMEOUT)
        assert [s for s, _ in states] == [CONNECTED, DATA_SYNCED_CHANGED, SYNCED]
        changes = states[1][1]
        assert isinstance(changes, ModelChanges)
        assert changes.sensors.added == {"temp", "count", "on", "label", "when", "addr"}
        assert "echo" in changes["requests"]["added"] and not changes.sensors.removed
        s = client.sensors
        assert s["temp"].value == 21.5 and s["temp"].status is Status.NOMINAL and s["temp"].units == "degC"
        assert s["count"].value == 7 and s["on"].value is True
        assert s["label"].value == "hello world"
        assert s["when"].value == 1700000000.25
        assert s["addr"].value == Address("10.0.0.1", 7147)
        assert all(x.timestamp > 0 for x in s.values())
        assert client.protocol_flags is not None and client.protocol_flags.bulk_set_sensor_sampling
        assert client.versions["katcp-device"] == ["aio-dev-1.0", "aio-dev-1.0.0"]
        assert client.requests["echo"].description.startswith("Echo the arguments")

        reply, informs = await client.simple_request("echo", "a b", "c")
        assert reply.reply_ok() and reply.arguments == (b"ok", b"a b", b"c") and informs == []
        reply, _ = await client.simple_request("boom")
        assert reply.code == b"fail" and reply.arguments[1] == b"it went boom"
        with pytest.raises(FailReply, match="it went boom"):
            await client.request_ok("boom")

        seen: list[float] = []
        client.sensors["temp"].attach(lambda sensor, reading: seen.append(reading.value))
        aio_device.sensors["temp"].value = 30.25
        await wait_until(lambda: seen == [30.25])
        assert client.sensors["temp"].value == 30.25
    finally:
        await client.aclose()
    assert client.state == DISCONNECTED
    assert client.sensors["temp"].status is Status.UNREACHABLE and client.sensors["temp"].value == 30.25


async def test_interface_changed_and_retyped_sensor(aio_device: AioDevice) -> None:
    client = make_client(port_of(aio_device))
    changes_seen: list[ModelChanges] = []
    client.set_state_callback(lambda s, c: changes_seen.append(c) if c is not None else None)
    await client.connect()
    try:
        await client.until_synced(TIMEOUT)
        old_temp = client.sensors["temp"]
        notes: list[object] = []
        old_temp.attach(lambda sensor, reading: notes.append((sensor.type.name, reading.value)))
        await client.request_ok("add", "extra", "float")
        await wait_until(lambda: "extra" in client.sensors and client.synced)
        assert changes_seen[-1].sensors.added == {"extra"} and not changes_seen[-1].sensors.removed
        # Retype 'temp' from float to integer under the same name.
        await client.request_ok("add", "temp", "integer")
        await wait_until(lambda: client.sensors["temp"].type.name == "integer" and client.synced)
        assert changes_seen[-1].sensors.added == {"temp"} == changes_seen[-1].sensors.removed
        new_temp = client.sensors["temp"]
        assert new_temp is not old_temp
        aio_device.sensors["temp"].value = 12
        await wait_until(lambda: ("integer", 12) in notes)  # observers moved to the new object
        assert new_temp.value == 12
    finally:
        await client.aclose()


async def test_strategies_persist_across_reconnect(aio_device: AioDevice) -> None:
    port = port_of(aio_device)
    client = make_client(port)
    await client.connect()
    try:
        await client.until_synced(TIMEOUT)
        await client.set_sampling("count", "period", 0.5)
        reply, _ = await client.simple_request("sensor-sampling", "count")
        assert reply.arguments == (b"ok", b"count", b"period", b"0.5")
        await aio_device.stop()
        await client.until_not_synced(TIMEOUT)
        assert client.sensors["count"].status is Status.UNREACHABLE
        restarted = AioDevice(port)  # the device comes back on the same port
        await restarted.start()
        try:
            await client.until_synced(TIMEOUT)
            reply, _ = await client.simple_request("sensor-sampling", "count")
            assert reply.arguments == (b"ok", b"count", b"period", b"0.5")
            assert client.sensors["count"].status is Status.NOMINAL
        finally:
            await client.aclose()
            await restarted.stop()
    finally:
        await client.aclose()


# --------------------------------------------------------------------- scripted faults


@pytest.fixture
async def scripted():
    srv = ScriptedServer()
    srv.add_sensor("a.float", value=b"2.5")
    srv.add_sensor("b.int", type="integer", value=b"3", params=(b"0", b"10"))
    srv.add_sensor("c.disc", type="discrete", value=b"on", params=(b"on", b"off"))
    await srv.start()
    yield srv
    await srv.stop()


async def test_no_bulk_flag_subscribes_each_sensor_concurrently(scripted: ScriptedServer) -> None:
    client = make_client(scripted.port)
    await client.connect()
    try:
        await client.until_synced(TIMEOUT)
        assert scripted.count("sensor-sampling") == 3
        assert client.sensors["b.int"].value == 3 and client.sensors["b.int"].params == (0, 10)
        assert client.sensors["c.disc"].value == "on" and client.sensors["c.disc"].params == ("on", "off")
        # Every request carried a mid (flag I).
        assert all(m.mid is not None for m in scripted.received)
    finally:
        await client.aclose()


async def test_default_sampling_none_subscribes_nothing(scripted: ScriptedServer) -> None:
    client = make_client(scripted.port, default_sampling=None)
    await client.connect()
    try:
        await client.until_synced(TIMEOUT)
        assert scripted.count("sensor-sampling") == 0
        assert client.sensors["a.float"].status is Status.UNKNOWN and client.sensors["a.float"].timestamp == 0.0
    finally:
        await client.aclose()


async def test_failing_sensor_list_backs_off_without_hot_loop(scripted: ScriptedServer) -> None:
    async def fail(conn: ScriptedConnection, msg: Message) -> None:
        conn.send(Message.reply_to_request(msg, "fail", "database on fire"))

    scripted.handlers["sensor-list"] = fail
    client = make_client(scripted.port)
    await client.connect()
    try:
        await wait_until(lambda: scripted.count("sensor-list") >= 4)
        assert not client.synced and "database on fire" in str(client.last_error)
        times = [t for m, t in zip(scripted.received, scripted.received_at) if m.name == "sensor-list"]
        gaps = [b - a for a, b in zip(times, times[1:])]
        # resync_delay is 0.05 s doubling, no randomness: each wait is at least the backoff.
        for gap, minimum in zip(gaps, (0.05, 0.1, 0.2)):
            assert gap >= minimum * 0.9
        del scripted.handlers["sensor-list"]
        await client.until_synced(TIMEOUT)
        assert client.resync_delay.base == client.resync_delay.delay_initial  # the backoff reset
    finally:
        await client.aclose()


async def test_server_without_version_connect_is_taken_as_v4() -> None:
    srv = ScriptedServer(protocol=None)
    srv.add_sensor("t", type="timestamp", value=b"1700000000500")
    await srv.start()
    client = make_client(srv.port)
    client.negotiation_timeout = 0.2
    await client.connect()
    try:
        await client.until_synced(TIMEOUT)
        assert str(client.protocol_flags) == "4.0"
        assert all(m.mid is None for m in srv.received)  # no mids without flag I
        assert client.sensors["t"].value == pytest.approx(1700000000.5)  # v4 ms -> s
    finally:
        await client.aclose()
        await srv.stop()


async def test_v4_device_detected_from_version_inform() -> None:
    srv = ScriptedServer(v4=True)
    srv.add_sensor("x", value=b"4.5")
    await srv.start()
    client = make_client(srv.port)
    client.negotiation_timeout = 30.0  # must not be needed
    await client.connect()
    try:
        await client.until_synced(TIMEOUT)
        assert client.protocol_flags is not None and client.protocol_flags.major == 4
        assert client.sensors["x"].value == 4.5
        ts = client.sensors["x"].timestamp
        assert 1e9 < ts < 1e10  # ms converted to seconds
        await client.set_sampling("x", "period", 0.25)
        assert srv.received[-1].arguments == (b"x", b"period", b"250")  # v4 period in ms
    finally:
        await client.aclose()
        await srv.stop()


async def test_preset_protocol_flags_skips_negotiation() -> None:
    srv = ScriptedServer(protocol=None)
    srv.add_sensor("x")
    await srv.start()
    client = make_client(srv.port, preset_protocol="5.0-IM")
    client.negotiation_timeout = 30.0
    await client.connect()
    try:
        await client.until_synced(TIMEOUT)
        assert all(m.mid is not None for m in srv.received)
    finally:
        await client.aclose()
        await srv.stop()


async def test_garbage_lines_do_not_break_the_client(scripted: ScriptedServer) -> None:
    scripted.connect_lines = [b"garbage line\n", b"#ok-inform \\q\n", b"\x00\x01\x02\n", b"!stray-reply ok\n"]
    client = make_client(scripted.port, max_line_length=1024)
    await client.connect()
    try:
        await client.until_synced(TIMEOUT)
        conn = scripted.connections[0]
        conn.send_raw(b"#sensor-status not-a-number 1 a.float nominal 1.0\n")
        conn.send_raw(b"x" * 5000 + b"\n")  # over-long line
        conn.send_raw(b"#sensor-status 1700000000.0 1 a.float bogus-status 1.0\n")
        conn.update("a.float", b"9.75")
        await wait_until(lambda: client.sensors["a.float"].value == 9.75)
        assert client.synced
    finally:
        await client.aclose()


async def test_dropped_connection_during_request_raises_and_reconnects(scripted: ScriptedServer) -> None:
    async def drop(conn: ScriptedConnection, msg: Message) -> None:
        conn.close()

    scripted.handlers["drop"] = drop
    client = make_client(scripted.port)
    await client.connect()
    try:
        await client.until_synced(TIMEOUT)
        with pytest.raises(KatclientConnectionError):
            await client.simple_request("drop")
        await client.until_not_synced(TIMEOUT)
        await client.until_synced(TIMEOUT)
        reply, _ = await client.simple_request("watchdog")
        assert reply.reply_ok()
    finally:
        await client.aclose()


async def test_timeout_raises_and_late_reply_is_dropped(scripted: ScriptedServer) -> None:
    release = asyncio.Event()

    async def slow(conn: ScriptedConnection, msg: Message) -> None:
        await release.wait()
        conn.send(Message.reply_to_request(msg, "ok", "late"))

    scripted.handlers["slow"] = slow
    client = make_client(scripted.port)
    await client.connect()
    try:
        await client.until_synced(TIMEOUT)
        with pytest.raises(KatclientTimeoutError, match="slow"):
            await client.simple_request("slow", timeout=0.05)
        release.set()
        reply, _ = await client.simple_request("watchdog")
        assert reply.arguments == (b"ok",)
        assert client.synced
    finally:
        await client.aclose()


async def test_server_restart_mid_sync(scripted: ScriptedServer) -> None:
    dropped = []

    async def drop_first(conn: ScriptedConnection, msg: Message) -> None:
        if not dropped:
            dropped.append(msg)
            conn.close()
        else:
            conn.default(msg)

    scripted.handlers["sensor-list"] = drop_first
    client = make_client(scripted.port)
    await client.connect()
    try:
        await client.until_synced(TIMEOUT)
        assert dropped and client.sensors["a.float"].value == 2.5
    finally:
        await client.aclose()


async def test_interface_changed_during_inspection_collapses(scripted: ScriptedServer) -> None:
    first = []

    async def list_and_announce(conn: ScriptedConnection, msg: Message) -> None:
        if not first:
            first.append(msg)
            scripted.add_sensor("late.one", value=b"1.0")
            for _ in range(3):
                conn.send(Message.inform("interface-changed", "sensor-list"))
        conn.default(msg)

    scripted.handlers["sensor-list"] = list_and_announce
    client = make_client(scripted.port)
    await client.connect()
    try:
        await wait_until(lambda: client.synced and "late.one" in client.sensors)
        assert scripted.count("sensor-list") == 2  # three informs, one re-inspection
    finally:
        await client.aclose()


@pytest.mark.parametrize("where", ["disconnected", "negotiating", "mid-sync", "synced"])
async def test_stop_in_every_state_leaks_nothing(where: str) -> None:
    srv = ScriptedServer(protocol=None if where == "negotiating" else "5.0-IM")
    srv.add_sensor("x")
    hang = asyncio.Event()

    async def never(conn: ScriptedConnection, msg: Message) -> None:
        await hang.wait()

    if where == "mid-sync":
        srv.handlers["sensor-list"] = never
    port = await srv.start()
    if where == "disconnected":
        await srv.stop()
    tasks_before = asyncio.all_tasks()
    client = make_client(port)
    client.negotiation_timeout = 60.0
    await client.connect()
    if where == "disconnected":
        await wait_until(lambda: client.last_error is not None)
    elif where == "synced":
        await client.until_synced(TIMEOUT)
    else:
        await srv.connected.wait()
        await wait_until(lambda: client.connected)
    client.stop()
    await client.until_stopped(TIMEOUT)
    assert client.state == DISCONNECTED and not client.is_connected()
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - tasks_before - {asyncio.current_task()} == set()
    ref = weakref.ref(client)
    client = None  # the only strong reference
    gc.collect()
    assert ref() is None
    hang.set()
    await srv.stop()


async def test_states_are_always_valid(scripted: ScriptedServer) -> None:
    client = make_client(scripted.port)
    seen = []
    client.set_state_callback(lambda s, c: seen.append(s))
    await client.connect()
    await client.until_synced(TIMEOUT)
    scripted.connections[0].send(Message.inform("interface-changed"))
    await client.until_not_synced(TIMEOUT)
    await client.until_synced(TIMEOUT)
    scripted.connections[0].close()
    await client.until_not_synced(TIMEOUT)
    await client.until_synced(TIMEOUT)
    await client.aclose()
    assert set(seen) <= VALID_STATES and seen[-1] == DISCONNECTED


async def test_coroutine_state_callback_may_await_the_client(scripted: ScriptedServer) -> None:
    client = make_client(scripted.port)
    got = []

    async def cb(state, changes):  # type: ignore[no-untyped-def]
        if state == CONNECTED and not got:
            got.append(await client.future_get_sensor("a.float"))

    client.set_state_callback(cb)
    await client.connect()
    try:
        await client.until_synced(TIMEOUT)
        await wait_until(lambda: bool(got))
        assert got[0] is client.sensors["a.float"]
        assert await client.future_get_sensor("nope") is None
        assert await client.future_check_request("watchdog")
    finally:
        await client.aclose()


async def test_future_get_sensor_finds_a_sensor_added_without_interface_changed(scripted: ScriptedServer) -> None:
    client = make_client(scripted.port)
    await client.connect()
    try:
        await client.until_synced(TIMEOUT)
        scripted.add_sensor("quiet.add", value=b"8.0")
        sensor = await client.future_get_sensor("quiet.add")
        assert sensor is not None and sensor.value == 8.0
    finally:
        await client.aclose()


def test_parse_target() -> None:
    assert parse_target("katcp://host:7147") == ("host", 7147)
    assert parse_target("127.0.0.1:1") == ("127.0.0.1", 1)
    assert parse_target("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError):
        parse_target("scrutiny://h:1")
    with pytest.raises(ValueError):
        parse_target("host")
