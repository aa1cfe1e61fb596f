"""Automatic, coalesced ``#interface-changed`` and what happens to strategies on interface changes.

Sources: KATCP v5 spec section 3.5 (``#interface-changed`` and its detail forms);
protocols/katcp.md 1.9 (katcp-python and aiokatcp never send it themselves; katclient
does) and 3 section 1.4 (aiokatcp's client re-lists on any ``#interface-changed``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from katclient.protocol import Message, Sampling, Status
from katclient.server import DeviceServer, RequestContext, Sensor
from katclient.server.testing import LineClient


async def noop(ctx: RequestContext, *args: bytes) -> None:
    return None


@pytest.fixture
async def pair() -> AsyncIterator[tuple[DeviceServer, LineClient]]:
    server = DeviceServer()
    server.add_sensor(Sensor("integer", "a"))
    client, _ = LineClient.pair(server)
    for _ in range(3):
        await client.next_message()
    yield server, client
    await client.close()
    await server.stop()


async def changes(client: LineClient) -> list[tuple[bytes, ...]]:
    """Every ``#interface-changed`` received once the loop has settled."""
    await client.request("watchdog")  # the server flushed everything queued before the reply
    return [m.arguments for m in client.queued() if m.name == "interface-changed"]


async def test_single_changes_use_the_detail_form(pair: tuple[DeviceServer, LineClient]) -> None:
    server, client = pair
    server.add_sensor(Sensor("float", "b"))
    assert await changes(client) == [(b"sensor", b"b", b"added")]
    server.add_sensor(Sensor("string", "b"))  # replaced under the same name
    assert await changes(client) == [(b"sensor", b"b", b"modified")]
    server.remove_sensor("b")
    assert await changes(client) == [(b"sensor", b"b", b"removed")]
    server.add_request("new-req", noop, "A new request.")
    assert await changes(client) == [(b"request", b"new-req", b"added")]
    server.add_request("new-req", noop, "Changed help.")
    assert await changes(client) == [(b"request", b"new-req", b"modified")]
    server.remove_request("new-req")
    assert await changes(client) == [(b"request", b"new-req", b"removed")]
    del server.sensors["a"]  # editing the SensorSet directly works the same way
    assert await changes(client) == [(b"sensor", b"a", b"removed")]


async def test_ten_thousand_adds_send_one_inform(pair: tuple[DeviceServer, LineClient]) -> None:
    server, client = pair
    for i in range(10_000):
        server.add_sensor(Sensor("integer", f"dyn.{i:05d}"))
    assert await changes(client) == [(b"sensor-list",)]
    for i in range(100):
        server.add_request(f"dyn-{i}", noop, "Dynamic.")
    assert await changes(client) == [(b"request-list",)]
    server.add_sensor(Sensor("integer", "x"))
    server.remove_request("dyn-0")
    assert await changes(client) == [()]  # sensors and requests changed: the bare form
    reply, informs = await client.request("sensor-list")
    assert reply.arguments == (b"ok", b"10002")


async def test_nothing_before_start_or_without_clients_or_in_v4() -> None:
    server = DeviceServer(protocol="4.0")
    client, _ = LineClient.pair(server)
    await client.next_message()
    await client.next_message()
    server.add_sensor(Sensor("integer", "v4"))
    server.add_request("v4-req", noop, "v4.")
    reply, _ = await client.request("sensor-list", mid=None)
    assert reply.arguments == (b"ok", b"1")
    assert not [m for m in client.queued() if m.name == "interface-changed"]
    await client.close()
    await server.stop()

    lonely = DeviceServer()
    lonely.add_sensor(Sensor("integer", "nobody-listens"))  # no clients, no loop needed
    assert lonely._iface_pending == {}


async def test_replacing_or_removing_a_sampled_sensor_drops_its_strategies() -> None:
    calls: list[tuple[str, int, list[Sampling]]] = []

    class Hooked(DeviceServer):
        def sensor_sampling_changed(self, sensor: Sensor, samplings: list[Sampling]) -> None:
            calls.append((sensor.name, id(sensor), samplings))

    server = Hooked()
    old = Sensor("integer", "s", default=1, initial_status=Status.NOMINAL)
    server.add_sensor(old)
    client, conn = LineClient.pair(server)
    assert (await client.request("sensor-sampling", "s", "event"))[0].reply_ok()
    new = Sensor("float", "s", default=2.0, initial_status=Status.NOMINAL)
    server.add_sensor(new)
    assert old.observer_count == 0 and "s" not in conn.samplers
    old.set_value(5)  # the old object is gone: nothing is sent for it
    reply, _ = await client.request("sensor-sampling", "s")
    assert reply.arguments == (b"ok", b"s", b"none")
    statuses = [m for m in client.queued() if m.name == "sensor-status"]
    assert [m.arguments[4] for m in statuses] == [b"1"]
    assert calls[-1] == ("s", id(old), [])
    assert (await client.request("sensor-sampling", "s", "auto"))[0].reply_ok()
    server.remove_sensor("s")
    assert new.observer_count == 0 and calls[-1] == ("s", id(new), [])
    with pytest.raises(KeyError):
        server.remove_sensor("s")
    await client.close()
    await server.stop()


async def test_an_inspecting_client_can_follow_changes(pair: tuple[DeviceServer, LineClient]) -> None:
    server, client = pair

    async def grow() -> None:
        for i in range(5):
            server.add_sensor(Sensor("integer", f"g{i}"))
            await asyncio.sleep(0)

    await grow()
    got = await changes(client)
    assert 1 <= len(got) <= 5
    reply, informs = await client.request("sensor-list")
    assert sorted(m.arguments[0] for m in informs) == [b"a", b"g0", b"g1", b"g2", b"g3", b"g4"]
    assert isinstance(reply, Message)
