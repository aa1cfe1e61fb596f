"""The manual's code examples, run as tests (STYLE.md: no prose that nothing checks).

``doc/`` includes the code between each ``# doc-example: NAME`` and ``# end-doc-example`` marker
verbatim (``literalinclude``), so what the reader sees is exactly what runs here.  Each example
carries its own imports, hence the imports below the top of the file.
"""
# ruff: noqa: E402

# doc-example: scan-test
import asyncio

import pytest

from katclient.devices.scan import ScanClient, parse_scan


@pytest.mark.scan_server(speed=100)
def test_a_scan_runs_to_the_end(scan_server):
    async def run(text):
        async with ScanClient(scan_server.url) as client:
            scan_id = await client.submit(parse_scan(text), name="doc example")
            info = await client.wait_until_done(scan_id, poll_period=0.05)
            return info, await client.data(scan_id)

    info, data = asyncio.run(run("loop setpoint 1 3 1 { log setpoint }"))
    assert info.state == "Finished" and info.percentage() == 100
    assert data["setpoint"]["value"] == [1.0, 2.0, 3.0]
# end-doc-example


# doc-example: tornado-service
import json

import tornado.web

from katclient import InspectingClientAsync, ModelChanges


class SensorHandler(tornado.web.RequestHandler):
    """``GET /sensor/NAME``: the latest reading of one sensor, as JSON."""

    def initialize(self, client: InspectingClientAsync) -> None:
        self.client = client

    def get(self, name: str) -> None:
        sensor = self.client.sensors.get(name)
        if sensor is None:
            raise tornado.web.HTTPError(404, f"no sensor {name}")
        timestamp, status, value = sensor.reading
        if not isinstance(value, (bool, int, float, str)):
            value = str(value)  # addresses, lru values, ...
        self.write({"name": name, "status": status.name.lower(), "value": value,
                    "timestamp": timestamp})


def log_state(state, changes: ModelChanges | None) -> None:
    """State callback: runs on the event loop at every change of state."""
    print("device is now", state)
    if changes:
        print("sensors added:", sorted(changes.sensors.added),
              "removed:", sorted(changes.sensors.removed))


async def start_service(
    host: str, port: int
) -> tuple[InspectingClientAsync, tornado.web.Application]:
    client = InspectingClientAsync(host, port)
    client.set_state_callback(log_state)
    await client.connect()  # returns at once; syncing goes on in a task
    await client.until_synced(timeout=10)
    routes = [(r"/sensor/(.+)", SensorHandler, {"client": client})]
    app = tornado.web.Application(routes)
    return client, app
# end-doc-example


@pytest.mark.katcp_device(sensors=8)
async def test_the_tornado_service_serves_mirrored_readings(katcp_device, capsys) -> None:
    from tornado.httpclient import AsyncHTTPClient
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    client, app = await start_service(katcp_device.host, katcp_device.port)
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    http = AsyncHTTPClient(force_instance=True)
    try:
        port = sockets[0].getsockname()[1]
        reply = await http.fetch(f"http://127.0.0.1:{port}/sensor/sensor.00000")
        doc = json.loads(reply.body)
        assert doc["name"] == "sensor.00000" and doc["status"] == "nominal"
        assert isinstance(doc["value"], int)  # sensor.00000 of the fake is an integer sensor
        missing = await http.fetch(f"http://127.0.0.1:{port}/sensor/nope", raise_error=False)
        assert missing.code == 404
    finally:
        http.close()
        server.stop()
        await server.close_all_connections()
        await client.aclose()
    printed = capsys.readouterr().out
    assert "device is now [connected synced !model_changed data_synced]" in printed
    assert "sensor.00007" in printed  # the first sync reported all eight sensors as added


# doc-example: scan-language
from katclient.devices.scan import Delay, Log, Loop, Set, format_scan


