"""OpticonDevice: a PyOpticon dashboard as a KATCP device, against the fake dashboard.

Through katclient's InspectingClientAsync in-process, aiokatcp's Client (an independent KATCP client), and
the CLI (``katclient bridge`` / ``request`` / ``inspect``) as subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiokatcp
import pytest

from fake_servers.opticon_dashboard import FakeOpticonDashboard
from katclient.client.backoff import ExponentialRandomBackoff
from katclient.client.inspecting import InspectingClientAsync
from katclient.devices.base import NameMap
from katclient.devices.opticon.device import (
    CONNECTED_SENSOR,
    ERROR_SENSOR,
    POLLED_SENSOR,
    FieldOptions,
    OpticonDevice,
    PollSchedule,
    field_sensor_name,
    load_config,
    parse_config,
    parse_field_value,
    poll_interval,
)
from katclient.errors import InvalidUsage
from katclient.protocol import Sampling, Status, Strategy
from katclient.targets import create_virtual_device

ROOT = Path(__file__).resolve().parents[1]
#: Bound on every wait for something to happen (seconds); never reached when things work.
WAIT = 10.0
#: Fast instruments: the heater's 20 s time constant passes in 0.4 s.
FAKE_OPTIONS: dict[str, Any] = {"speed": 50.0, "poll_interval": 0.02}

HEATER_FIELDS = ["Setpoint Entry", "Mode Selection", "Device Setpoint", "Device Mode", "Temperature"]


# ------------------------------------------------------------------------------------------------------
# helpers


def fast_backoff() -> ExponentialRandomBackoff:
    return ExponentialRandomBackoff(0.05, 0.2, 2.0, 0.0)


async def until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait until *predicate()* holds (checked every 10 ms), at most *timeout* seconds."""

    async def wait() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpticonDashboard]:
    dashboard = FakeOpticonDashboard(**FAKE_OPTIONS)
    await dashboard.start()
    try:
        yield dashboard
    finally:
        await dashboard.stop()


@asynccontextmanager
async def device(fake: FakeOpticonDashboard, **options: Any) -> AsyncIterator[OpticonDevice]:
    dev = OpticonDevice(*fake.address, reconnect_delay=fast_backoff(), **options)
    await dev.start()
    try:
        yield dev
    finally:
        await dev.stop()


@asynccontextmanager
async def inspecting(dev: OpticonDevice, **options: Any) -> AsyncIterator[InspectingClientAsync]:
    client = InspectingClientAsync(*dev.address, **options)
    await client.connect()
    try:
        await client.until_synced(WAIT)
        yield client
    finally:
        await client.aclose()


async def ok(client: InspectingClientAsync, *request: str) -> tuple[bytes, ...]:
    reply, _ = await client.simple_request(*request)
    assert reply.reply_ok(), reply
    return reply.arguments[1:]


async def refused(client: InspectingClientAsync, *request: str) -> tuple[bytes, str]:
    reply, _ = await client.simple_request(*request)
    assert not reply.reply_ok(), reply
    return reply.arguments[0], reply.arguments[1].decode()


_PAIR = re.compile(r"\('((?:[^'\\]|\\.)*)','((?:[^'\\]|\\.)*)'\)")


def poll_batches(fake: FakeOpticonDashboard, since: int = 0) -> list[set[tuple[str, str]]]:
    """The batched field reads (Eval) the fake received, oldest first, as sets of (nickname, field)."""
    batches = []
    for _, request in list(fake.commands)[since:]:
        if request.get("cmd") == "Eval" and ".attributes[f].get()" in request.get("code", ""):
            batches.append(set(_PAIR.findall(request["code"])))
    return batches


def heater_temperature(client: InspectingClientAsync) -> float | None:
    try:
        return float(client.sensors["heater.temperature"].value)
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------------------
# sans-I/O parts


