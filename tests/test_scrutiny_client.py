"""ScrutinyClient against the fake Scrutiny server: every command, two-phase operations, errors,
events, reconnection and clean shutdown.  Sources: protocols/scrutiny.md sections 1.2-1.6."""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import AsyncIterator

import async_solipsism
import pytest
from tornado.iostream import IOStream
from tornado.tcpserver import TCPServer
from tornado.testing import bind_unused_port

from fake_servers.scrutiny_device import DEMO_FIRMWARE_ID, TEST_FIRMWARE_ID, make_test_sfd
from fake_servers.scrutiny_server import FakeScrutinyServer
from katclient.client.backoff import ExponentialRandomBackoff
from katclient.devices.scrutiny import (
    AxisDef,
    DataloggerState,
    DataloggerStateChanged,
    DataloggingConfig,
    DataloggingListChanged,
    DeviceGone,
    DeviceReady,
    LoggedSignal,
    ScrutinyBatchWriteError,
    ScrutinyClient,
    ScrutinyError,
    ServerConnected,
    ServerDisconnected,
    SFDLoaded,
    SFDUnloaded,
    StatusUpdated,
    SubscriptionsRestored,
    TriggerCondition,
    WatchableOperand,
    WatchableType,
    XAxisType,
    encode_message,
)
from katclient.errors import InvalidUsage, KatclientConnectionError, KatclientTimeoutError, OperationFailure
from tests.test_scrutiny_helpers import Recorder, record, wait_until

COUNTER = "/static/main.cpp/counter"
ENABLE = "/static/main.cpp/counter_enable"
FREQUENCY = "/global/sinewave_generator/frequency"


def fast_backoff() -> ExponentialRandomBackoff:
    return ExponentialRandomBackoff(0.02, 0.2, 2.0, 0.0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeScrutinyServer]:
    server = FakeScrutinyServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(fake: FakeScrutinyServer) -> AsyncIterator[ScrutinyClient]:
    c = ScrutinyClient(fake.host, fake.port, backoff=fast_backoff())
    await c.connect(5)
    yield c
    await c.close()


# ---------------------------------------------------------------------------------------------
# connection, status, device


async def test_connect_gives_status_welcome_origin_and_events(fake: FakeScrutinyServer) -> None:
    c = ScrutinyClient(fake.host, fake.port)
    events, _ = record(c)
    await c.connect(5)
    try:
        assert c.connected
        assert c.server_time_zero == pytest.approx(fake.time_zero)
        status = c.status
        assert status is not None and status.device_ready
        assert status.device_session_id == fake.session_id
        assert status.sfd_firmware_id == DEMO_FIRMWARE_ID
        assert status.link.demo_mode
        await events.wait_for(lambda e: isinstance(e, SFDLoaded))
        kinds = [type(e) for e in events.items if not isinstance(e, StatusUpdated)]
        assert kinds[:3] == [ServerConnected, DeviceReady, SFDLoaded]
        assert await c.echo("hello") == "hello"
        fresh = await c.get_server_status()
        assert fresh.datalogging.state is DataloggerState.STANDBY
    finally:
        await c.close()
    assert isinstance(events.items[-1], ServerDisconnected)


async def test_device_info(client: ScrutinyClient, fake: FakeScrutinyServer) -> None:
    info = await client.get_device_info()
    assert info is not None
    assert info.display_name == "EmulatedDevice" and info.session_id == fake.session_id
    assert info.device_id == DEMO_FIRMWARE_ID
    assert [(r.start, r.size) for r in info.forbidden_memory_regions] == [(0, 4096), (8192, 2**32 - 8192)]
    assert [(r.start, r.end) for r in info.readonly_memory_regions] == [(0x1800, 0x1FFF)]
    assert info.datalogging_capabilities is not None
    assert info.datalogging_capabilities.sampling_rates[0].name == "Python thread"


async def test_status_is_polled(fake: FakeScrutinyServer) -> None:
    c = ScrutinyClient(fake.host, fake.port, status_interval=0.05)
    events, _ = record(c)
    await c.connect(5)
    try:
        await events.wait_count(lambda e: isinstance(e, StatusUpdated), 4)
    finally:
        await c.close()


# ---------------------------------------------------------------------------------------------
# watchables