def test_the_text_language_round_trips() -> None:
    text = "set shutter open; loop motor_x 0 2 0.5 { delay 0.1; log motor_x }"
    commands = parse_scan(text)
    assert list(commands) == [
        Set("shutter", "open"),
        Loop("motor_x", 0, 2, 0.5, [Delay(0.1), Log("motor_x")]),
    ]
    assert parse_scan(format_scan(commands)) == commands  # a round trip
    assert parse_scan(format_scan(commands, one_line=True)) == commands
    assert "<loop>" in commands.to_xml()  # what the scan server receives
# end-doc-example


# doc-example: console
from katclient import BlockingClient, Events


def console_session(target: str) -> None:
    events = Events.LISTEN_REQUEST_COMPLETED
    client = BlockingClient(timeout=10.0, enabled_events=events)
    with client.connect(target):  # blocks until synced; disconnects at the end
        status = client.get_status()  # an immutable snapshot
        print(status.sync_state.value, status.protocol, status.sensor_count,
              "sensors")

        reply, informs = client.requests["echo"]("hello")  # a request is a callable
        print("echo replied", reply.text_arguments())

        client.simple_request("set-sensor", "sensor.00000", 42)
        reading = client.sensors["sensor.00000"].wait(42)  # until the mirror has it
        print("sensor.00000 is", reading.value, reading.status.name)

        pending = client.request_async("slow-echo", 0.5, "later")  # returns at once
        event = client.read_event(timeout=5)  # or poll pending.completed
        print(type(event).__name__, event.name, event.is_success)
        reply, informs = pending.wait_for_completion(timeout=5)
        print("slow-echo replied", reply.text_arguments())
# end-doc-example


@pytest.mark.katcp_device(sensors=4, update_rate=0)
def test_the_console_session(katcp_device, capsys) -> None:
    console_session(katcp_device.target)
    assert capsys.readouterr().out.splitlines() == [
        "synced 5.1-BIMT 4 sensors",
        "echo replied ['ok', 'hello']",
        "sensor.00000 is 42 NOMINAL",
        "RequestCompletedEvent slow-echo True",
        "slow-echo replied ['ok', 'later']",
    ]


# doc-example: blocking-virtual
def test_a_virtual_device_in_front_of_a_fake(scan_server):
    client = BlockingClient(timeout=20)
    with client.connect(scan_server.target, wait_synced=True):
        assert client.sensors["server.version"].value == "4.7.0"
        assert client.sensors["server.connected"].value is True
# end-doc-example


# doc-example: opticon-python
from katclient.devices.opticon import OpticonClient


async def heat_to(host: str, port: int, setpoint: str) -> str:
    async with OpticonClient(host, port) as dash:
        fields = await dash.list_fields()  # {'Heater': ['Setpoint Entry', ...]}
        assert "Setpoint Entry" in fields["Heater"]
        # set_field_verified waits until a read-back shows the new value
        await dash.set_field_verified("Heater", "Setpoint Entry", setpoint)
        await dash.do_confirm("Heater")  # apply the input fields to the instrument
        return await dash.get_field("Heater", "Setpoint Entry")
# end-doc-example


async def test_the_opticon_example(opticon_dashboard) -> None:
    assert await heat_to(opticon_dashboard.host, opticon_dashboard.port, "40") == "40"


# doc-example: scrutiny-python
from katclient.devices.scrutiny import DeviceCommState, ScrutinyClient


async def scrutiny_tour(host: str, port: int) -> None:
    async with ScrutinyClient(host, port) as client:  # reconnects if need be
        status = await client.until_device_ready(timeout=10)
        print("device", status.device_comm_state.name,
              "firmware", status.sfd_firmware_id)
        path = "/static/main.cpp/counter_enable"
        await client.write(path, True)  # returns once the device confirmed
        value = await client.read_value(path)  # the next update
        print("counter_enable is", value.value)
        print("4 bytes at 0x1000:", len(await client.read_memory(0x1000, 4)))
# end-doc-example


async def test_the_scrutiny_example(scrutiny_server, capsys) -> None:
    await scrutiny_tour(scrutiny_server.host, scrutiny_server.port)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"device {DeviceCommState.CONNECTED_READY.name} firmware ")
    assert out[1:] == ["counter_enable is True", "4 bytes at 0x1000: 4"]