def test_poll_interval_follows_the_strategy() -> None:
    def s(strategy: Strategy, *params: float) -> Sampling:
        return Sampling(strategy, params)

    assert poll_interval([], 0.5) is None
    assert poll_interval([s(Strategy.NONE)], 0.5) is None
    assert poll_interval([s(Strategy.PERIOD, 2.0)], 0.5) == 2.0
    assert poll_interval([s(Strategy.AUTO)], 0.5) == 0.5
    assert poll_interval([s(Strategy.EVENT)], 0.7) == 0.7
    assert poll_interval([s(Strategy.DIFFERENTIAL, 1.0)], 0.7) == 0.7
    assert poll_interval([s(Strategy.EVENT_RATE, 0.2, 10.0)], 0.5) == 0.2
    assert poll_interval([s(Strategy.EVENT_RATE, 0.0, 0.3)], 0.5) == 0.3
    assert poll_interval([s(Strategy.EVENT_RATE, 0.0, 0.0)], 0.5) == 0.5
    assert poll_interval([s(Strategy.DIFFERENTIAL_RATE, 1.0, 0.25, 5.0)], 0.5) == 0.25
    assert poll_interval([s(Strategy.PERIOD, 0.001)], 0.5, minimum=0.05) == 0.05
    # Several clients: the fastest wins.
    assert poll_interval([s(Strategy.PERIOD, 3.0), s(Strategy.AUTO), s(Strategy.PERIOD, 1.0)], 0.5) == 0.5


def test_poll_schedule() -> None:
    sched = PollSchedule()
    assert sched.next_due() is None and sched.take_due(0.0) == []
    assert sched.set("a", 1.0, now=10.0) and not sched.set("a", 1.0, now=10.5)
    assert sched.set("b", 0.2, now=10.0)
    assert sorted(sched.take_due(10.0)) == ["a", "b"]  # new fields are due at once
    assert sched.next_due() == pytest.approx(10.2)
    assert sched.take_due(10.1) == []
    assert sched.take_due(10.16) == ["b"]  # within a quarter interval of due: taken early, batched
    assert sorted(sched.take_due(10.8)) == ["a", "b"]  # a was due at 11.0 (within 0.25 s), b at 10.36
    sched.set("a", 0.1, now=10.9)  # a faster strategy brings the next read forward
    assert sched.next_due() == pytest.approx(11.0) and sched.interval("a") == 0.1
    sched.defer_all(20.0)
    assert sched.next_due() == pytest.approx(20.1)
    sched.retain(["b", "zzz"])
    assert sched.names() == ["b"] and "a" not in sched and len(sched) == 1
    assert sched.discard("b") and not sched.discard("b") and sched.next_due() is None
    assert not sched.set("gone", None, now=0.0)
    with pytest.raises(InvalidUsage):
        sched.set("c", 0.0, now=0.0)


def test_parse_field_value() -> None:
    assert parse_field_value(FieldOptions("string"), " No Reading ") == " No Reading "
    assert parse_field_value(FieldOptions("float"), " 25.50 ") == 25.5
    assert parse_field_value(FieldOptions("float"), "No Reading") is None
    assert parse_field_value(FieldOptions("integer"), "42") == 42
    assert parse_field_value(FieldOptions("integer"), "3.0") == 3
    assert parse_field_value(FieldOptions("integer"), "3.5") is None
    assert parse_field_value(FieldOptions("integer"), "1e999") is None
    for word, expected in [("1", True), ("On", True), ("TRUE", True), ("yes", True), ("0", False), ("off", False)]:
        assert parse_field_value(FieldOptions("boolean"), word) is expected
    assert parse_field_value(FieldOptions("boolean"), "maybe") is None
    mode = FieldOptions("discrete", params=("Off", "On"))
    assert parse_field_value(mode, "On") == "On" and parse_field_value(mode, "on") is None


def test_sensor_names_are_katcp_style_and_unique() -> None:
    names = NameMap("\x1f", reserved={CONNECTED_SENSOR})
    assert field_sensor_name("Heater", "Setpoint Entry", names) == "heater.setpoint-entry"
    assert field_sensor_name("Picarro", "CH4 (ppm)", names) == "picarro.ch4-ppm"
    assert field_sensor_name("Thorlabs", "Irradiance (mW/cm2)", names) == "thorlabs.irradiance-mw-cm2"
    assert field_sensor_name("v1.2", "Flow (l.min)", names) == "v1-2.flow-l-min"  # always two levels
    assert field_sensor_name("MFC", "Actual Flow", names) == "mfc.actual-flow"
    assert field_sensor_name("mfc", "Actual Flow", names) == "mfc.actual-flow-2"
    assert field_sensor_name("MFC", "Actual Flow", names) == "mfc.actual-flow"  # stable
    assert field_sensor_name("Dashboard", "Connected", names) == "dashboard.connected-2"


