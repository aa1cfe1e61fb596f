"""DeviceServer speaking KATCP v4 (protocols/katcp.md 1.4, checked on the wire against katcp-python)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from katclient.protocol import Status
from katclient.server import DeviceServer, Sensor
from katclient.server.testing import LineClient


class V4Device(DeviceServer):
    VERSION = "olddev-4.1"
    BUILD_STATE = "olddev-4.1.7"


@pytest.fixture
async def v4() -> AsyncIterator[tuple[V4Device, LineClient]]:
    server = V4Device(protocol="4.0", clock=lambda: 1795297929.759)
    server.add_sensor(Sensor("timestamp", "t", "A time", "", default=1795297929.5, initial_status=Status.NOMINAL))
    server.add_sensor(Sensor("float", "f", "A float", "V", default=0.5, initial_status=Status.NOMINAL))
    client, _ = LineClient.pair(server)
    yield server, client
    await client.close()
    await server.stop()


async def test_connect_informs_are_version_and_build_state(v4: tuple[V4Device, LineClient]) -> None:
    _, client = v4
    assert bytes(await client.next_message()) == b"#version olddev-4.1\n"
    assert bytes(await client.next_message()) == b"#build-state olddev-4.1.7\n"


async def test_timestamps_are_milliseconds(v4: tuple[V4Device, LineClient]) -> None:
    server, client = v4
    server.sensors["f"].set_value(1.5, timestamp=1795297929.807)
    server.sensors["t"].set_value(1795297929.5, timestamp=1795297929.9)
    reply, informs = await client.request("sensor-value", mid=None)
    assert [bytes(m) for m in informs] == [
        b"#sensor-value 1795297929807 1 f nominal 1.5\n",
        b"#sensor-value 1795297929900 1 t nominal 1795297929500\n",
    ]
    client.send_raw(b"!\n")  # garbage: the #log timestamp is in ms too
    log = await client.wait_inform("log")
    assert log.arguments[1] == b"1795297929759"


async def test_mids_are_only_echoed_and_v5_requests_are_unknown(v4: tuple[V4Device, LineClient]) -> None:
    _, client = v4
    client.send_raw(b"?watchdog[3]\n")
    assert bytes(await client.wait_for(lambda m: m.name == "watchdog")) == b"!watchdog[3] ok\n"
    reply, _ = await client.request("version-list", mid=None)
    assert bytes(reply) == b"!version-list invalid Unknown\\_request.\n"
    reply, _ = await client.request("request-timeout-hint", mid=None)
    assert reply.arguments == (b"invalid", b"Unknown request.")
    reply, informs = await client.request("help", mid=None)
    assert len(informs) == 10 and reply.arguments == (b"ok", b"10")


async def test_v4_strategies(v4: tuple[V4Device, LineClient]) -> None:
    _, client = v4
    reply, _ = await client.request("sensor-sampling", "f", "period", "500", mid=None)
    assert reply.arguments == (b"ok", b"f", b"period", b"500")
    reply, _ = await client.request("sensor-sampling", "f", "differential", "0.25", mid=None)
    assert reply.arguments == (b"ok", b"f", b"differential", b"0.25")
    for strategy in (("event-rate", "1", "2"), ("differential-rate", "1", "1", "2")):
        reply, _ = await client.request("sensor-sampling", "f", *strategy, mid=None)
        assert reply.arguments[0] == b"fail" and b"needs KATCP v5" in reply.arguments[1]
    # no flag B in v4: a comma is just part of an (unknown) name
    reply, _ = await client.request("sensor-sampling", "f,t", "auto", mid=None)
    assert reply.arguments[0] == b"fail" and b"Unknown sensor name" in reply.arguments[1]