async def test_count_list_filters_and_info(client: ScrutinyClient) -> None:
    count = await client.get_watchable_count()
    assert (count.var, count.alias, count.rpv, count.var_factory) == (5, 6, 2, 0)
    everything = await client.list_watchables()
    assert len(everything) == 13
    assert everything.paths()[:2] == ["/rpv/x1000", "/rpv/x2000"]  # RPVs first, then aliases, then vars
    chunked = await client.list_watchables(max_per_response=3)
    assert chunked == everything
    only_vars = await client.list_watchables(types=[WatchableType.VAR], name_patterns=["/global/*"])
    assert sorted(only_vars.paths()) == [
        "/global/device/uptime",
        "/global/sinewave_generator/frequency",
        "/global/sinewave_generator/output",
    ]
    info = await client.get_watchable_info([COUNTER, "/RPV1000 with gain 1000", "/rpv/x2000"])
    assert info[COUNTER].address == 0x1000 and info[COUNTER].dtype == "float32"
    alias = info["/RPV1000 with gain 1000"]
    assert alias.gain == 1000.0 and alias.target == "/rpv/x1000" and alias.target_type is WatchableType.RPV
    assert info["/rpv/x2000"].rpvid == 0x2000 and info["/rpv/x2000"].value_range() == (-(2**31), 2**31 - 1)
    with pytest.raises(ScrutinyError) as err:
        await client.get_watchable_info([COUNTER, "/nope"])
    assert err.value.msg == "Unknown watchable : /nope" and err.value.request_cmd == "get_watchable_info"
    assert isinstance(err.value, OperationFailure)
    with pytest.raises(ScrutinyError, match='Unsupported type filter :"x"'):
        await client.request("get_watchable_list", {"filter": {"type": ["x"]}})


async def test_subscribe_delivers_values_with_epoch_timestamps(client: ScrutinyClient) -> None:
    _, values = record(client)
    infos = await client.subscribe([COUNTER, "/rpv/x1000", "/Sine Wave"])
    assert set(infos) == {COUNTER, "/rpv/x1000", "/Sine Wave"}
    var = await values.wait_for(lambda v: v.path == COUNTER)
    rpv = await values.wait_for(lambda v: v.path == "/rpv/x1000")
    assert var.server_id == infos[COUNTER].server_id
    assert var.valid and var.raw is not None and struct.unpack("<f", var.raw)[0] == var.value
    assert rpv.raw is None and 0.0 <= rpv.value < 1.0  # no "d" for RPVs
    assert abs(var.timestamp - time.time()) < 60  # welcome origin + t/1e6 is an epoch time
    assert client.latest_value(COUNTER) is not None
    assert client.subscriptions[COUNTER].active


async def test_subscribe_is_all_or_nothing(client: ScrutinyClient) -> None:
    with pytest.raises(ScrutinyError, match="Unknown watchable : /nope"):
        await client.subscribe([COUNTER, "/nope"])
    assert client.subscriptions == {}
    with pytest.raises(InvalidUsage):
        await client.subscribe([COUNTER], rate=0)


async def test_unsubscribe_and_rates(client: ScrutinyClient) -> None:
    _, values = record(client)
    await client.subscribe([COUNTER, "/Up Time"], rate=5)
    rates = await client.set_update_rate([COUNTER], 20.0)
    assert rates == {COUNTER: 20.0}
    assert client.subscriptions[COUNTER].rate == 20.0
    with pytest.raises(InvalidUsage):
        await client.set_update_rate(["/not/subscribed"], 1.0)
    await values.wait_for(lambda v: v.path == "/Up Time")
    await client.unsubscribe([COUNTER, "/Up Time", "/never/subscribed"])
    assert client.subscriptions == {}
    mark = len(values.items)
    await client.subscribe([ENABLE])
    await values.wait_for(lambda v: v.path == ENABLE, start=mark)
    assert all(v.path == ENABLE for v in values.items[mark:])


async def test_write_enables_the_demo_counter(client: ScrutinyClient) -> None:
    _, values = record(client)
    await client.subscribe([COUNTER])
    first = await values.wait_for(lambda v: v.path == COUNTER)
    assert first.value == 0.0
    await client.write(ENABLE, True)
    advanced = await values.wait_for(lambda v: v.path == COUNTER and v.value > 0.5)
    assert advanced.value > first.value
    await client.write("/Counter/Enable", "false")  # alias, string value parsed by the server
    stopped = await client.read_value(ENABLE)
    assert stopped.value is False