def test_config_parsing(tmp_path: Path) -> None:
    doc = {
        "widgets": {
            "Heater": {
                "Temperature": {"type": "float", "units": "degC", "range": [0, 500], "description": "oven"},
                "Mode Selection": {"type": "discrete", "values": ["Off", "On"]},
                "Device Mode": "string",
                "Setpoint Entry": {},
            },
            "Valve": ["Actual Position"],
        }
    }
    config = parse_config(doc)
    assert not config.discover
    assert list(config.fields) == [
        ("Heater", "Temperature"),
        ("Heater", "Mode Selection"),
        ("Heater", "Device Mode"),
        ("Heater", "Setpoint Entry"),
        ("Valve", "Actual Position"),
    ]
    assert config.fields[("Heater", "Temperature")] == FieldOptions("float", "degC", "oven", (0, 500))
    assert config.fields[("Heater", "Mode Selection")].params == ("Off", "On")
    assert config.fields[("Valve", "Actual Position")] == FieldOptions()

    path = tmp_path / "opticon.json"
    path.write_text(json.dumps(doc))
    assert load_config(path) == config

    bad: list[object] = [
        [],
        {"widgets": {}},
        {"widgets": {"Heater": "Temperature"}},
        {"widgets": {"Heater": {"Temperature": {"type": "double"}}}},
        {"widgets": {"Heater": {"Temperature": {"type": "float", "unit": "C"}}}},
        {"widgets": {"Heater": {"Mode": {"type": "discrete"}}}},
        {"widgets": {"Heater": {"Mode": {"type": "discrete", "values": ["Half Open"]}}}},  # space
        {"widgets": {"Heater": {"Mode": {"type": "string", "range": [0, 1]}}}},
        {"widgets": {"Heater": {"T": {"type": "float", "range": [5, 1]}}}},
        {"widgets": {"Heater": [""]}},
        {"discover": "yes"},
        {"fields": {}},
    ]
    for wrong in bad:
        with pytest.raises(InvalidUsage):
            parse_config(wrong)
    assert parse_config({"discover": True}).discover
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InvalidUsage, match="not valid JSON"):
        load_config(tmp_path / "broken.json")
    with pytest.raises(InvalidUsage, match="cannot read"):
        load_config(tmp_path / "missing.json")


def test_options_are_checked_and_converted() -> None:
    dev = create_virtual_device(
        "opticon", "127.0.0.1", 12345, poll_interval="0.25", enable_eval="yes", config={"discover": True}
    )
    assert isinstance(dev, OpticonDevice)
    assert dev.poll_interval == 0.25 and dev.enable_eval and dev.SCHEME == "opticon" and dev.DEFAULT_PORT == 12345
    with pytest.raises(InvalidUsage):
        OpticonDevice.from_target("127.0.0.1", 12345, set_timeout="soon")
    with pytest.raises(InvalidUsage):
        OpticonDevice.from_target("127.0.0.1", 12345, enable_eval="perhaps")
    with pytest.raises(InvalidUsage):
        OpticonDevice("127.0.0.1", 12345, poll_interval=0)


# ------------------------------------------------------------------------------------------------------
# in-process, through katclient's InspectingClientAsync


async def test_discovered_fields_become_sensors(fake: FakeOpticonDashboard) -> None:
    async with device(fake) as dev, inspecting(dev) as client:
        expected = {
            f"{nick.lower()}.{field.lower().replace(' ', '-')}"
            for nick, widget in fake.dashboard.widgets_by_nickname.items()
            for field in widget.attributes
        }
        assert set(client.sensors) == expected | {CONNECTED_SENSOR, POLLED_SENSOR, ERROR_SENSOR}
        setpoint = client.sensors["heater.setpoint-entry"]
        assert setpoint.description.startswith("Heater.Setpoint Entry")
        assert setpoint.type.name == "string"
        await until(lambda: client.sensors["heater.temperature"].status is Status.NOMINAL)
        assert client.sensors["valve.position-selection"].value == "Closed"
        assert client.sensors[CONNECTED_SENSOR].value is True
        # The inspecting client samples everything with "auto": every field is polled.
        await until(lambda: client.sensors[POLLED_SENSOR].value == len(expected))

        # Slow requests carry timeout hints; eval/exec do not exist.
        assert client.requests["field-set"].timeout_hint == pytest.approx(dev.set_timeout + 1.0)
        assert client.requests["widget-confirm"].timeout_hint > 0
        assert "dashboard-eval" not in client.requests and "dashboard-exec" not in client.requests
        reply, informs = await client.simple_request("help")
        assert b"dashboard-eval" not in b"".join(m.arguments[0] for m in informs)
        assert b"field-set" in [m.arguments[0] for m in informs]
        for request in (("dashboard-eval", "1+1"), ("dashboard-exec", "pass")):
            code, reason = await refused(client, *request)
            assert code == b"invalid" and "Unknown request" in reason

        reply, informs = await client.simple_request("field-list", "Valve")
        assert reply.arguments == (b"ok", b"2")
        assert [m.arguments[:3] for m in informs] == [
            (b"valve.position-selection", b"Valve", b"Position Selection"),
            (b"valve.actual-position", b"Valve", b"Actual Position"),
        ]


