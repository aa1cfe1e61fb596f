"""Interoperability: aiokatcp's Client with a SensorWatcher against katclient's server and fake device.

aiokatcp (ska-sa, PyPI ``aiokatcp``) is an independent KATCP implementation; its
sensor watcher lists sensors, bulk-subscribes them with ``auto`` and mirrors every
value (protocols/katcp.md 3 section 1.4).  It has no ``lru`` type and skips such
sensors.  Reaching SYNCED and holding every value the server reports via
``?sensor-value`` shows the wire forms agree.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator

import aiokatcp
import pytest

from fake_servers.katcp_device import FakeKatcpDevice
from katclient.protocol import Address, Status
from katclient.server import DeviceServer, RequestContext, Sensor

SYNC_TIMEOUT = 60.0  # generous, bounded: the 10,000-sensor sync takes about a second here


class Mixed(DeviceServer):
    VERSION = "mixed-1.0"
    BUILD_STATE = "mixed-1.0.0"

    async def request_double(self, ctx: RequestContext, x: float) -> float:
        """Double a number."""
        return 2 * x


def mixed_server(protocol: str) -> Mixed:
    server = Mixed(protocol=protocol)
    nominal = Status.NOMINAL
    server.add_sensor(Sensor("integer", "int", "An integer", "count", (-10, 10), default=-3, initial_status=nominal))
    server.add_sensor(Sensor("float", "float", "A float", "V", default=1e-05, initial_status=Status.WARN))
    server.add_sensor(Sensor("boolean", "bool", "A boolean", default=True, initial_status=nominal))
    server.add_sensor(Sensor("discrete", "disc", "A discrete", "", ("on", "off"), default="off",
                             initial_status=nominal))
    server.add_sensor(Sensor("timestamp", "ts", "A timestamp", "", default=1795297929.807324, initial_status=nominal))
    server.add_sensor(Sensor("address", "addr", "An address", default=Address("::1", 7147), initial_status=nominal))
    server.add_sensor(Sensor("string", "str", "A string", default="with spaces\nand\\escapes", initial_status=nominal))
    return server


@pytest.fixture(autouse=True)
def quiet_aiokatcp_lru_warnings(caplog: pytest.LogCaptureFixture) -> None:
    # aiokatcp logs a warning per update of a sensor type it lacks (lru); expected here.
    caplog.set_level(logging.ERROR, logger="aiokatcp.client")


async def open_watcher(host: str, port: int) -> tuple[aiokatcp.Client, aiokatcp.SensorWatcher]:
    client = await aiokatcp.Client.connect(host, port)
    watcher = aiokatcp.SensorWatcher(client)
    client.add_sensor_watcher(watcher)
    await asyncio.wait_for(watcher.synced.wait(), SYNC_TIMEOUT)
    return client, watcher


async def assert_mirror_matches(client: aiokatcp.Client, watcher: aiokatcp.SensorWatcher) -> int:
    """Every mirrored sensor holds the value and status the server reports; returns how many."""
    _, informs = await client.request("sensor-value")
    reported = {m.arguments[2].decode(): m.arguments for m in informs}
    assert set(watcher.sensors) <= set(reported)
    for name, sensor in watcher.sensors.items():
        args = reported[name]
        assert sensor.status.name.lower().encode() == args[3], name
        assert aiokatcp.decode(sensor.stype, args[4]) == sensor.value, name
    return len(watcher.sensors)


async def wait_value(sensor: aiokatcp.Sensor, predicate: object) -> None:
    changed = asyncio.Event()
    sensor.attach(lambda s, r: changed.set())
    for _ in range(100):
        if predicate(sensor.value):  # type: ignore[operator]
            return
        changed.clear()
        await asyncio.wait_for(changed.wait(), 10)
    raise AssertionError(f"{sensor.name} never reached the expected value")


@pytest.fixture(params=["5.1-BIMT", "5.0-IM"])
async def mixed(request: pytest.FixtureRequest) -> AsyncIterator[Mixed]:
    server = mixed_server(request.param)
    await server.start()
    yield server
    await server.stop()


async def test_sensor_watcher_syncs_and_follows_updates(mixed: Mixed) -> None:
    client, watcher = await open_watcher(*mixed.address)
    assert set(watcher.sensors) == set(mixed.sensors)
    assert await assert_mirror_matches(client, watcher) == 7
    assert watcher.sensors["str"].value == b"with spaces\nand\\escapes"
    assert watcher.sensors["float"].status == aiokatcp.Sensor.Status.WARN
    # updates arrive
    mixed.sensors["float"].set_value(2.5)
    mixed.sensors["str"].set_value("new value")
    await wait_value(watcher.sensors["float"], lambda v: v == 2.5)
    await wait_value(watcher.sensors["str"], lambda v: v == b"new value")
    # requests, and an interface change the watcher follows without being told by the device code
    assert await client.request("double", 1.25) == ([b"2.5"], [])
    added = asyncio.Event()
    watcher.sensors.add_add_callback(lambda s: added.set() if s.name == "late" else None)
    mixed.add_sensor(Sensor("integer", "late", "Added later", default=5, initial_status=Status.NOMINAL))
    await asyncio.wait_for(added.wait(), 10)
    await asyncio.wait_for(watcher.synced.wait(), SYNC_TIMEOUT)
    await wait_value(watcher.sensors["late"], lambda v: v == 5)
    assert await assert_mirror_matches(client, watcher) == 8
    client.close()
    await client.wait_closed()


async def test_sensor_watcher_against_the_fake_device_in_process() -> None:
    dev = FakeKatcpDevice(sensors=64, update_rate=0)
    host, port = await dev.start()
    client, watcher = await open_watcher(host, port)
    lru = {n for n, s in dev.sensors.items() if s.type.name == "lru"}
    assert set(watcher.sensors) == set(dev.sensors) - lru and len(lru) == 8
    assert await assert_mirror_matches(client, watcher) == 56
    dev.update_all()
    await wait_value(watcher.sensors["sensor.00001"], lambda v: v == (1 + dev.tick) * 0.25)
    assert await assert_mirror_matches(client, watcher) == 56
    wanted = {"dyn.00000", "dyn.00001", "dyn.00002"}
    all_added = asyncio.Event()
    watcher.sensors.add_add_callback(lambda s: all_added.set() if wanted <= set(watcher.sensors) else None)
    await client.request("add-sensors", 3, "float")
    await asyncio.wait_for(all_added.wait(), 10)
    await asyncio.wait_for(watcher.synced.wait(), SYNC_TIMEOUT)
    assert await assert_mirror_matches(client, watcher) == 59
    client.close()
    await client.wait_closed()
    await dev.stop()


async def test_sensor_watcher_syncs_ten_thousand_sensors_from_the_fake_as_a_subprocess() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fake_servers.katcp_device", "--port", "0", "--sensors", "10000",
        "--update-rate", "0", stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        host, port = line.split()[-1].rsplit(":", 1)
        client, watcher = await open_watcher(host, int(port))
        assert len(watcher.sensors) == 10000 - 1250  # every sensor but aiokatcp's missing lru type
        assert await assert_mirror_matches(client, watcher) == 8750
        # and updates flow
        await client.request("set-sensor", "sensor.09999", "new value", "warn")
        await wait_value(watcher.sensors["sensor.09999"], lambda v: v == b"new value")
        assert watcher.sensors["sensor.09999"].status == aiokatcp.Sensor.Status.WARN
        client.close()
        await client.wait_closed()
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
