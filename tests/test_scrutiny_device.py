"""ScrutinyDevice: a Scrutiny Debugger server as a KATCP device (DESIGN.md section 4, "Scrutiny").

Against the fake Scrutiny server (``fake_servers.scrutiny_server``) and against the REAL server
(scrutinydebugger 0.16.0 in demo mode, started with ``tests/peers/scrutiny_server.sh`` as
``tests/test_scrutiny_real_server.py`` does; ``KATCLIENT_REAL_SCRUTINY=0`` skips those tests).
Clients: katclient's InspectingClientAsync in-process, the CLI (``katclient inspect``, ``bridge``,
``request``) as subprocesses, and aiokatcp's Client with a SensorWatcher (an independent client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiokatcp
import pytest

from fake_servers.scrutiny_device import DEMO_FIRMWARE_ID, TEST_FIRMWARE_ID, make_test_sfd
from fake_servers.scrutiny_server import FakeScrutinyServer
from katclient.client.backoff import ExponentialRandomBackoff
from katclient.client.inspecting import InspectingClientAsync
from katclient.devices.scrutiny import EnumDef, WatchableInfo, WatchableType, WatchableValue, XAxisType
from katclient.devices.scrutiny.device import (
    ScrutinyDevice,
    enum_labels,
    parse_acquire_args,
    parse_write_value,
    sensor_spec,
    update_rate,
)
from katclient.devices.scrutiny.model import TriggerCondition, WatchableOperand
from katclient.errors import InvalidUsage
from katclient.protocol import Message, Sampling, Status, Strategy
from katclient.targets import create_virtual_device

ROOT = Path(__file__).resolve().parents[1]
#: Bound on every wait for something to happen (seconds); never reached when things work.
WAIT = 10.0

COUNTER = "static.main.cpp.counter"
ENABLE = "static.main.cpp.counter-enable"
#: Demo watchables (scrutiny.md 1.6 paths) and the sensor names they get.
DEMO = {
    "/rpv/x1000": ("rpv.x1000", "float"),
    "/rpv/x2000": ("rpv.x2000", "integer"),
    "/Up Time": ("up-time", "integer"),
    "/Sine Wave": ("sine-wave", "float"),
    "/Counter/Enable": ("counter.enable", "boolean"),
    "/Counter/Value": ("counter.value", "float"),
    "/Alias To RPV2000": ("alias-to-rpv2000", "integer"),
    "/RPV1000 with gain 1000": ("rpv1000-with-gain-1000", "float"),
    "/static/main.cpp/counter": (COUNTER, "float"),
    "/static/main.cpp/counter_enable": (ENABLE, "boolean"),
    "/global/device/uptime": ("global.device.uptime", "integer"),
    "/global/sinewave_generator/output": ("global.sinewave-generator.output", "float"),
    "/global/sinewave_generator/frequency": ("global.sinewave-generator.frequency", "float"),
}
STATUS_SENSORS = {
    "server.connected", "device.comm-state", "device.session-id", "device.display-name",
    "sfd.firmware-id", "datalogger.state", "datalogger.completion",
}
REQUESTS = {
    "watchable-read", "watchable-write", "memory-read", "memory-write", "user-command", "sfd-list",
    "sfd-load", "sfd-install", "sfd-uninstall", "datalog-acquire", "datalog-list", "datalog-read",
    "datalog-delete", "device-info", "server-stats",
}

real = pytest.mark.skipif(
    os.environ.get("KATCLIENT_REAL_SCRUTINY") == "0", reason="KATCLIENT_REAL_SCRUTINY=0: no real Scrutiny server"
)


# ------------------------------------------------------------------------------------------------------
# helpers


def fast_backoff() -> ExponentialRandomBackoff:
    return ExponentialRandomBackoff(0.05, 0.2, 2.0, 0.0)


async def until(predicate: Callable[[], Any], timeout: float = WAIT) -> None:
    """Wait (bounded) until ``predicate()`` is true, checking every few milliseconds."""

    async def check() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(check(), timeout)


@contextlib.asynccontextmanager
async def running(
    host: str, port: int, sampling: tuple[Any, ...] | None = ("auto",), **options: Any
) -> AsyncIterator[tuple[ScrutinyDevice, InspectingClientAsync]]:
    """A started ScrutinyDevice for ``host:port`` and a synced InspectingClientAsync on it."""
    device = ScrutinyDevice(host, port, reconnect_delay=fast_backoff(), **options)
    await device.start()
    client = InspectingClientAsync(*device.address, default_sampling=sampling)
    try:
        await client.connect()
        await client.until_synced(WAIT)
        if sampling is None:  # still follow the device's own status sensors
            for name in sorted(STATUS_SENSORS):
                await client.set_sampling(name, "auto")
        yield device, client
    finally:
        await client.aclose()
        await device.stop()


async def ok(client: InspectingClientAsync, name: str, *args: Any) -> tuple[list[str], list[list[str]]]:
    """``(reply arguments after ok, inform arguments)`` of a request that must succeed."""
    reply, informs = await client.simple_request(name, *args)
    assert reply.reply_ok(), reply
    return [a.decode() for a in reply.arguments[1:]], [[a.decode() for a in m.arguments] for m in informs]


async def fail(client: InspectingClientAsync, name: str, *args: Any) -> str:
    """The reason of a request that must fail."""
    reply, _ = await client.simple_request(name, *args)
    assert reply.arguments[0] == b"fail", reply
    return reply.arguments[1].decode()


def nominal(client: InspectingClientAsync, name: str) -> bool:
    """Whether the client has sensor ``name`` with status nominal."""
    sensor = client.sensors.get(name)
    return sensor is not None and sensor.status is Status.NOMINAL


def recorder(client: InspectingClientAsync, name: str) -> list[Any]:
    """Every value client sensor ``name`` takes from now on."""
    values: list[Any] = []
    client.sensors[name].attach(lambda sensor, reading: values.append(reading.value))
    return values


@pytest.fixture
async def fake() -> AsyncIterator[FakeScrutinyServer]:
    server = FakeScrutinyServer()
    await server.start()
    yield server
    await server.stop()


# ------------------------------------------------------------------------------------------------------
# sans-I/O mapping helpers


def test_sensor_specs_follow_dtype_enum_bitfield_and_gain() -> None:
    float_spec = sensor_spec(WatchableInfo("/a/x", WatchableType.VAR, "float32"))
    assert (float_spec.stype, float_spec.params) == ("float", ())
    assert float_spec.description.startswith("/a/x ")
    spec = sensor_spec(WatchableInfo("/rpv/x1", WatchableType.RPV, "sint16"))
    assert (spec.stype, spec.params, spec.convert(-3), spec.convert(4.0)) == ("integer", (-32768, 32767), -3, 4)
    with pytest.raises(ValueError):
        spec.convert(1.5)
    bits = sensor_spec(WatchableInfo("/flags", WatchableType.VAR, "uint8", bitsize=3, bitoffset=2))
    assert bits.params == (0, 7) and "3 bits" in bits.description
    assert sensor_spec(WatchableInfo("/p", WatchableType.VAR, "ptr32")).params == (0, 2**32 - 1)
    flag = sensor_spec(WatchableInfo("/b", WatchableType.VAR, "bool8"))
    assert flag.stype == "boolean" and flag.convert(True) is True
    mode = sensor_spec(
        WatchableInfo("/mode", WatchableType.VAR, "uint8", EnumDef("Mode", {"IDLE": 0, "RUN fast": 1, "X": 1}))
    )
    assert (mode.stype, mode.params, mode.convert(1)) == ("discrete", ("IDLE", "RUN-fast"), "RUN-fast")
    assert "enum Mode" in mode.description
    with pytest.raises(ValueError):
        mode.convert(7)  # a number without a name
    scaled = sensor_spec(WatchableInfo("/Scaled", WatchableType.ALIAS, "uint32", gain=2.0, offset=0.0))
    assert scaled.stype == "float" and scaled.convert(3) == 3.0
    plain = sensor_spec(WatchableInfo("/Alias", WatchableType.ALIAS, "uint32", gain=1.0, offset=0.0))
    assert plain.stype == "integer"


def test_enum_labels_are_katcp_values() -> None:
    labels = enum_labels(EnumDef("E", {"A b": 0, "A-b": 1, "": 2, "Ünï": 3}))
    assert labels[0] == "A-b" and labels[1] == "A-b-2" and labels[2] == "x"
    assert labels[3].isascii() and " " not in labels[3] and len(set(labels.values())) == 4


def test_update_rate_is_the_fastest_any_client_needs() -> None:
    period = Sampling(Strategy.PERIOD, (0.5,))
    fast = Sampling(Strategy.PERIOD, (0.1,))
    auto = Sampling(Strategy.AUTO)
    assert update_rate([period], None) == 2.0
    assert update_rate([period, fast], None) == pytest.approx(10.0)
    assert update_rate([period, auto], None) is None  # auto: as fast as possible
    assert update_rate([period, auto], 5.0) == 5.0
    assert update_rate([Sampling(Strategy.EVENT)], 1.0) == 1.0


def test_parse_write_value() -> None:
    mode = sensor_spec(WatchableInfo("/m", WatchableType.VAR, "uint8", EnumDef("M", {"IDLE": 0, "RUN": 1})))
    flag = sensor_spec(WatchableInfo("/b", WatchableType.VAR, "bool8"))
    assert parse_write_value("RUN", mode) == 1
    assert parse_write_value("true", flag) is True and parse_write_value("0", flag) is False
    assert parse_write_value("0x10", None) == 16 and parse_write_value("-2", None) == -2
    assert parse_write_value("2.5", None) == 2.5
    assert parse_write_value("2*pi", None) == "2*pi"  # the server evaluates expressions


def test_parse_acquire_args() -> None:
    paths = {"sine": "/Sine Wave", "up": "/Up Time"}

    def resolve(name: str) -> str:
        if name.startswith("/"):
            return name
        try:
            return paths[name]
        except KeyError:
            raise InvalidUsage(f"Unknown watchable {name!r}") from None

    config, wait = parse_acquire_args(
        ["sine,/rpv/x2000", "trigger=gt", "operands=up,5", "decimation=2", "timeout=1.5",
         "x-axis=measured-time", "name=acq 1", "wait=3", "probe-location=0.25", "sampling-rate=0"],
        resolve,
    )
    assert [s.path for s in config.signals] == ["/Sine Wave", "/rpv/x2000"]
    assert config.condition is TriggerCondition.GREATER_THAN
    assert config.operands == (WatchableOperand("/Up Time"), 5.0)
    assert (config.decimation, config.timeout, config.probe_location, wait) == (2, 1.5, 0.25, 3.0)
    assert config.x_axis_type is XAxisType.MEASURED_TIME and config.name == "acq 1"
    assert parse_acquire_args(["sine"], resolve)[0].condition is TriggerCondition.ALWAYS_TRUE
    for bad, message in [
        ([], "SIGNALS is required"),
        (["sine", "colour=red"], "unknown option 'colour'"),
        (["sine", "decimation"], "expected KEY=VALUE"),
        (["sine", "trigger=sometimes"], "unknown trigger"),
        (["sine", "trigger=gt"], "takes 2 operands"),
        (["sine", "x-axis=signal"], "x_axis_signal is required"),
        (["nope"], "Unknown watchable"),
        (["sine", "wait=0"], "wait must be > 0"),
        (["sine", "name=a", "name=b"], "given twice"),
    ]:
        with pytest.raises(InvalidUsage, match=message):
            parse_acquire_args(bad, resolve)


# ------------------------------------------------------------------------------------------------------
# against the fake Scrutiny server


async def test_model_sensors_and_requests_offered(fake: FakeScrutinyServer) -> None:
    async with running(fake.host, fake.port) as (device, client):
        for path, (name, stype) in DEMO.items():
            sensor = client.sensors[name]
            assert sensor.description.startswith(path + " ("), sensor.description
            assert sensor.type.name == stype
            assert sensor.status is Status.NOMINAL  # read once when the model was built
        assert client.sensors["global.device.uptime"].params == (0, 2**32 - 1)
        assert client.sensors["rpv.x2000"].params == (-(2**31), 2**31 - 1)
        assert set(client.sensors) == STATUS_SENSORS | {n for n, _ in DEMO.values()}
        assert client.sensors["server.connected"].value is True
        assert client.sensors["device.comm-state"].value == "connected-ready"
        assert client.sensors["device.session-id"].value == fake.session_id
        assert client.sensors["device.display-name"].value == "EmulatedDevice"
        assert client.sensors["sfd.firmware-id"].value == DEMO_FIRMWARE_ID
        assert client.sensors["datalogger.state"].value == "standby"
        assert client.sensors["datalogger.completion"].status is Status.INACTIVE
        assert REQUESTS <= set(client.requests)
        assert client.requests["datalog-acquire"].timeout_hint and client.requests["datalog-acquire"].timeout_hint > 60
        assert "sampling-rate=ID" in client.requests["datalog-acquire"].description
        assert device.path_of("sine-wave") == "/Sine Wave" and device.path_of("/Sine Wave") == "/Sine Wave"


async def test_target_scheme_builds_the_device() -> None:
    device = create_virtual_device("scrutiny", "127.0.0.1", 8765, listen_port=0)
    assert isinstance(device, ScrutinyDevice) and device.SCHEME == "scrutiny" and device.DEFAULT_PORT == 8765


async def test_sampling_drives_subscriptions(fake: FakeScrutinyServer) -> None:
    async with running(fake.host, fake.port, sampling=None) as (device, client):
        scrutiny = device.scrutiny
        assert scrutiny is not None
        assert scrutiny.subscriptions == {}  # the first-value snapshot is over; nobody samples
        assert device.sensors["sine-wave"].status is Status.NOMINAL  # the snapshot's value

        values = recorder(client, "sine-wave")
        await client.set_sampling("sine-wave", "period", 0.1)
        await until(lambda: "/Sine Wave" in scrutiny.subscriptions)
        assert scrutiny.subscriptions["/Sine Wave"].rate == pytest.approx(10.0)
        await until(lambda: len(set(values)) >= 3)  # the sine moves
        assert set(scrutiny.subscriptions) == {"/Sine Wave"}

        # A second client sampling with "auto" needs the fastest rate; it leaves, the rate drops back.
        other = InspectingClientAsync(*device.address, default_sampling=None)
        try:
            await other.connect()
            await other.until_synced(WAIT)
            await other.set_sampling("sine-wave", "auto")
            await until(lambda: scrutiny.subscriptions["/Sine Wave"].rate is None)
        finally:
            await other.aclose()
        await until(lambda: scrutiny.subscriptions["/Sine Wave"].rate == pytest.approx(10.0))

        await client.set_sampling("rpv.x1000", "event")
        await until(lambda: "/rpv/x1000" in scrutiny.subscriptions)
        await client.set_sampling("sine-wave", "none")
        await until(lambda: set(scrutiny.subscriptions) == {"/rpv/x1000"})
        assert device.wanted_subscriptions == {"/rpv/x1000": None}


async def test_watchable_write_changes_what_the_device_does(fake: FakeScrutinyServer) -> None:
    async with running(fake.host, fake.port, sampling=None) as (device, client):
        await client.set_sampling(COUNTER, "auto")
        counter = recorder(client, COUNTER)
        start = client.sensors[COUNTER].value
        assert await ok(client, "watchable-write", ENABLE, "1") == ([], [])
        await until(lambda: counter and counter[-1] > start + 0.5)  # the counter runs
        assert (await ok(client, "watchable-read", "/static/main.cpp/counter_enable"))[0] == ["1"]

        # A batch, in order, confirmed by the device; then read back by either name form.
        await ok(client, "watchable-write", "counter.enable", "false",
                 "global.sinewave-generator.frequency", "2.5", "/Up Time", "0x10")
        assert (await ok(client, "watchable-read", "global.sinewave-generator.frequency"))[0] == ["2.5"]
        assert (await ok(client, "watchable-read", ENABLE))[0] == ["0"]
        stopped = client.sensors[COUNTER].value
        assert (await ok(client, "watchable-read", COUNTER))[0] == [repr(stopped)]

        assert "Unknown watchable 'nope'" in await fail(client, "watchable-write", "nope", "1")
        assert await fail(client, "watchable-write", "/nope", "1") == "Unknown watchable path /nope"
        assert "NAME VALUE pairs" in await fail(client, "watchable-write", ENABLE)
        assert "Unknown watchable : /nope" in await fail(client, "watchable-read", "/nope")


async def test_memory_user_commands_device_info_and_stats(fake: FakeScrutinyServer) -> None:
    async with running(fake.host, fake.port, sampling=None) as (_, client):
        await ok(client, "memory-write", "0x1200", "0506a0")
        assert (await ok(client, "memory-read", str(0x1200), "3"))[0] == ["0506a0"]
        assert await fail(client, "memory-read", "0", "4") == "Forbidden region"
        assert "Read only" in await fail(client, "memory-write", "0x1800", "00")
        assert "HEX must be" in await fail(client, "memory-write", "0x1200", "xyz")
        assert "ADDRESS must be an integer" in await fail(client, "memory-read", "here", "4")

        assert (await ok(client, "user-command", "1", "0102"))[0] == ["0102"]
        assert (await ok(client, "user-command", "0"))[0] == ["aa" * 32]
        assert "FailureToProceed" in await fail(client, "user-command", "3")

        count, informs = await ok(client, "device-info")
        info = {i[0]: i[1:] for i in informs}
        assert int(count[0]) == len(informs)
        assert info["display-name"] == ["EmulatedDevice"] and info["feature.datalogging"] == ["1"]
        assert ["0x1800", "0x1fff"] in [i[1:] for i in informs if i[0] == "readonly-region"]
        assert info["datalogging.sampling-rate"][1] == "Python thread"

        count, informs = await ok(client, "server-stats")
        stats = {i[0]: i[1] for i in informs}
        assert int(stats["client-count"]) == 1 and float(stats["uptime"]) >= 0


async def test_datalogging_requests(fake: FakeScrutinyServer) -> None:
    async with running(fake.host, fake.port, sampling=None) as (_, client):
        reply, _ = await ok(client, "datalog-acquire", "sine-wave,/rpv/x2000", "trigger=gt",
                            "operands=up-time,-1", "x-axis=measured-time", "name=from-katcp", "wait=10")
        reference = reply[0]
        listed = (await ok(client, "datalog-list"))[1]
        assert [(i[0], i[1], i[3]) for i in listed] == [(reference, "from-katcp", DEMO_FIRMWARE_ID)]

        reply, informs = await ok(client, "datalog-read", reference)
        assert reply[:2] == ["3", "from-katcp"]
        x, sine, flip = informs
        assert x[:3] == ["Time (measured)", "x", ""]
        assert sine[:3] == ["sine-wave", "Y", "/Sine Wave"]
        samples = [float(v) for v in flip[3].split(",")]
        assert len(samples) == len(x[3].split(",")) > 10 and set(samples) <= {1.0, -1.0}

        await ok(client, "datalog-delete", reference)
        assert (await ok(client, "datalog-list"))[1] == []
        assert "No acquisition identified by ID" in await fail(client, "datalog-read", reference)
        assert "unknown option 'colour'" in await fail(client, "datalog-acquire", "sine-wave", "colour=red")
        assert "Given sampling_rate_id is not supported" in await fail(
            client, "datalog-acquire", "sine-wave", "sampling-rate=5"
        )


async def test_sfd_install_swap_and_uninstall(tmp_path: Path) -> None:
    fake = FakeScrutinyServer(install_test_sfd=False)
    await fake.start()
    sfd_file = tmp_path / "test.sfd"
    sfd_file.write_bytes(make_test_sfd(0).to_bytes())
    try:
        async with running(fake.host, fake.port, sampling=None, sfd_load_timeout=1.0) as (device, client):
            scrutiny = device.scrutiny
            assert scrutiny is not None
            listed = (await ok(client, "sfd-list"))[1]
            assert [i[:3] for i in listed] == [[DEMO_FIRMWARE_ID, "1", "0"]]
            assert (await ok(client, "sfd-install", str(sfd_file)))[0] == [TEST_FIRMWARE_ID]
            listed = (await ok(client, "sfd-list"))[1]
            assert [i[:3] for i in listed] == [[TEST_FIRMWARE_ID, "0", "1"], [DEMO_FIRMWARE_ID, "1", "0"]]
            assert listed[0][3:] == ["katclient test firmware", "1.2.3", "katclient"]
            assert "not a Scrutiny Firmware Description" in await fail(client, "sfd-install", str(ROOT / "setup.py"))

            # Sampled before the swap: an RPV (it stays) and an alias (it goes, then comes back).
            await client.set_sampling("rpv.x1000", "auto")
            await client.set_sampling("counter.value", "auto")
            await until(lambda: {"/rpv/x1000", "/Counter/Value"} <= set(scrutiny.subscriptions))
            changes: list[Message] = []
            client.hook_inform("interface-changed", changes.append)

            await ok(client, "sfd-load", TEST_FIRMWARE_ID)
            assert changes  # the client was told
            await until(lambda: "app.mode" in client.sensors and client.synced)
            assert "sine-wave" not in client.sensors and "counter.value" not in client.sensors
            assert client.sensors["sfd.firmware-id"].value == TEST_FIRMWARE_ID
            assert client.sensors["app.mode"].type.name == "discrete"
            assert client.sensors["app.mode"].params == ("IDLE", "RUN", "FAULT")
            assert client.sensors["app.flags.ready"].params == (0, 7)
            assert client.sensors["app.big"].params == (0, 2**64 - 1)
            assert client.sensors["gain-x2"].type.name == "float"
            assert client.sensors["level-clamped"].type.name == "integer"
            await until(lambda: set(scrutiny.subscriptions) == {"/rpv/x1000"})  # the alias went away
            rpv = recorder(client, "rpv.x1000")
            await until(lambda: len(rpv) >= 2)  # still subscribed across the swap

            # Enums by name; the device's refusal comes back as the reason.
            await ok(client, "watchable-write", "app.mode", "RUN", "app.flags.ready", "5")
            assert (await ok(client, "watchable-read", "app.mode"))[0] == ["RUN"]
            assert (await ok(client, "watchable-read", "/app/flags/ready"))[0] == ["5"]
            assert "Not allowed" in await fail(client, "watchable-write", "app.calibration", "1.5")

            # An invalid value (a forbidden region) keeps the last value with status failure.
            await client.set_sampling("app.protected", "auto")
            await until(lambda: client.sensors["app.protected"].status is Status.FAILURE)
            assert "invalid value (forbidden)" in await fail(client, "watchable-read", "app.protected")

            # Back to the demo SFD: the alias that is still sampled is subscribed again.
            changes.clear()
            await ok(client, "sfd-load", DEMO_FIRMWARE_ID)
            assert changes
            await until(lambda: "counter.value" in client.sensors and client.synced)
            await until(lambda: "/Counter/Value" in scrutiny.subscriptions
                        and scrutiny.subscriptions["/Counter/Value"].active)
            await ok(client, "sfd-uninstall", TEST_FIRMWARE_ID)
            assert [i[0] for i in (await ok(client, "sfd-list"))[1]] == [DEMO_FIRMWARE_ID]
            assert "not installed" in await fail(client, "sfd-uninstall", TEST_FIRMWARE_ID)
            assert "not loaded within" in await fail(client, "sfd-load", "0" * 31 + "1")
    finally:
        await fake.stop()


async def test_invalid_update_keeps_last_value(fake: FakeScrutinyServer) -> None:
    # Updates are fed in directly; nothing is sampled, so no real update interferes.  (End to end,
    # the SFD test sees a forbidden variable turn ``failure``.)
    async with running(fake.host, fake.port, sampling=None) as (device, _):
        scrutiny = device.scrutiny
        assert scrutiny is not None and scrutiny.subscriptions == {}
        sensor = device.sensors["up-time"]
        now = device.clock()
        device._on_values([WatchableValue("/Up Time", "e", 42, now, 0.0)])
        assert (sensor.value, sensor.status, sensor.timestamp) == (42, Status.NOMINAL, now)
        device._on_values([WatchableValue("/Up Time", "e", None, now + 1, 1.0, "forbidden")])
        assert (sensor.value, sensor.status, sensor.timestamp) == (42, Status.FAILURE, now + 1)
        device._on_values([WatchableValue("/Up Time", "e", 2.5, now + 2, 2.0)])  # not an integer
        assert (sensor.value, sensor.status) == (42, Status.FAILURE)
        device._on_values([WatchableValue("/Up Time", "e", 43, now + 3, 3.0)])
        assert (sensor.value, sensor.status) == (43, Status.NOMINAL)


async def test_device_sessions_change_the_sensor_set(fake: FakeScrutinyServer) -> None:
    async with running(fake.host, fake.port, sampling=None) as (device, client):
        scrutiny = device.scrutiny
        assert scrutiny is not None
        await client.set_sampling("rpv.x1000", "auto")
        first_session = client.sensors["device.session-id"].value
        changes: list[Message] = []
        client.hook_inform("interface-changed", changes.append)

        fake.disconnect_device()
        await until(lambda: client.sensors["device.comm-state"].value == "disconnected")
        assert client.sensors["device.comm-state"].status is Status.WARN
        await until(lambda: "rpv.x1000" not in client.sensors and "sine-wave" not in client.sensors)
        assert changes and client.sensors["device.session-id"].value == ""

        fake.restart_device()
        await until(lambda: "rpv.x1000" in client.sensors and client.synced)
        assert client.sensors["device.session-id"].value not in ("", first_session)
        await until(lambda: "/rpv/x1000" in scrutiny.subscriptions and scrutiny.subscriptions["/rpv/x1000"].active)
        values = recorder(client, "rpv.x1000")
        await until(lambda: len(values) >= 2)  # sampled again: values flow


async def test_server_restart_unreachable_then_resync(fake: FakeScrutinyServer) -> None:
    async with running(fake.host, fake.port, sampling=None) as (device, client):
        await client.set_sampling("sine-wave", "auto")
        old_session = client.sensors["device.session-id"].value
        await fake.stop()
        await until(lambda: client.sensors["server.connected"].value is False)
        await until(lambda: client.sensors["sine-wave"].status is Status.UNREACHABLE)
        assert all(device.sensors[n].status is Status.UNREACHABLE for n, _ in DEMO.values())
        assert client.sensors["server.connected"].status is Status.NOMINAL
        assert client.sensors["device.session-id"].status is Status.UNREACHABLE
        assert client.sensors["device.session-id"].value == old_session  # kept
        assert "Not connected to the Scrutiny server" in await fail(client, "watchable-read", "sine-wave")

        await fake.start()  # same port, fresh process state
        await until(lambda: all(n in device.sensors and device.sensors[n].status is Status.NOMINAL
                                for n, _ in DEMO.values()))
        await until(lambda: client.synced and nominal(client, "sine-wave"))
        assert client.sensors["server.connected"].value is True
        assert client.sensors["device.session-id"].value == fake.session_id != old_session
        values = recorder(client, "sine-wave")
        await until(lambda: len(set(values)) >= 2)  # the sampled sensor follows the new server
        scrutiny = device.scrutiny
        assert scrutiny is not None and set(scrutiny.subscriptions) == {"/Sine Wave"}


async def test_backend_down_at_start_then_up() -> None:
    fake = FakeScrutinyServer()
    host, port = await fake.start()
    await fake.stop()
    device = ScrutinyDevice(host, port, reconnect_delay=fast_backoff())
    await device.start()  # returns after the first failed attempt
    try:
        assert device.sensors["server.connected"].value is False
        assert "sine-wave" not in device.sensors
        await fake.start()
        await device.wait_backend_ready(WAIT)
        assert device.sensors["sine-wave"].status is Status.NOMINAL
    finally:
        await device.stop()
        await fake.stop()


# ------------------------------------------------------------------------------------------------------
# against the REAL Scrutiny server in demo mode


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.test_scrutiny_real_server import RealServer  # noqa: PLC0415 - only when used

    server = RealServer(tmp_path_factory.mktemp("scrutiny-device-peer"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "katclient.cli", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@real
async def test_real_cli_inspect_lists_every_demo_watchable_live(real_server: Any) -> None:
    code, out, err = await run_cli("inspect", f"scrutiny://127.0.0.1:{real_server.port}", "--json")
    assert code == 0, err
    doc = json.loads(out)
    by_path = {s["description"].split(" (")[0]: s for s in doc["sensors"] if s["description"].startswith("/")}
    assert set(by_path) == set(DEMO)
    for path, (name, stype) in DEMO.items():
        sensor = by_path[path]
        assert (sensor["name"], sensor["type"], sensor["status"]) == (name, stype, "nominal"), sensor
        assert sensor["value"] is not None
    assert REQUESTS <= {r["name"] for r in doc["requests"]}


@real
async def test_real_bridge_cli_request_and_aiokatcp(real_server: Any) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "katclient.cli", "bridge", f"scrutiny://127.0.0.1:{real_server.port}",
        "--listen", "127.0.0.1:0", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line.startswith("listening on "), line
        gateway = line.split("listening on ", 1)[1].strip()
        host, port = gateway.rsplit(":", 1)

        client = await aiokatcp.Client.connect(host, int(port))
        try:
            watcher = aiokatcp.SensorWatcher(client)
            client.add_sensor_watcher(watcher)
            await asyncio.wait_for(watcher.synced.wait(), WAIT)
            assert {n for n, _ in DEMO.values()} | STATUS_SENSORS <= set(watcher.sensors)
            assert watcher.sensors["server.connected"].value is True
            counter = watcher.sensors[COUNTER]
            start = counter.value
            assert isinstance(start, float)

            code, out, err = await run_cli("request", gateway, "watchable-write", ENABLE, "1")
            assert code == 0, (out, err)
            assert out.strip().splitlines()[-1].split()[1] == "ok"
            try:
                await until(lambda: counter.value > start + 0.5)  # the demo counter runs
            finally:
                await client.request("watchable-write", "/static/main.cpp/counter_enable", "0")
            reply, _ = await client.request("watchable-read", ENABLE)
            assert reply == [b"0"]
            with pytest.raises(aiokatcp.FailReply, match="Forbidden region"):
                await client.request("memory-read", "0", "4")
        finally:
            client.close()
            await client.wait_closed()
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        assert proc.returncode == 0  # the bridge stops cleanly on SIGTERM


@real
async def test_real_requests(real_server: Any) -> None:
    async with running("127.0.0.1", real_server.port, sampling=None) as (_, client):
        assert await fail(client, "memory-read", "0", "4") == "Forbidden region"
        assert "Size too big" in await fail(client, "memory-read", "0x1000", "20000")
        await ok(client, "memory-write", "0x1200", "0506")
        assert (await ok(client, "memory-read", "0x1200", "2"))[0] == ["0506"]
        assert (await ok(client, "user-command", "1", "01"))[0] == ["01"]
        assert "FailureToProceed" in await fail(client, "user-command", "3")

        await ok(client, "watchable-write", "global.sinewave-generator.frequency", "2")
        try:
            assert (await ok(client, "watchable-read", "/global/sinewave_generator/frequency"))[0] == ["2.0"]
        finally:
            await ok(client, "watchable-write", "global.sinewave-generator.frequency", "1")
        assert "Unknown watchable path /nope" in await fail(client, "watchable-write", "/nope", "1")

        info = {i[0]: i[1:] for i in (await ok(client, "device-info"))[1]}
        assert info["display-name"] == ["EmulatedDevice"]
        assert info["session-id"] == [client.sensors["device.session-id"].value]
        stats = {i[0]: i[1] for i in (await ok(client, "server-stats"))[1]}
        assert int(stats["client-count"]) >= 1
        assert [i[:3] for i in (await ok(client, "sfd-list"))[1]] == [[DEMO_FIRMWARE_ID, "1", "0"]]

        reference = (await ok(client, "datalog-acquire", "sine-wave,rpv.x2000", "name=real", "wait=20"))[0][0]
        assert reference in [i[0] for i in (await ok(client, "datalog-list"))[1]]
        reply, informs = await ok(client, "datalog-read", reference)
        assert reply[:2] == ["3", "real"] and [i[2] for i in informs[1:]] == ["/Sine Wave", "/rpv/x2000"]
        assert len(informs[1][3].split(",")) > 10
        await ok(client, "datalog-delete", reference)
        assert reference not in [i[0] for i in (await ok(client, "datalog-list"))[1]]


@real
async def test_real_sfd_swap(real_server: Any, tmp_path: Path) -> None:
    sfd_file = tmp_path / "test.sfd"
    sfd_file.write_bytes(make_test_sfd(0).to_bytes())
    async with running("127.0.0.1", real_server.port) as (_, client):
        changes: list[Message] = []
        client.hook_inform("interface-changed", changes.append)
        assert (await ok(client, "sfd-install", str(sfd_file)))[0] == [TEST_FIRMWARE_ID]
        try:
            await ok(client, "sfd-load", TEST_FIRMWARE_ID)
            assert changes
            await until(lambda: "app.mode" in client.sensors and client.synced)
            assert COUNTER not in client.sensors
            assert client.sensors["app.mode"].params == ("IDLE", "RUN", "FAULT")
            await until(lambda: client.sensors["app.protected"].status is Status.FAILURE)  # forbidden
            await until(lambda: client.sensors["app.gain"].status is Status.NOMINAL)
        finally:
            changes.clear()
            await ok(client, "sfd-load", DEMO_FIRMWARE_ID)
            await ok(client, "sfd-uninstall", TEST_FIRMWARE_ID)
        assert changes
        await until(lambda: COUNTER in client.sensors and client.synced)
        await until(lambda: client.sensors[COUNTER].status is Status.NOMINAL)


@real
async def test_real_server_restart(real_server: Any) -> None:
    async with running("127.0.0.1", real_server.port, sampling=None) as (device, client):
        await client.set_sampling("sine-wave", "auto")
        old_session = client.sensors["device.session-id"].value
        await asyncio.to_thread(real_server.stop)
        await until(lambda: client.sensors["sine-wave"].status is Status.UNREACHABLE)
        assert client.sensors["server.connected"].value is False
        await asyncio.to_thread(real_server.start)
        # The device comes back, then its SFD (maybe in two model builds): wait for the whole model.
        await until(lambda: all(n in device.sensors and device.sensors[n].status is Status.NOMINAL
                                for n, _ in DEMO.values()), 20)
        await until(lambda: client.synced and nominal(client, "sine-wave"))
        assert client.sensors["device.session-id"].value != old_session
        values = recorder(client, "sine-wave")
        await until(lambda: len(set(values)) >= 2)