async def test_set_confirm_and_watch_the_readout(fake: FakeOpticonDashboard) -> None:
    async with device(fake) as dev, inspecting(dev) as client:
        assert await ok(client, "field-set", "Heater", "Setpoint Entry", "40") == (b"40",)
        assert fake.dashboard.get_field("Heater", "Setpoint Entry") == "40"  # the read-back saw it
        assert await ok(client, "field-set", "heater.mode-selection", "On") == (b"On",)
        assert await ok(client, "widget-confirm", "Heater") == ()
        await until(lambda: client.sensors["heater.device-setpoint"].value == "40.0")
        await until(lambda: (heater_temperature(client) or 0.0) > 35.0)
        assert client.sensors["heater.device-mode"].value == "On"

        # Every way of naming a field; a fresh read updates the sensor too.
        for names in (("Heater", "Device Mode"), ("heater.device-mode",), ("heater", "device-mode"),
                      ("Heater.Device Mode",)):
            assert await ok(client, "field-get", *names) == (b"On",)
        assert await ok(client, "widget-confirm", "valve") == ()  # the sensor-name form of a widget

        # The dashboard's errors become one-line fail replies.
        code, reason = await refused(client, "field-get", "Nope", "Temperature")
        assert code == b"fail" and "Error: 'Nope'" in reason
        code, reason = await refused(client, "field-get", "no.such-sensor")
        assert code == b"fail" and "Unknown field" in reason
        code, reason = await refused(client, "widget-confirm", "Nope")
        assert code == b"fail" and "Error: 'Nope'" in reason
        # Set on an unknown field of a known widget answers Success (section 1.3); the read-back fails.
        code, reason = await refused(client, "field-set", "Heater", "Nope", "1")
        assert code == b"fail" and "'Nope'" in reason
        code, reason = await refused(client, "field-get")
        assert code == b"fail"

        # The dashboard answers before applying a Set: field-set waits for the read-back, and fails when
        # it never shows the value within the set timeout.
        dev.set_timeout = 0.3
        fake.dashboard.set_delay = 5.0
        code, reason = await refused(client, "field-set", "Valve", "Position Selection", "Open")
        assert code == b"fail" and "timed out" in reason and "Closed" in reason
        fake.dashboard.set_delay = 0.1
        dev.set_timeout = 5.0
        fake.dashboard.apply_pending()
        assert await ok(client, "field-set", "Valve", "Position Selection", "Closed") == (b"Closed",)