async def test_write_errors_carry_the_server_message(client: ScrutinyClient) -> None:
    with pytest.raises(ScrutinyError) as err:
        await client.write("/nope", 1)
    assert err.value.msg == "Unknown watchable path /nope"
    with pytest.raises(ScrutinyError, match="Invalid value"):
        await client.write(FREQUENCY, "abc")
    with pytest.raises(ScrutinyError, match="Invalid value"):
        await client.write(FREQUENCY, math.inf)
    with pytest.raises(InvalidUsage):
        await client.write(FREQUENCY, [1])  # type: ignore[arg-type]
    await client.write(FREQUENCY, "2*0.5+0x1")
    assert struct.unpack("<f", await client.read_memory(0x1010, 4))[0] == 2.0


async def test_write_batch_confirms_each_write(client: ScrutinyClient) -> None:
    results = await client.write_batch([(FREQUENCY, 3.0), ("/rpv/x2000", 77), (FREQUENCY, 4.5)])
    assert [r.success for r in results] == [True, True, True]
    assert all(r.timestamp is not None and abs(r.timestamp - time.time()) < 60 for r in results)
    assert struct.unpack("<f", await client.read_memory(0x1010, 4))[0] == 4.5  # in order
    assert await client.write_batch({}) == []
    await client.load_sfd(TEST_FIRMWARE_ID)
    with pytest.raises(ScrutinyBatchWriteError) as err:
        await client.write_batch({"/app/gain": 1.5, "/app/calibration": 2.0})  # read-only region
    assert [(r.path, r.success, r.failure_reason) for r in err.value.results] == [
        ("/app/gain", True, ""),
        ("/app/calibration", False, "Not allowed"),
    ]
    with pytest.raises(ScrutinyError, match="Not allowed"):
        await client.write("/app/protected", 1)
    with pytest.raises(ScrutinyError, match="Unknown watchable : /nope"):
        await client.write_batch({"/nope": 1})


async def test_write_batch_survives_stale_ids(client: ScrutinyClient) -> None:
    await client.get_watchable_info([FREQUENCY])  # caches the id
    await client.load_sfd(DEMO_FIRMWARE_ID)  # reload: every var/alias gets a new id
    results = await client.write_batch({FREQUENCY: 1.25})
    assert results[0].success


async def test_write_raw(client: ScrutinyClient) -> None:
    await client.write_raw(FREQUENCY, struct.pack("<f", 0.5))
    assert await client.read_memory(0x1010, 4) == struct.pack("<f", 0.5)
    with pytest.raises(ScrutinyError, match="No memory address tied to watchable /rpv/x1000"):
        await client.write_raw("/rpv/x1000", b"\x00")


# ---------------------------------------------------------------------------------------------
# memory and user commands


async def test_memory_read_write_and_protected_regions(client: ScrutinyClient) -> None:
    await client.write_memory(0x1200, b"\x01\x02\x03")
    assert await client.read_memory(0x1200, 3) == b"\x01\x02\x03"
    with pytest.raises(ScrutinyError) as err:
        await client.read_memory(0, 4)
    assert err.value.msg == "Forbidden region" and err.value.request_cmd == "read_memory"
    with pytest.raises(ScrutinyError, match="Size too big"):
        await client.read_memory(0x1000, 16384)
    with pytest.raises(ScrutinyError, match="Read only"):
        await client.write_memory(0x1800, b"\x00")
    with pytest.raises(ScrutinyError, match="Forbidden"):
        await client.write_memory(0x2000, b"\x00")
    with pytest.raises(InvalidUsage):
        await client.read_memory(-1, 4)


async def test_user_commands(client: ScrutinyClient) -> None:
    answer = await client.user_command(0)
    assert answer.subfunction == 0 and answer.data == b"\xaa" * 32
    assert (await client.user_command(1, b"\x01\x02")).data == b"\x01\x02"
    with pytest.raises(ScrutinyError, match="Device responded with code FailureToProceed"):
        await client.user_command(7)
    with pytest.raises(InvalidUsage):
        await client.user_command(256)
    with pytest.raises(ScrutinyError, match="Invalid subfunction"):
        await client.request("user_command", {"subfunction": 300})


