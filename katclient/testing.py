"""pytest plugin: katclient's fake servers as fixtures for users' own tests.

Installed with katclient (entry point ``pytest11``), so any project that does
``pip install katclient`` gets these fixtures with no import:

``katcp_device``, ``scrutiny_server``, ``opticon_dashboard``, ``scan_server``
    A fake started on a free loopback port for the test and stopped after it.  Each
    yields a :class:`RunningFake` (``.host``, ``.port``, ``.address``, ``.target``,
    e.g. ``"scan://127.0.0.1:40123"``).  Options go through a marker of the same name,
    e.g. ``@pytest.mark.katcp_device(sensors=100, protocol="4.0")``.
``katcp_device_factory``, ``scrutiny_server_factory``, ``opticon_dashboard_factory``, ``scan_server_factory``
    Call with options to start as many fakes as a test needs; all are stopped after it.
``inspecting_client``
    A :class:`katclient.BlockingClient` connected and synced to a target: the marker
    ``@pytest.mark.inspecting_client(target="HOST:PORT")``, else a fresh ``katcp_device``.

Every fake runs in its own event loop in a background thread (an
:class:`~katclient.client.blocking.IOThread`), so the fixtures work in
plain (synchronous) tests and in ``async def`` tests alike, and a test's own loop is
never shared with the fake.  Example::

    def test_scan_runs(scan_server):
        from katclient.devices.scan import ScanClient, Set, Wait
        import asyncio

        async def go():
            async with ScanClient(scan_server.url) as client:
                scan_id = await client.submit([Set("motor", 5), Wait("motor", 5)], name="t")
                info = await client.wait_until_done(scan_id, poll_period=0.05)
            return info
        assert asyncio.run(go()).state == "Finished"
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from katclient.client.blocking import IOThread
from katclient.errors import KatclientError

__all__ = ["RunningFake", "start_fake"]

#: Seconds allowed for a fake to start or stop.
FAKE_START_TIMEOUT = 30.0

_FAKES: dict[str, tuple[str, str, str]] = {
    # fixture name: (module, class, target scheme)
    "katcp_device": ("fake_servers.katcp_device", "FakeKatcpDevice", "katcp"),
    "scrutiny_server": ("fake_servers.scrutiny_server", "FakeScrutinyServer", "scrutiny"),
    "opticon_dashboard": ("fake_servers.opticon_dashboard", "FakeOpticonDashboard", "opticon"),
    "scan_server": ("fake_servers.scan_server", "FakeScanServer", "scan"),
}


class RunningFake:
    """A fake server running in its own event-loop thread.

    :ivar fake: the fake object itself; touch it only through :meth:`call` (it belongs
        to the fake's loop thread).
    :ivar host: bound host.
    :ivar port: bound port.
    :ivar scheme: the katclient target scheme (``katcp``, ``scrutiny``, ``opticon``, ``scan``).
    """

    def __init__(self, factory: Callable[[], Any], scheme: str) -> None:
        self.scheme = scheme
        self.fake: Any = None
        self._io = IOThread(f"katclient-fake-{scheme}")
        self._io.start()

        async def start() -> tuple[str, int]:
            self.fake = factory()
            address: tuple[str, int] = await self.fake.start()
            return address

        try:
            self.host, self.port = self._io.run(start(), FAKE_START_TIMEOUT)
        except BaseException:
            self._io.stop(FAKE_START_TIMEOUT)
            raise

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``."""
        return (self.host, self.port)

    @property
    def target(self) -> str:
        """A katclient TARGET string, e.g. ``scrutiny://127.0.0.1:40123``."""
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://host:port`` (the scan server's REST base URL)."""
        return f"http://{self.host}:{self.port}"

    def call(self, func: Callable[..., Any], *args: Any, timeout: float | None = FAKE_START_TIMEOUT) -> Any:
        """Run ``func(*args)`` in the fake's loop thread and return its result (awaited if a coroutine).

        :raises KatclientTimeoutError: after ``timeout`` seconds.
        """

        async def run() -> Any:
            result = func(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return self._io.run(run(), timeout)

    def stop(self) -> None:
        """Stop the fake and its thread (idempotent)."""
        if not self._io.running:
            return
        try:
            if self.fake is not None:
                self._io.run(self.fake.stop(), FAKE_START_TIMEOUT)
        except KatclientError:
            pass  # the thread is stopped below either way; leftover tasks are cancelled
        finally:
            self._io.stop(FAKE_START_TIMEOUT)

    def __repr__(self) -> str:
        return f"<RunningFake {self.target}>"


def start_fake(kind: str, **options: Any) -> RunningFake:
    """Start a fake by fixture name (``katcp_device``, ``scrutiny_server``, ``opticon_dashboard``,
    ``scan_server``) on a free loopback port, with constructor ``options``.

    :raises KeyError: for an unknown kind.
    """
    import importlib

    module, cls_name, scheme = _FAKES[kind]
    cls = getattr(importlib.import_module(module), cls_name)
    options.setdefault("host", "127.0.0.1")
    options.setdefault("port", 0)
    return RunningFake(lambda: cls(**options), scheme)


def pytest_configure(config: pytest.Config) -> None:
    for name in _FAKES:
        config.addinivalue_line("markers", f"{name}(**options): options for the {name} fixture's fake")
    config.addinivalue_line("markers", "inspecting_client(target=None, **options): what inspecting_client syncs to")


def _factory(kind: str) -> Callable[..., Any]:
    @pytest.fixture
    def factory() -> Iterator[Callable[..., RunningFake]]:
        started: list[RunningFake] = []

        def make(**options: Any) -> RunningFake:
            fake = start_fake(kind, **options)
            started.append(fake)
            return fake

        yield make
        for fake in reversed(started):
            fake.stop()

    factory.__doc__ = f"Factory fixture: call with options to start fakes ({kind}); all stop after the test."
    return factory


def _single(kind: str) -> Callable[..., Any]:
    @pytest.fixture
    def fixture(request: pytest.FixtureRequest) -> Iterator[RunningFake]:
        marker = request.node.get_closest_marker(kind)
        options = dict(marker.kwargs) if marker is not None else {}
        fake = start_fake(kind, **options)
        try:
            yield fake
        finally:
            fake.stop()

    fixture.__doc__ = f"A {kind} fake on a free port for one test (options: @pytest.mark.{kind}(...))."
    return fixture


katcp_device = _single("katcp_device")
scrutiny_server = _single("scrutiny_server")
opticon_dashboard = _single("opticon_dashboard")
scan_server = _single("scan_server")
katcp_device_factory = _factory("katcp_device")
scrutiny_server_factory = _factory("scrutiny_server")
opticon_dashboard_factory = _factory("opticon_dashboard")
scan_server_factory = _factory("scan_server")


@pytest.fixture
def inspecting_client(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A :class:`katclient.BlockingClient` connected and synced to a target.

    The target comes from ``@pytest.mark.inspecting_client(target="HOST:PORT")`` (any
    TARGET string, virtual devices included; other marker options go to
    ``BlockingClient.connect``), else from the ``katcp_device`` fixture.  It is
    disconnected, with its thread joined, after the test.
    """
    from katclient.client.blocking import BlockingClient

    marker = request.node.get_closest_marker("inspecting_client")
    options = dict(marker.kwargs) if marker is not None else {}
    target = options.pop("target", None)
    if target is None:
        target = request.getfixturevalue("katcp_device").target
    options.setdefault("timeout", FAKE_START_TIMEOUT)
    client = BlockingClient(name="pytest")
    client.connect(target, wait_synced=True, **options)
    try:
        yield client
    finally:
        client.disconnect()
