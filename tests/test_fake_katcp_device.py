"""The simulated KATCP device in fake_servers/katcp_device.py, in-process and as ``python -m``."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import pytest

from fake_servers.katcp_device import SENSOR_TYPE_CYCLE, FakeKatcpDevice
from katclient.protocol import Message
from katclient.server.testing import LineClient


@pytest.fixture
async def device() -> AsyncIterator[tuple[FakeKatcpDevice, LineClient]]:
    dev = FakeKatcpDevice(sensors=16, requests=3, update_rate=50)
    host, port = await dev.start()
    client = await LineClient.connect(host, port)
    for _ in range(3):
        await client.next_message()
    yield dev, client
    await client.close()
    await dev.stop()


async def changes(client: LineClient) -> list[tuple[bytes, ...]]:
    await client.request("watchdog")
    return [m.arguments for m in client.queued() if m.name == "interface-changed"]


async def test_sensors_of_every_type_that_change(device: tuple[FakeKatcpDevice, LineClient]) -> None:
    dev, client = device
    reply, informs = await client.request("sensor-list")
    assert reply.arguments == (b"ok", b"16")
    assert [m.arguments[0] for m in informs] == [b"sensor.%05d" % i for i in range(16)]
    assert [m.arguments[3].decode() for m in informs[:8]] == list(SENSOR_TYPE_CYCLE)
    assert informs[4].arguments[4:] == (b"on", b"off", b"error")  # discrete values
    names = ",".join(f"sensor.{i:05d}" for i in range(16))
    reply, _ = await client.request("sensor-sampling", names, "event")
    assert reply.reply_ok()
    seen: dict[bytes, set[bytes]] = {}

    def every_sensor_changed(msg: Message) -> bool:
        if msg.name == "sensor-status":
            seen.setdefault(msg.arguments[2], set()).add(msg.arguments[4])
        return len(seen) == 16 and all(len(v) >= 2 for v in seen.values())

    await client.wait_for(every_sensor_changed, timeout=10)
    assert dev.tick >= 1


async def test_requests(device: tuple[FakeKatcpDevice, LineClient]) -> None:
    dev, client = device
    reply, _ = await client.request("echo", "a b", "")
    assert reply.arguments == (b"ok", b"a b", b"")
    reply, _ = await client.request("slow-echo", "0.05", "x")
    assert reply.arguments == (b"ok", b"x")
    reply, informs = await client.request("slow-informs", "3", "0.01")
    assert [m.arguments for m in informs] == [(b"0",), (b"1",), (b"2",)] and reply.arguments == (b"ok", b"3")
    reply, informs = await client.request("request-timeout-hint")
    assert {m.arguments[0] for m in informs} == {b"slow-echo", b"slow-informs"}
    reply, _ = await client.request("slow-echo", "-1")
    assert reply.arguments[0] == b"fail"
    reply, _ = await client.request("fail-always")
    assert reply.arguments == (b"fail", b"This request always fails.")
    for i in range(3):
        reply, _ = await client.request(f"req-{i:05d}")
        assert reply.arguments == (b"ok",)
    reply, _ = await client.request("req-00000", "extra")
    assert reply.arguments[0] == b"fail"
    reply, _ = await client.request("set-sensor", "sensor.00001", "2.75", "warn")
    assert reply.reply_ok()
    assert dev.sensors["sensor.00001"].reading[1:] == (2, 2.75)
    reply, _ = await client.request("set-sensor", "sensor.00006", "127.0.0.1:99")
    assert reply.reply_ok() and str(dev.sensors["sensor.00006"].value) == "127.0.0.1:99"
    reply, _ = await client.request("set-sensor", "sensor.00000", "abc")
    assert reply.arguments[0] == b"fail" and b"integer" in reply.arguments[1]
    reply, _ = await client.request("set-sensor", "nope", "1")
    assert b"Unknown sensor name" in reply.arguments[1]


async def test_interface_changes(device: tuple[FakeKatcpDevice, LineClient]) -> None:
    dev, client = device
    reply, _ = await client.request("add-sensors", "3")
    assert reply.arguments == (b"ok", b"19")
    assert await changes(client) == [(b"sensor-list",)]
    reply, _ = await client.request("add-sensors", "1", "lru")
    assert dev.sensors["dyn.00003"].type.name == "lru"
    assert await changes(client) == [(b"sensor", b"dyn.00003", b"added")]
    reply, _ = await client.request("remove-sensors", "2")
    assert reply.arguments == (b"ok", b"2") and "dyn.00003" not in dev.sensors
    assert await changes(client) == [(b"sensor-list",)]
    reply, _ = await client.request("retype-sensor", "sensor.00000", "float")
    assert reply.reply_ok()
    assert await changes(client) == [(b"sensor", b"sensor.00000", b"modified")]
    reply, informs = await client.request("sensor-list", "sensor.00000")
    assert informs[0].arguments[3] == b"float"
    reply, _ = await client.request("retype-sensor", "sensor.00000", "complex")
    assert reply.arguments[0] == b"fail"
    reply, _ = await client.request("add-requests", "2")
    assert await changes(client) == [(b"request-list",)]
    reply, _ = await client.request("dyn-req-00001")
    assert reply.arguments == (b"ok",)
    reply, _ = await client.request("remove-requests", "5")
    assert reply.arguments == (b"ok", b"2")
    reply, _ = await client.request("dyn-req-00001")
    assert reply.arguments == (b"invalid", b"Unknown request.")


async def test_v4_fake() -> None:
    dev = FakeKatcpDevice(sensors=8, protocol="4.0", update_rate=0)
    host, port = await dev.start()
    client = await LineClient.connect(host, port)
    assert bytes(await client.next_message()) == b"#version fake-katcp-device-1.0\n"
    assert (await client.next_message()).name == "build-state"
    reply, informs = await client.request("sensor-value", "sensor.00005", mid=None)
    assert len(informs[0].arguments[0]) == 13  # a millisecond timestamp
    await client.close()
    await dev.stop()


async def test_ten_thousand_sensors_stay_responsive() -> None:
    dev = FakeKatcpDevice(sensors=10_000, update_rate=20)
    host, port = await dev.start()
    client = await LineClient.connect(host, port)
    reply, informs = await client.request("sensor-list", timeout=20)
    assert reply.arguments == (b"ok", b"10000")
    for _ in range(3):
        reply, _ = await client.request("watchdog", timeout=5)
        assert reply.reply_ok()
    await client.close()
    await dev.stop()


async def test_run_as_a_module_prints_listening_and_stops_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fake_servers.katcp_device", "--port", "0", "--sensors", "5", "--requests", "2",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("listening on 127.0.0.1:")
        port = int(line.strip().rsplit(":", 1)[1])
        client = await LineClient.connect("127.0.0.1", port)
        reply, informs = await client.request("sensor-list")
        assert reply.arguments == (b"ok", b"5")
        reply, _ = await client.request("req-00001")
        assert reply.reply_ok()
        proc.send_signal(signal.SIGTERM)
        await client.wait_inform("disconnect")
        await client.wait_closed()
        await client.close()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