async def test_config_types_units_and_validation(fake: FakeOpticonDashboard, tmp_path: Path) -> None:
    path = tmp_path / "dashboard.json"
    path.write_text(json.dumps({
        "widgets": {
            "Heater": {
                "Temperature": {"type": "float", "units": "degC"},
                "Device Setpoint": {"type": "float", "units": "degC"},
                "Setpoint Entry": {"type": "float", "units": "degC"},
                "Mode Selection": {"type": "discrete", "values": ["Off", "On"]},
            },
            "Valve": ["Actual Position"],
        }
    }))
    before = len(fake.commands)
    async with device(fake, config=str(path)) as dev, inspecting(dev) as client:
        # Exactly the listed fields, typed; no introspection Eval was needed.
        assert sorted(n for n in client.sensors if n not in dev.STATUS_SENSORS) == [
            "heater.device-setpoint", "heater.mode-selection", "heater.setpoint-entry", "heater.temperature",
            "valve.actual-position",
        ]
        assert not [r for _, r in list(fake.commands)[before:] if "widgets_by_nickname.items()" in str(r)]
        temperature = client.sensors["heater.temperature"]
        assert temperature.type.name == "float" and temperature.units == "degC"
        assert client.sensors["heater.mode-selection"].params == ("Off", "On")
        assert client.sensors["valve.actual-position"].type.name == "string"
        await until(lambda: temperature.status is Status.NOMINAL)
        assert isinstance(temperature.value, float)
        assert client.sensors["heater.mode-selection"].value == "Off"
        # A value that does not parse ("No Reading" until the first confirm) is status unknown.
        device_setpoint = client.sensors["heater.device-setpoint"]
        assert fake.dashboard.get_field("Heater", "Device Setpoint") == "No Reading"
        assert device_setpoint.status is Status.UNKNOWN

        # A typed field refuses a value of the wrong type before anything is sent.
        sent = len(fake.commands)
        code, reason = await refused(client, "field-set", "heater.setpoint-entry", "hot")
        assert code == b"fail" and "not a valid float" in reason
        code, reason = await refused(client, "field-set", "Heater", "Mode Selection", "Maybe")
        assert code == b"fail" and "not a valid discrete" in reason
        assert not [r for _, r in list(fake.commands)[sent:] if r.get("cmd") == "Set"]
        assert await ok(client, "field-set", "heater.setpoint-entry", "55") == (b"55",)
        assert client.sensors["heater.setpoint-entry"].value == 55.0
        assert await ok(client, "widget-confirm", "Heater") == ()
        await until(lambda: device_setpoint.status is Status.NOMINAL)
        assert device_setpoint.value == 55.0
        # Fields not in the config are still reachable by their dashboard names.
        assert await ok(client, "field-get", "MFC", "Gas Selection") == (b"N2",)


async def test_only_sampled_fields_are_polled(fake: FakeOpticonDashboard) -> None:
    async with device(fake, poll_interval=0.05, keepalive=0.05) as dev, \
            inspecting(dev, default_sampling=None) as client:
        assert client.sensors[POLLED_SENSOR].value == 0
        mark = len(fake.commands)
        await client.set_sampling("heater.temperature", "period", 0.05)
        await until(lambda: len(poll_batches(fake, mark)) >= 6)
        assert all(batch == {("Heater", "Temperature")} for batch in poll_batches(fake, mark))
        assert dev.sensors[POLLED_SENSOR].value == 1

        # Switch to another field: once it is polled, the first one no longer is.
        mark = len(fake.commands)
        await client.set_sampling("heater.temperature", "none")
        await client.set_sampling("valve.actual-position", "auto")
        await until(lambda: sum(("Valve", "Actual Position") in b for b in poll_batches(fake, mark)) >= 5)
        batches = poll_batches(fake, mark)
        first = next(i for i, b in enumerate(batches) if ("Valve", "Actual Position") in b)
        assert all(batch == {("Valve", "Actual Position")} for batch in batches[first:])
        assert dev.sensors[POLLED_SENSOR].value == 1

        # Two fields at the same rate share one batched read.
        mark = len(fake.commands)
        await client.set_sampling("mfc.actual-flow", "auto")
        both = {("Valve", "Actual Position"), ("MFC", "Actual Flow")}
        await until(lambda: sum(b == both for b in poll_batches(fake, mark)) >= 3)
        assert dev.sensors[POLLED_SENSOR].value == 2

        # The client goes away: nothing is sampled, nothing is polled.
        await client.aclose()  # idempotent: the context manager closes it again
        await until(lambda: dev.sensors[POLLED_SENSOR].value == 0)
        mark = len(fake.commands)
        await until(lambda: len(fake.commands) > mark + 2)  # keepalives only
        assert poll_batches(fake, mark) == []