# ---------------------------------------------------------------------------------------------
# SFDs


async def test_sfd_load_changes_watchables_and_restores_subscriptions(client: ScrutinyClient) -> None:
    events, values = record(client)
    installed = await client.get_installed_sfds()
    assert list(installed) == [TEST_FIRMWARE_ID]
    assert installed[TEST_FIRMWARE_ID].metadata is not None
    loaded = await client.get_loaded_sfd()
    assert loaded is not None and loaded.firmware_id == DEMO_FIRMWARE_ID and loaded.filesize is None
    await client.subscribe([COUNTER, "/rpv/x2000"])
    rpv_id = client.subscriptions["/rpv/x2000"].server_id

    status = await client.load_sfd(TEST_FIRMWARE_ID)
    assert status.sfd_firmware_id == TEST_FIRMWARE_ID
    await events.wait_for(lambda e: e == SFDLoaded(TEST_FIRMWARE_ID))
    assert SFDUnloaded(DEMO_FIRMWARE_ID) in events.items
    assert not client.subscriptions[COUNTER].active  # its var is gone with the demo SFD
    assert client.subscriptions["/rpv/x2000"].server_id == rpv_id  # RPVs do not depend on the SFD
    paths = (await client.list_watchables()).paths()
    assert "/app/mode" in paths and COUNTER not in paths
    info = (await client.get_watchable_info(["/app/mode"]))["/app/mode"]
    assert info.enum is not None and info.enum.values == {"IDLE": 0, "RUN": 1, "FAULT": 2}
    await client.subscribe(["/app/protected", "/app/flags/ready"])
    protected = await values.wait_for(lambda v: v.path == "/app/protected")
    assert protected.value is None and protected.invalid_reason == "forbidden" and not protected.valid
    await client.write("/app/flags/ready", 9)  # clamped to the 3-bit field
    assert (await client.read_value("/app/flags/ready")).value == 7

    mark = len(events.items)
    await client.load_sfd(DEMO_FIRMWARE_ID)
    restored = await events.wait_for(
        lambda e: isinstance(e, SubscriptionsRestored) and COUNTER in e.restored, start=mark
    )
    assert set(restored.missing) >= {"/app/protected", "/app/flags/ready"}
    mark_v = len(values.items)
    await values.wait_for(lambda v: v.path == COUNTER, start=mark_v)


async def test_sfd_reload_of_the_same_sfd_gets_new_ids(client: ScrutinyClient) -> None:
    events, values = record(client)
    await client.subscribe([COUNTER])
    old_id = client.subscriptions[COUNTER].server_id
    await client.load_sfd(DEMO_FIRMWARE_ID)
    await events.wait_for(lambda e: isinstance(e, SubscriptionsRestored) and COUNTER in e.restored)
    new_id = client.subscriptions[COUNTER].server_id
    assert new_id is not None and new_id != old_id
    mark = len(values.items)
    assert (await values.wait_for(lambda v: v.path == COUNTER, start=mark)).server_id == new_id


async def test_sfd_install_download_uninstall(client: ScrutinyClient, fake: FakeScrutinyServer) -> None:
    sfd = make_test_sfd()
    sfd.firmware_id = "fedcba9876543210fedcba9876543210"
    data = sfd.to_bytes()
    info = await client.install_sfd(data)
    assert info.firmware_id == sfd.firmware_id and info.filesize == len(data)
    assert info.metadata is not None and info.metadata.project_name == "katclient test firmware"
    assert sfd.firmware_id in await client.get_installed_sfds()
    assert await client.download_sfd(sfd.firmware_id) == data
    await client.load_sfd(sfd.firmware_id)
    events, _ = record(client)
    await client.uninstall_sfds([sfd.firmware_id])
    assert sfd.firmware_id not in await client.get_installed_sfds()
    # uninstalling the loaded SFD unloads it; autoload then brings the device's SFD back
    await events.wait_for(lambda e: e == SFDLoaded(DEMO_FIRMWARE_ID))
    with pytest.raises(ScrutinyError, match=f"Firmware ID {sfd.firmware_id} is not installed"):
        await client.uninstall_sfds([sfd.firmware_id])
    with pytest.raises(ScrutinyError, match="No firmware with ID"):
        await client.download_sfd(sfd.firmware_id)
    with pytest.raises(InvalidUsage):
        await client.install_sfd(b"not an sfd")


