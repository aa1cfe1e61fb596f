"""The pytest plugin's fixtures, used the way a user's project would."""

import asyncio
import socket
import threading

import pytest

from katclient import InspectingClientAsync
from katclient.devices.opticon import OpticonClient
from katclient.devices.scan import ScanClient, Set, Wait
from katclient.devices.scrutiny import ScrutinyClient


def test_scan_server_fixture_in_a_plain_test(scan_server) -> None:
    async def go():
        async with ScanClient(scan_server.url) as client:
            scan_id = await client.submit([Set("motor", 5), Wait("motor", 5)], name="fixture")
            return await client.wait_until_done(scan_id, poll_period=0.05)

    assert asyncio.run(go()).state == "Finished"
    assert scan_server.target.startswith("scan://127.0.0.1:")


@pytest.mark.katcp_device(sensors=7, protocol="5.0-IM")
async def test_katcp_device_marker_options_in_an_async_test(katcp_device) -> None:
    client = InspectingClientAsync(*katcp_device.address)
    await client.connect()
    try:
        await client.until_synced(10)
        assert len(client.sensors) == 7 and str(client.protocol_flags) == "5.0-IM"
    finally:
        await client.aclose()


def test_factories_start_several_and_stop_them(katcp_device_factory) -> None:
    before = threading.active_count()
    a = katcp_device_factory(sensors=1)
    b = katcp_device_factory(sensors=2)
    assert a.port != b.port
    assert a.call(lambda: len(a.fake.sensors)) == 1
    b.stop()
    with pytest.raises(OSError):
        socket.create_connection(b.address, timeout=2).close()
    assert threading.active_count() == before + 1


async def test_scrutiny_and_opticon_fixtures(scrutiny_server, opticon_dashboard) -> None:
    async with ScrutinyClient(*scrutiny_server.address) as client:
        info = await client.get_server_status()
        assert info is not None
    async with OpticonClient(*opticon_dashboard.address) as dash:
        fields = await dash.list_fields()
        assert fields


def test_inspecting_client_fixture_syncs_to_the_default_device(inspecting_client) -> None:
    assert inspecting_client.get_status().synced
    assert "sensor.00000" in inspecting_client.sensors
    reply, _ = inspecting_client.simple_request("watchdog")
    assert reply.reply_ok()


@pytest.mark.katcp_device(sensors=3, protocol="4.0")
def test_inspecting_client_fixture_follows_katcp_device_marker(inspecting_client) -> None:
    assert len(inspecting_client.sensors) == 3
    assert str(inspecting_client.get_status().protocol).startswith("4.0")