async def test_dashboard_restart_makes_sensors_unreachable_then_back(fake: FakeOpticonDashboard) -> None:
    port = fake.address[1]
    async with device(fake) as dev, inspecting(dev) as client:
        temperature = client.sensors["heater.temperature"]
        await until(lambda: temperature.status is Status.NOMINAL)
        links: list[bool] = []
        dev.sensors[CONNECTED_SENSOR].attach(lambda sensor, reading: links.append(reading.value))

        await fake.stop()
        await until(lambda: temperature.status is Status.UNREACHABLE)
        assert client.sensors[CONNECTED_SENSOR].value is False
        assert client.sensors[CONNECTED_SENSOR].status is Status.NOMINAL  # a status sensor stays nominal
        assert client.sensors["heater.setpoint-entry"].status is Status.UNREACHABLE
        assert client.sensors[ERROR_SENSOR].value != ""
        code, reason = await refused(client, "field-get", "Heater", "Temperature")
        assert code == b"fail" and "not connected" in reason

        restarted = FakeOpticonDashboard(port=port, **FAKE_OPTIONS)
        await restarted.start()
        try:
            await until(lambda: temperature.status is Status.NOMINAL)
            await until(lambda: client.sensors[CONNECTED_SENSOR].value is True)
            assert await ok(client, "field-get", "heater.mode-selection") == (b"Off",)

            # "Force Disconnect" on the dashboard (section 1.4): the device notices and comes back.
            links.clear()
            restarted.force_disconnect()
            await until(lambda: links[-2:] == [False, True])
            await until(lambda: temperature.status is Status.NOMINAL)
            assert restarted.connections_accepted >= 2
        finally:
            await restarted.stop()


async def test_eval_and_exec_only_when_enabled(fake: FakeOpticonDashboard) -> None:
    async with device(fake, enable_eval=True) as dev, inspecting(dev) as client:
        assert "dashboard-eval" in client.requests and client.requests["dashboard-eval"].timeout_hint
        assert await ok(client, "dashboard-eval", "get_dashboard().widgets_by_nickname['Heater'].name") == (
            b"Heater",
        )
        assert await ok(client, "dashboard-eval", "6 * 7") == (b"42",)  # non-str results are str()'d
        code, reason = await refused(client, "dashboard-eval", "1/0")
        assert code == b"fail" and "division by zero" in reason
        code_text = (
            "valve = get_dashboard().widgets_by_nickname['Valve']\nvalve.set_field('Position Selection', 'Open')"
        )
        assert await ok(client, "dashboard-exec", code_text) == ()
        await until(lambda: fake.dashboard.get_field("Valve", "Position Selection") == "Open")
        code, reason = await refused(client, "dashboard-exec", "x = 1\n" * 200)
        assert code == b"fail" and "1024" in reason
        assert client.sensors[CONNECTED_SENSOR].value is True  # nothing above broke the link


# ------------------------------------------------------------------------------------------------------
# aiokatcp's client


async def test_aiokatcp_client_sets_confirms_and_watches(fake: FakeOpticonDashboard) -> None:
    async with device(fake) as dev:
        client = await aiokatcp.Client.connect(*dev.address)
        try:
            watcher = aiokatcp.SensorWatcher(client)
            client.add_sensor_watcher(watcher)
            await asyncio.wait_for(watcher.synced.wait(), WAIT)

            def temperature() -> float:
                try:
                    return float(watcher.sensors["heater.temperature"].value)
                except ValueError:
                    return 0.0

            assert (await client.request("field-set", "Heater", "Setpoint Entry", "45"))[0] == [b"45"]
            await client.request("field-set", "Heater", "Mode Selection", "On")
            await client.request("widget-confirm", "Heater")
            await until(lambda: watcher.sensors["heater.device-setpoint"].value == b"45.0")
            await until(lambda: temperature() > 40.0)
            with pytest.raises(aiokatcp.InvalidReply):
                await client.request("dashboard-eval", "1")
            with pytest.raises(aiokatcp.FailReply, match="Nope"):
                await client.request("field-get", "Nope", "x")
        finally:
            client.close()
            await client.wait_closed()


# ------------------------------------------------------------------------------------------------------
# the CLI, as a user runs it


