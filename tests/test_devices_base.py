"""The virtual-device framework: name mapping, batch model updates, backend life cycle."""

import asyncio

import pytest

from katclient.client.backoff import ExponentialRandomBackoff
from katclient.client.inspecting import InspectingClientAsync
from katclient.devices.base import NameMap, VirtualDevice, katcp_name
from katclient.errors import InvalidUsage
from katclient.protocol import Message, Status
from katclient.server import Sensor


@pytest.mark.parametrize(
    ("foreign", "expected"),
    [
        ("/a/b/c", "a.b.c"),
        ("/Path/To/My Var", "path.to.my-var"),
        ("/x//y", "x.y"),
        ("/1abc/q", "x1abc.q"),
        ("/alias/Voltage [V]", "alias.voltage-v"),
        ("", "x"),
    ],
)
def test_katcp_name(foreign: str, expected: str) -> None:
    assert katcp_name(foreign) == expected


def test_name_map_collisions_and_both_forms() -> None:
    names = NameMap(reserved={"server.connected"})
    assert names.add("/a/B") == "a.b"
    assert names.add("/a/b") == "a.b-2"
    assert names.add("/a/B") == "a.b"
    assert names.add("/server/connected") == "server.connected-2"
    assert names.resolve("a.b-2") == "/a/b" and names.resolve("/a/b") == "/a/b"
    with pytest.raises(InvalidUsage):
        names.resolve("nope")
    names.discard("/a/b")
    assert "a.b-2" not in names and len(names) == 2


class FakeBackend:
    """A backend that can be made to fail or end its connection."""

    def __init__(self) -> None:
        self.values = {"/v/one": 1.0, "/v/two": 2.0}
        self.connects = 0
        self.fail = False
        self.drop = asyncio.Event()


class Toy(VirtualDevice):
    SCHEME = "toy"
    STATUS_SENSORS = frozenset({"server.connected"})

    def __init__(self, backend: FakeBackend, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__("backend", 1, reconnect_delay=ExponentialRandomBackoff(0.01, 0.05, 2, 0), **kw)
        self.backend = backend
        self.names = NameMap()
        self.add_sensor(Sensor("boolean", "server.connected", "Backend link up", default=False,
                               initial_status=Status.NOMINAL))

    async def run_backend(self) -> None:
        self.backend.connects += 1
        if self.backend.fail:
            raise ConnectionRefusedError("backend down")
        wanted = []
        for path, value in self.backend.values.items():
            s = Sensor("float", self.names.add(path), f"{path} mirrored")
            s.set_value(value)
            wanted.append(s)
        self.replace_sensors(wanted, keep=self.STATUS_SENSORS)
        self.sensors["server.connected"].set_value(True)
        self.backend_ready.set()
        self.backend.drop.clear()
        await self.backend.drop.wait()

    async def close_backend(self) -> None:
        if "server.connected" in self.sensors:
            self.sensors["server.connected"].set_value(False)


async def test_virtual_device_follows_its_backend() -> None:
    backend = FakeBackend()
    dev = Toy(backend)
    host, port = await dev.start()
    client = InspectingClientAsync(host, port)
    try:
        await dev.wait_backend_ready(5)
        await client.connect()
        await client.until_synced(5)
        assert client.sensors["v.one"].value == 1.0 and client.sensors["server.connected"].value is True
        assert client.sensors["v.one"].description.startswith("/v/one")

        # The backend's model changes: one #interface-changed, the client re-syncs.
        seen: list[Message] = []
        client.hook_inform("interface-changed", seen.append)
        backend.values = {"/v/one": 1.0, "/v/three": 3.0}
        backend.drop.set()
        await asyncio.wait_for(_until(lambda: "v.three" in client.sensors and client.synced), 5)
        assert "v.two" not in client.sensors and len(seen) == 1

        # The backend goes away: values kept, status unreachable, link sensor false.
        backend.fail = True
        backend.drop.set()
        await asyncio.wait_for(_until(lambda: client.sensors["v.one"].status is Status.UNREACHABLE), 5)
        assert client.sensors["v.one"].value == 1.0
        await asyncio.wait_for(_until(lambda: client.sensors["server.connected"].value is False), 5)
        assert client.sensors["server.connected"].status is Status.NOMINAL
        connects = backend.connects
        await asyncio.wait_for(_until(lambda: backend.connects >= connects + 2), 5)  # retried, backing off

        # It comes back by itself.
        backend.fail = False
        await asyncio.wait_for(_until(lambda: client.sensors["v.one"].status is Status.NOMINAL), 5)
    finally:
        await client.aclose()
        await dev.stop()
    assert dev._backend_task is None


async def _until(predicate) -> None:  # type: ignore[no-untyped-def]
    while not predicate():
        await asyncio.sleep(0.005)


def test_from_target_converts_cli_option_strings() -> None:
    class Opts(VirtualDevice):
        def __init__(self, host: str, port: int, *, rate: float = 1.0, count: int = 1, flag: bool = False,
                     **kw: object) -> None:
            super().__init__(host, port, **kw)  # type: ignore[arg-type]
            self.rate, self.count, self.flag = rate, count, flag

    dev = Opts.from_target("h", 1, rate="0.25", count="3", flag="true")
    assert (dev.rate, dev.count, dev.flag) == (0.25, 3, True)
    with pytest.raises(InvalidUsage, match="rate"):
        Opts.from_target("h", 1, rate="fast")
    with pytest.raises(InvalidUsage, match="flag"):
        Opts.from_target("h", 1, flag="perhaps")


async def test_start_waits_for_the_first_backend_attempt() -> None:
    backend = FakeBackend()
    dev = Toy(backend, startup_wait=5.0)
    try:
        await dev.start()
        assert dev.backend_ready.is_set() and "v.one" in dev.sensors  # model there when start returns
    finally:
        await dev.stop()
    backend.fail = True
    down = Toy(backend, startup_wait=5.0)
    try:
        await down.start()  # a failed first attempt ends the wait at once
        assert not down.backend_ready.is_set() and down.last_backend_error is not None
    finally:
        await down.stop()