async def test_load_unknown_sfd_times_out(client: ScrutinyClient) -> None:
    with pytest.raises(KatclientTimeoutError, match="not loaded"):
        await client.load_sfd("00000000000000000000000000000000", timeout=0.3)
    with pytest.raises(InvalidUsage):
        await client.load_sfd("xyz")
    assert client.connected  # the silent server is not an error


# ---------------------------------------------------------------------------------------------
# datalogging


async def test_datalogging_acquire_list_read_update_delete(client: ScrutinyClient) -> None:
    events, _ = record(client)
    config = DataloggingConfig(
        signals=[LoggedSignal("/Sine Wave", 0, "sine"), LoggedSignal("/rpv/x2000", 1)],
        yaxes=[AxisDef(0, "Y1"), AxisDef(1, "Y2")],
        condition=TriggerCondition.GREATER_THAN,
        operands=[WatchableOperand("/Up Time"), -1.0],
        x_axis_type=XAxisType.MEASURED_TIME,
        name="test-acq",
    )
    request = await client.start_datalog(config)
    reference = await request.wait(10)
    assert request.done()
    await events.wait_for(lambda e: isinstance(e, DataloggingListChanged) and e.action == "new")
    assert any(
        isinstance(e, DataloggerStateChanged) and e.state is DataloggerState.ACQUIRING for e in events.items
    )
    listed = await client.list_acquisitions()
    assert [a.reference_id for a in listed] == [reference]
    assert listed[0].name == "test-acq" and listed[0].firmware_id == DEMO_FIRMWARE_ID
    acq = await client.read_acquisition(reference)
    assert acq.firmware_name == "Scrutiny Demo Device V0.16.0"
    assert [s.name for s in acq.signals] == ["sine", "unnamed"]
    assert [s.axis_id for s in acq.signals] == [0, 1]
    assert acq.xdata.name == "Time (measured)" and len(acq.xdata.data) == len(acq.signals[0].data) > 10
    assert set(acq.signals[1].data) <= {1.0, -1.0}
    assert acq.xdata.data[0] == 0.0 and acq.xdata.data == tuple(sorted(acq.xdata.data))
    await client.update_acquisition(reference, name="renamed", axis_names={1: "flip"})
    acq = await client.read_acquisition(reference)
    assert acq.name == "renamed" and [a.name for a in acq.yaxes] == ["Y1", "flip"]
    assert (await client.list_acquisitions(reference_id=reference))[0].name == "renamed"
    second = await client.acquire(DataloggingConfig(signals=[LoggedSignal(COUNTER)]), timeout=10)
    assert [a.reference_id for a in await client.list_acquisitions()] == [second, reference]  # newest first
    assert await client.list_acquisitions(count=1) == (await client.list_acquisitions())[:1]
    await client.delete_acquisition(reference)
    assert [a.reference_id for a in await client.list_acquisitions()] == [second]
    await client.delete_all_acquisitions()
    assert await client.list_acquisitions() == []
    with pytest.raises(ScrutinyError, match="Failed to read acquisition. No acquisition identified by ID"):
        await client.read_acquisition(reference)


async def test_datalogging_refusals(client: ScrutinyClient) -> None:
    with pytest.raises(ScrutinyError, match="Cannot find watchable with given path : /nope"):
        await client.start_datalog(DataloggingConfig(signals=[LoggedSignal("/nope")]))
    with pytest.raises(ScrutinyError, match="Cannot use ideal time on variable frequency rate"):
        await client.start_datalog(
            DataloggingConfig(signals=[LoggedSignal(COUNTER)], x_axis_type=XAxisType.IDEAL_TIME)
        )
    with pytest.raises(ScrutinyError, match="Given sampling_rate_id is not supported"):
        await client.start_datalog(DataloggingConfig(signals=[LoggedSignal(COUNTER)], sampling_rate_id=5))


# ---------------------------------------------------------------------------------------------
# server-side settings, device sessions