def katclient(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "katclient.cli", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def reply_text(result: subprocess.CompletedProcess[str]) -> str:
    """The CLI's output with message ids removed (``!name[3] ok`` -> ``!name ok``)."""
    return re.sub(r"^([!#][A-Za-z][\w-]*)\[\d+\]", r"\1", result.stdout.strip(), flags=re.M)


async def run_katclient(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI without blocking the loop (the fake dashboard serves from this loop)."""
    return await asyncio.to_thread(katclient, *args)


@asynccontextmanager
async def bridge(dashboard_port: int, *extra: str) -> AsyncIterator[str]:
    """``katclient bridge opticon://127.0.0.1:PORT`` as a subprocess; yields its ``HOST:PORT``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "katclient.cli", "bridge", f"opticon://127.0.0.1:{dashboard_port}",
         "--listen", "127.0.0.1:0", *extra],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        match = re.fullmatch(r"listening on (127\.0\.0\.1:\d+)\n", line)
        assert match, line
        yield match.group(1)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_cli_bridge_request_inspect() -> None:
    # Four socket ports: the dashboard serves one client per port (section 1.4).
    fake = FakeOpticonDashboard(extra_ports=[0, 0, 0], **FAKE_OPTIONS)
    await fake.start()
    try:
        async with bridge(fake.ports[0]) as gateway:
            host, port = gateway.split(":")
            watcher = InspectingClientAsync(host, int(port))
            await watcher.connect()
            try:
                await watcher.until_synced(WAIT)
                # Done-when: set the setpoint, confirm, and watch the readout follow, from `katclient request`.
                result = await run_katclient("request", gateway, "field-set", "Heater", "Setpoint Entry", "60")
                assert result.returncode == 0, result.stderr
                assert reply_text(result) == "!field-set ok 60"
                result = await run_katclient("request", gateway, "field-set", "heater.mode-selection", "On")
                assert result.returncode == 0, result.stderr
                result = await run_katclient("request", gateway, "widget-confirm", "Heater")
                assert (result.returncode, reply_text(result)) == (0, "!widget-confirm ok"), result.stderr
                await until(lambda: (heater_temperature(watcher) or 0.0) > 55.0)
                result = await run_katclient("request", gateway, "field-get", "heater.device-setpoint")
                assert (result.returncode, reply_text(result)) == (0, "!field-get ok 60.0"), result.stderr

                # ...and from aiokatcp's client, through the same gateway.
                client = await aiokatcp.Client.connect(host, int(port))
                try:
                    await client.request("field-set", "Heater", "Setpoint Entry", "30")
                    await client.request("widget-confirm", "Heater")
                    reply, _ = await client.request("sensor-sampling", "heater.temperature", "auto")
                    assert reply[:2] == [b"heater.temperature", b"auto"]
                    readings: list[float] = []

                    def record(*args):  # type: ignore[no-untyped-def]  # aiokatcp decodes by run-time annotations
                        # #sensor-status <timestamp> 1 <name> <status> <value>
                        if args[2:4] == (b"heater.temperature", b"nominal"):
                            readings.append(float(args[4]))

                    client.add_inform_callback("sensor-status", record)
                    await until(lambda: bool(readings) and readings[-1] < 35.0)
                finally:
                    client.close()
                    await client.wait_closed()

                # Eval does not exist without --enable-eval.
                result = await run_katclient("request", gateway, "dashboard-eval", "1")
                assert result.returncode == 1 and "!dashboard-eval invalid" in reply_text(result)
            finally:
                await watcher.aclose()

        # In-process virtual device: inspect and request straight at opticon://.
        inspected, fetched = await asyncio.gather(
            run_katclient("inspect", f"opticon://127.0.0.1:{fake.ports[1]}", "--json"),
            run_katclient("request", f"opticon://127.0.0.1:{fake.ports[2]}", "field-get", "Valve", "Actual Position"),
        )
        assert inspected.returncode == 0, inspected.stderr
        doc = json.loads(inspected.stdout)
        sensors = {s["name"]: s for s in doc["sensors"]}
        assert sensors["heater.setpoint-entry"]["description"].startswith("Heater.Setpoint Entry")
        assert sensors["heater.setpoint-entry"]["value"] == "30"
        assert sensors["dashboard.connected"]["value"] is True
        requests = {r["name"]: r for r in doc["requests"]}
        assert requests["field-set"]["timeout_hint"] > 0 and "dashboard-eval" not in requests
        assert fetched.returncode == 0, fetched.stderr
        assert reply_text(fetched) == "!field-get ok Closed"

        # With --enable-eval the gateway offers dashboard-eval.
        async with bridge(fake.ports[3], "--enable-eval") as gateway:
            result = await run_katclient(
                "request", gateway, "dashboard-eval", "get_dashboard().widgets_by_nickname['MFC'].name"
            )
            assert (result.returncode, reply_text(result)) == (0, r"!dashboard-eval ok Mass\_Flow")
    finally:
        await fake.stop()

