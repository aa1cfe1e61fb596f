"""katclient's ScrutinyClient against the REAL Scrutiny server (scrutinydebugger 0.16.0) in demo
mode, started with ``tests/peers/scrutiny_server.sh`` (which installs a venv under
``~/.cache/katclient-peers`` on first use, from PyPI).

Always runs; ``KATCLIENT_REAL_SCRUTINY=0`` skips it (e.g. offline).
Facts checked: protocols/scrutiny.md sections 1.3-1.6 and the demo device of section 1.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from katclient.client.backoff import ExponentialRandomBackoff
from katclient.devices.scrutiny import (
    DeviceReady,
    ScrutinyClient,
    ScrutinyError,
    ServerConnected,
    ServerDisconnected,
    SubscriptionsRestored,
    WatchableType,
)
from tests.test_scrutiny_helpers import record, wait_until

if os.environ.get("KATCLIENT_REAL_SCRUTINY") == "0":
    pytest.skip(
        "KATCLIENT_REAL_SCRUTINY=0: not running against the real Scrutiny server", allow_module_level=True
    )

DEMO_FIRMWARE_ID = "deadbeefc001d00d0ff1cebaadf00d00"
COUNTER = "/static/main.cpp/counter"
ENABLE = "/static/main.cpp/counter_enable"
DEMO_PATHS = [
    "/rpv/x1000",
    "/rpv/x2000",
    "/Up Time",
    "/Sine Wave",
    "/Counter/Enable",
    "/Counter/Value",
    "/Alias To RPV2000",
    "/RPV1000 with gain 1000",
    "/static/main.cpp/counter",
    "/static/main.cpp/counter_enable",
    "/global/device/uptime",
    "/global/sinewave_generator/output",
    "/global/sinewave_generator/frequency",
]


class RealServer:
    """Starts and stops the real server through the peer script.

    :param run_dir: where the script keeps its pid file, log and isolated SFD/datalogging storage.
    """

    def __init__(self, run_dir: Path) -> None:
        self.script = Path(__file__).resolve().parent / "peers" / "scrutiny_server.sh"
        self.env = dict(os.environ, SCRUTINY_RUN_DIR=str(run_dir))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()

    def _run(self, command: str, timeout: float) -> str:
        result = subprocess.run(
            ["bash", str(self.script), command, str(self.port)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.env,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{self.script} {command} failed: {result.stdout}{result.stderr}")
        return result.stdout

    def _port_closed(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) != 0

    def start(self) -> None:
        output = self._run("start", 300)  # first use creates the venv
        if "READY" not in output:
            raise RuntimeError(f"real Scrutiny server did not start: {output}")

    def stop(self) -> None:
        self._run("stop", 30)
        deadline = time.monotonic() + 10
        while not self._port_closed():  # the script does not wait for the process to exit
            if time.monotonic() > deadline:
                raise RuntimeError(f"real Scrutiny server still listens on {self.port}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    server = RealServer(tmp_path_factory.mktemp("scrutiny-peer"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(real_server: RealServer) -> AsyncIterator[ScrutinyClient]:
    c = ScrutinyClient("127.0.0.1", real_server.port, backoff=ExponentialRandomBackoff(0.05, 0.5, 2.0, 0.0))
    await c.connect(10)
    await c.until_device_ready(10)
    yield c
    await c.close()


async def test_status_and_device_info(client: ScrutinyClient) -> None:
    status = client.status
    assert status is not None and status.device_ready and status.link.demo_mode
    assert status.sfd_firmware_id == DEMO_FIRMWARE_ID
    info = await client.get_device_info()
    assert info is not None and info.display_name == "EmulatedDevice"
    assert info.session_id == status.device_session_id
    assert [(r.start, r.end) for r in info.readonly_memory_regions] == [(0x1800, 0x1FFF)]
    stats = await client.get_server_stats()
    assert stats.client_count >= 1
    assert await client.echo("real") == "real"


async def test_demo_watchables(client: ScrutinyClient) -> None:
    listing = await client.list_watchables()
    assert listing.paths() == DEMO_PATHS
    count = await client.get_watchable_count()
    assert (count.var, count.alias, count.rpv) == (5, 6, 2)
    info = await client.get_watchable_info([COUNTER, "/RPV1000 with gain 1000"])
    assert info[COUNTER].address == 0x1000 and info[COUNTER].watchable_type is WatchableType.VAR
    assert info["/RPV1000 with gain 1000"].gain == 1000.0
    assert await client.get_installed_sfds() == {}
    loaded = await client.get_loaded_sfd()
    assert loaded is not None and loaded.firmware_id == DEMO_FIRMWARE_ID


async def test_subscribe_and_values_change(client: ScrutinyClient) -> None:
    _, values = record(client)
    await client.subscribe(["/Sine Wave", "/rpv/x1000", "/Up Time"])
    await values.wait_count(lambda v: v.path == "/Sine Wave", 3)
    sines = {v.value for v in values.items if v.path == "/Sine Wave"}
    assert len(sines) >= 2  # the sine wave moves
    rpv = await values.wait_for(lambda v: v.path == "/rpv/x1000")
    assert rpv.raw is None and 0.0 <= rpv.value < 1.0
    assert abs(rpv.timestamp - time.time()) < 60


async def test_write_enables_the_counter(client: ScrutinyClient) -> None:
    _, values = record(client)
    await client.subscribe([COUNTER])
    first = await values.wait_for(lambda v: v.path == COUNTER)
    await client.write(ENABLE, True)
    try:
        advanced = await values.wait_for(
            lambda v: v.path == COUNTER and v.value > first.value + 0.5, timeout=10
        )
        assert advanced.value > first.value
    finally:
        results = await client.write_batch([(ENABLE, False), ("/rpv/x2000", 5)])
    assert all(r.success for r in results)
    with pytest.raises(ScrutinyError, match="Unknown watchable path /nope"):
        await client.write("/nope", 1)


async def test_memory_and_user_commands(client: ScrutinyClient) -> None:
    await client.write_memory(0x1200, b"\x05\x06")
    assert await client.read_memory(0x1200, 2) == b"\x05\x06"
    with pytest.raises(ScrutinyError) as err:
        await client.read_memory(0, 4)
    assert err.value.msg == "Forbidden region"
    with pytest.raises(ScrutinyError, match="Size too big"):
        await client.read_memory(0x1000, 20000)
    with pytest.raises(ScrutinyError, match="Read only"):
        await client.write_memory(0x1800, b"\x00")
    assert (await client.user_command(1, b"\x01")).data == b"\x01"
    with pytest.raises(ScrutinyError, match="FailureToProceed"):
        await client.user_command(3)
    freq = struct.unpack("<f", await client.read_memory(0x1010, 4))[0]
    assert freq > 0


async def test_server_restart_reconnects_and_resubscribes(
    client: ScrutinyClient, real_server: RealServer
) -> None:
    events, values = record(client)
    await client.subscribe(["/rpv/x1000", COUNTER])
    old_session = client.status.device_session_id if client.status else None
    real_server.stop()
    await events.wait_for(lambda e: isinstance(e, ServerDisconnected), timeout=10)
    mark = len(events.items)
    real_server.start()
    await events.wait_for(lambda e: isinstance(e, ServerConnected), start=mark, timeout=20)
    ready = await events.wait_for(lambda e: isinstance(e, DeviceReady), start=mark, timeout=20)
    assert ready.session_id != old_session
    # RPVs come back with the device session, the counter with the SFD (maybe in two steps)
    await wait_until(lambda: all(s.active for s in client.subscriptions.values()), timeout=20)
    restored = set().union(*(e.restored for e in events.items[mark:] if isinstance(e, SubscriptionsRestored)))
    assert {"/rpv/x1000", COUNTER} <= restored
    mark_v = len(values.items)
    await values.wait_for(lambda v: v.path == "/rpv/x1000", start=mark_v, timeout=10)
    await values.wait_for(lambda v: v.path == COUNTER, start=mark_v, timeout=10)