async def test_stats_throttling_and_link(client: ScrutinyClient) -> None:
    stats = await client.get_server_stats()
    assert stats.client_count == 1 and stats.device_session_count == 1 and stats.msg_received >= 1
    assert await client.set_throttling(50) == (True, 50.0)
    assert await client.set_throttling(None) == (False, None)
    with pytest.raises(ScrutinyError, match="Unknown link type tcp"):
        await client.set_link_config("tcp", {})


async def test_device_session_change_restores_rpv_subscriptions(client: ScrutinyClient) -> None:
    events, values = record(client)
    await client.subscribe(["/rpv/x2000", "/Alias To RPV2000", COUNTER])
    old_session = client.status.device_session_id if client.status else None
    assert await client.set_demo_mode(False) is False
    await events.wait_for(lambda e: e == DeviceGone(str(old_session)))
    await events.wait_for(lambda e: e == SFDUnloaded(DEMO_FIRMWARE_ID))
    assert await client.get_device_info() is None
    assert not any(s.active for s in client.subscriptions.values())
    with pytest.raises(ScrutinyError, match="The connection to the device is not fully ready"):
        await client.user_command(0)
    mark = len(events.items)
    assert await client.set_demo_mode(True) is True
    ready = await events.wait_for(lambda e: isinstance(e, DeviceReady), start=mark)
    assert ready.session_id != old_session
    await wait_until(lambda: all(s.active for s in client.subscriptions.values()))
    mark_v = len(values.items)
    await values.wait_for(lambda v: v.path == "/Alias To RPV2000", start=mark_v)


async def test_server_error_reply_and_unsolicited_garbage(client: ScrutinyClient) -> None:
    with pytest.raises(ScrutinyError) as err:
        await client.request("no_such_cmd")
    assert err.value.msg == "Unsupported command no_such_cmd" and err.value.request_cmd == "no_such_cmd"
    assert err.value.reply is not None


# ---------------------------------------------------------------------------------------------
# timeouts, disconnection, reconnection, shutdown


async def test_request_timeout(client: ScrutinyClient) -> None:
    # load_sfd never gets a reply (scrutiny.md 1.2), so a generic request on it must time out
    with pytest.raises(KatclientTimeoutError):
        await client.request("load_sfd", {"firmware_id": "1" * 32}, timeout=0.2)
    assert client.connected
    assert await client.echo("still fine") == "still fine"


async def test_requests_in_flight_fail_when_the_connection_drops(fake: FakeScrutinyServer) -> None:
    c = ScrutinyClient(fake.host, fake.port, reconnect=False)
    await c.connect(5)
    try:
        pending = asyncio.ensure_future(c.request("load_sfd", {"firmware_id": "1" * 32}, timeout=None))
        await asyncio.sleep(0)
        await fake.stop()
        with pytest.raises(KatclientConnectionError):
            await pending
        with pytest.raises(KatclientConnectionError):
            await c.echo("x")
        with pytest.raises(KatclientConnectionError):
            await c.until_connected(1)
    finally:
        await c.close()


async def test_reconnects_after_restart_and_resubscribes(fake: FakeScrutinyServer) -> None:
    c = ScrutinyClient(fake.host, fake.port, backoff=fast_backoff())
    events, values = record(c)
    await c.connect(5)
    try:
        await c.subscribe([COUNTER, "/rpv/x1000"], rate=20)
        old_session = fake.session_id
        await fake.stop()
        await events.wait_for(lambda e: isinstance(e, ServerDisconnected))
        assert events.count(lambda e: isinstance(e, DeviceGone)) == 1
        assert not c.connected and c.status is None
        mark = len(events.items)
        host, port = await fake.start()
        assert port == c.port
        await events.wait_for(lambda e: isinstance(e, ServerConnected), start=mark)
        restored = await events.wait_for(lambda e: isinstance(e, SubscriptionsRestored), start=mark)
        assert set(restored.restored) == {COUNTER, "/rpv/x1000"} and restored.missing == ()
        assert c.status is not None and c.status.device_session_id == fake.session_id != old_session
        assert c.subscriptions[COUNTER].rate == 20
        mark_v = len(values.items)
        await values.wait_for(lambda v: v.path == "/rpv/x1000", start=mark_v)
        assert c.stats.connects == 2
    finally:
        await c.close()


