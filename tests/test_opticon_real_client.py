"""pyopticon's own socket client (``PyOpticonSocketClient``, pyopticon 0.2.1) against the fake dashboard.

``import pyopticon`` runs the package ``__init__``, which imports the dashboard and with it tkinter and
every widget module; ``pyopticon.socket_client`` itself imports only socket, time, json and inspect.  So
the module is loaded from its file, without the package: these tests need neither Tk nor a display.

The client is blocking and always connects to 127.0.0.1 (protocols/pyopticon.md 1.3); it runs in a
worker thread while the fake serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import pathlib
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import Any, TypeVar

import pytest

from fake_servers.opticon_dashboard import FakeOpticonDashboard
from katclient.devices.opticon.protocol import DOCUMENTED_INTROSPECTION_EXPRESSION

WAIT = 5.0  # bound on every wait, in seconds; never reached when things work
T = TypeVar("T")


def load_socket_client() -> ModuleType | None:
    """Load ``pyopticon/socket_client.py`` by path (None when pyopticon is not installed)."""
    spec = importlib.util.find_spec("pyopticon")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "socket_client.py"
    module_spec = importlib.util.spec_from_file_location("pyopticon_socket_client", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


socket_client = load_socket_client()
if socket_client is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("pyopticon must be installed in CI (pip install pyopticon pyserial numpy)")
    pytest.skip("pyopticon is not installed", allow_module_level=True)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpticonDashboard]:
    server = FakeOpticonDashboard(speed=1000.0, poll_interval=0.01)
    await server.start()
    yield server
    await server.stop()


async def with_client(fake: FakeOpticonDashboard, body: Callable[[Any], T], handle_errors: str = "none") -> T:
    """Run *body(client)* in a thread with a connected real client, closing it afterwards."""

    def run() -> T:
        assert socket_client is not None
        client = socket_client.PyOpticonSocketClient(socket_number=fake.ports[0], handle_errors=handle_errors)
        try:
            return body(client)
        finally:
            client.close()

    return await asyncio.wait_for(asyncio.to_thread(run), 4 * WAIT)


def open_the_valve() -> None:
    get_dashboard().set_field("Valve", "Position Selection", "Open", False)  # noqa: F821


def mark_with_lambda() -> None:
    get_dashboard().get_widget_by_nickname("Heater").attributes["Setpoint Entry"].set("7")  # noqa: F821


async def test_get_set_confirm(fake: FakeOpticonDashboard) -> None:
    def body(c: Any) -> list[str]:
        return [
            c.get_field("Heater", "Mode Selection"),
            c.set_field("Heater", "Setpoint Entry", "70"),
            c.set_field("Heater", "Mode Selection", "On", printout=False),
        ]

    assert await with_client(fake, body) == ["Off", "Success", "Success"]
    await fake.wait_until(lambda: fake.dashboard.pending == 0, WAIT)
    await fake.wait_until(lambda: fake.sockets_connected == 0, WAIT)
    results = await with_client(
        fake, lambda c: [c.get_field("Heater", "Setpoint Entry"), c.do_confirm("Heater", printout=False)]
    )
    assert results == ["70", "Success"]
    await fake.wait_until(lambda: float(fake.dashboard.get_field("Heater", "Temperature")) > 69.0, WAIT)
    assert fake.closes == 2  # the client's close() sent Close each time


async def test_eval_and_documented_introspection(fake: FakeOpticonDashboard) -> None:
    def body(c: Any) -> list[str]:
        return [
            c.do_eval("get_dashboard().get_field('MFC', 'Gas Selection')"),
            c.do_eval(DOCUMENTED_INTROSPECTION_EXPRESSION),
        ]

    gas, listing = await with_client(fake, body)
    assert gas == "N2"
    assert eval(listing)["Valve"] == ["Position Selection", "Actual Position"]


async def test_exec_of_functions(fake: FakeOpticonDashboard) -> None:
    results = await with_client(fake, lambda c: [c.do_exec(open_the_valve), c.do_exec(mark_with_lambda)])
    assert results == ["Success", "Success"]
    await fake.wait_until(lambda: fake.dashboard.pending == 0, WAIT)
    assert fake.dashboard.get_field("Valve", "Position Selection") == "Open"
    assert fake.dashboard.get_field("Heater", "Setpoint Entry") == "7"


async def test_error_replies_in_each_mode(
    fake: FakeOpticonDashboard, capsys: pytest.CaptureFixture[str]
) -> None:
    def body(c: Any) -> list[str]:
        return [
            c.get_field("Nope", "x"),
            c.set_field("Nope", "x", "1"),
            c.do_confirm("Nope"),
            c.do_eval("1/0"),
            c.get_field("Heater", "Nope", printout=True),
        ]

    assert await with_client(fake, body) == [
        "Error: 'Nope'",
        "Error: 'Nope'",
        "Error: 'Nope'",
        "Error: division by zero",
        "Error: 'Nope'",
    ]

    await fake.wait_until(lambda: fake.sockets_connected == 0, WAIT)
    assert await with_client(fake, lambda c: c.get_field("Nope", "x"), "print") == "Error: 'Nope'"
    assert "In Get, Error: 'Nope'" in capsys.readouterr().out

    def raising(c: Any) -> str:
        with pytest.raises(Exception, match=r"^In Eval, Error: division by zero$"):
            c.do_eval("1/0")
        return str(c.get_field("Valve", "Actual Position"))

    await fake.wait_until(lambda: fake.sockets_connected == 0, WAIT)
    assert await with_client(fake, raising, "exception") == "Closed"


async def test_long_reply_desyncs_the_real_client_as_on_a_real_dashboard(fake: FakeOpticonDashboard) -> None:
    """The fake sends a long reply whole; the real client reads 1024 bytes and gets the rest next time
    (protocols/pyopticon.md 1.1: "That desync is a client bug.  A faithful fake should still send the whole
    reply.")."""

    def body(c: Any) -> list[str]:
        first = c.do_eval("'a' * 1500")
        fake_sent_all = c.socket_obj.recv(1024).decode()  # the rest is already in the socket
        return [first, fake_sent_all]

    first, rest = await with_client(fake, body)
    assert first == "a" * 1024
    assert rest == "a" * 476