async def test_connection_refused_without_reconnect() -> None:
    sock, port = bind_unused_port()
    sock.close()  # nothing listens there now
    c = ScrutinyClient("127.0.0.1", port, reconnect=False, connect_timeout=2)
    with pytest.raises(KatclientConnectionError):
        await c.connect(5)
    with pytest.raises(KatclientConnectionError):
        await c.echo("x")
    await c.close()


async def test_close_leaves_no_task_or_socket(fake: FakeScrutinyServer) -> None:
    before = asyncio.all_tasks()
    c = ScrutinyClient(fake.host, fake.port)
    await c.connect(5)
    await c.subscribe([COUNTER])
    assert len(asyncio.all_tasks() - before) >= 3  # runner, reader-side tasks
    await c.close()
    assert asyncio.all_tasks() - before == set()
    assert not c.connected
    await wait_until(lambda: fake.client_count == 0)
    with pytest.raises(InvalidUsage):
        c.start()
    await c.close()  # idempotent


async def test_callback_exceptions_do_not_stop_the_reader(client: ScrutinyClient) -> None:
    def bad(_: object) -> None:
        raise RuntimeError("callback bug")

    client.add_value_callback(bad)
    client.add_event_callback(bad)
    _, values = record(client)
    await client.subscribe([COUNTER])
    await values.wait_count(lambda v: v.path == COUNTER, 3)
    assert await client.echo("alive") == "alive"
    client.remove_value_callback(bad)
    client.remove_event_callback(bad)


async def test_garbage_and_bad_frames_from_the_server_are_survived() -> None:
    class Liar(TCPServer):
        async def handle_stream(self, stream: IOStream, address: object) -> None:
            bad_hash = bytearray(encode_message({"cmd": "welcome", "reqid": None}))
            bad_hash[-1] ^= 1
            stream.write(b"\x00garbage<SCRUTINY size=zz>" + bytes(bad_hash))
            stream.write(
                encode_message({"cmd": "welcome", "reqid": None, "server_time_zero_timestamp": 100.0})
            )
            stream.write(b"<SCRUTINY size=5 flags=>[1,2]")  # JSON but not an object
            stream.write(encode_message({"cmd": "inform_server_status", "reqid": None, "device_status": 5}))
            stream.write(encode_message({"cmd": "watchable_update", "reqid": None, "updates": "nope"}))
            while True:
                request = await stream.read_bytes(65536, partial=True)
                if b"echo" in request:
                    reqid = 1 if b"reqid" in request else 0
                    stream.write(encode_message({"cmd": "response_echo", "reqid": reqid, "payload": "ok"}))

    sock, port = bind_unused_port()
    liar = Liar()
    liar.add_sockets([sock])
    c = ScrutinyClient("127.0.0.1", port, status_interval=60)
    try:
        await c.connect(5, wait_status=False)
        assert c.server_time_zero == 100.0
        await wait_until(lambda: c.stats.frame_errors >= 2 and c.stats.bad_messages >= 2)
        assert c.status is None  # the malformed status was rejected, not half-applied
        assert c.connected
    finally:
        await c.close()
        liar.stop()


def test_timeouts_and_polling_on_virtual_time() -> None:
    """With a stream factory on async-solipsism socket pairs, 4 s timeouts take no real time."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fake = FakeScrutinyServer()
        await fake.start(listen=False)
        server_tasks: list[asyncio.Task[None]] = []

        async def factory(host: str, port: int) -> IOStream:
            a, b = async_solipsism.socketpair()
            server_tasks.append(loop.create_task(fake.handle_stream(IOStream(b), ("virtual", 0))))
            return IOStream(a)

        c = ScrutinyClient("virtual", 1, stream_factory=factory)
        events = Recorder()
        c.add_event_callback(events)
        await c.connect(10)
        start = loop.time()
        with pytest.raises(KatclientTimeoutError):
            await c.request("load_sfd", {"firmware_id": "2" * 32})  # default timeout: 4 s
        assert loop.time() - start == pytest.approx(4.0, abs=0.05)
        polled = events.count(lambda e: isinstance(e, StatusUpdated))
        await asyncio.sleep(10.0)
        assert events.count(lambda e: isinstance(e, StatusUpdated)) - polled == pytest.approx(5, abs=1)
        await c.close()
        await fake.stop()
        await asyncio.gather(*server_tasks)

    loop = async_solipsism.EventLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
