"""Wire-level tests of the fake PyOpticon dashboard (protocols/pyopticon.md), with raw sockets."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from fake_servers.opticon_dashboard import FakeOpticonDashboard
from katclient.devices.opticon.protocol import DOCUMENTED_INTROSPECTION_EXPRESSION, INTROSPECTION_EXPRESSION

WAIT = 5.0  # bound on every wait, in seconds; never reached when things work


class Raw:
    """A bare TCP client speaking the wire format by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, fake: FakeOpticonDashboard, port: int | None = None) -> Raw:
        reader, writer = await asyncio.open_connection(fake.host, port or fake.ports[0])
        return cls(reader, writer)

    async def send(self, request: object) -> None:
        self.writer.write(request if isinstance(request, bytes) else json.dumps(request).encode())
        await self.writer.drain()

    async def reply(self) -> str:
        """One reply: on loopback a reply shorter than a segment arrives in one read."""
        return (await asyncio.wait_for(self.reader.read(65536), WAIT)).decode()

    async def exactly(self, n: int) -> str:
        return (await asyncio.wait_for(self.reader.readexactly(n), WAIT)).decode()

    async def ask(self, request: object) -> str:
        await self.send(request)
        return await self.reply()

    async def ended(self) -> bool:
        """True once the peer closed or reset the connection."""
        try:
            return await asyncio.wait_for(self.reader.read(65536), WAIT) == b""
        except ConnectionResetError:
            return True

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionResetError, BrokenPipeError):
            pass


def get(nick: str, field: str, printout: bool = False) -> dict[str, object]:
    return {"cmd": "Get", "widget_nickname": nick, "field_name": field, "printout": printout}


def set_(nick: str, field: str, value: object, printout: bool = False) -> dict[str, object]:
    return {
        "cmd": "Set",
        "widget_nickname": nick,
        "field_name": field,
        "new_value": value,
        "printout": printout,
    }


def eval_(code: str) -> dict[str, object]:
    return {"cmd": "Eval", "code": code, "printout": False}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpticonDashboard]:
    server = FakeOpticonDashboard(speed=1000.0, poll_interval=0.01)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def raw(fake: FakeOpticonDashboard) -> AsyncIterator[Raw]:
    conn = await Raw.open(fake)
    yield conn
    await conn.close()


async def test_get_set_and_asynchronous_apply(fake: FakeOpticonDashboard, raw: Raw) -> None:
    assert await raw.ask(get("Heater", "Setpoint Entry", printout=True)) == "25.0"
    assert await raw.ask(set_("Heater", "Setpoint Entry", "80", printout=True)) == "Success"
    await fake.wait_until(lambda: fake.dashboard.pending == 0, WAIT)
    assert await raw.ask(get("Heater", "Setpoint Entry")) == "80"


async def test_set_answers_success_before_it_applies() -> None:
    slow = FakeOpticonDashboard(set_delay=60.0, poll_interval=0.01)
    await slow.start()
    conn = await Raw.open(slow)
    try:
        assert await conn.ask(set_("Valve", "Position Selection", "Open")) == "Success"
        assert await conn.ask(get("Valve", "Position Selection")) == "Closed"  # not applied yet
        slow.dashboard.apply_pending()
        assert await conn.ask(get("Valve", "Position Selection")) == "Open"
    finally:
        await conn.close()
        await slow.stop()


async def test_error_replies(raw: Raw) -> None:
    assert await raw.ask(get("Nope", "x")) == "Error: 'Nope'"
    assert await raw.ask(get("Heater", "Nope")) == "Error: 'Nope'"
    assert await raw.ask(set_("Nope", "x", "1")) == "Error: 'Nope'"
    assert await raw.ask({"cmd": "Confirm", "widget_nickname": "Nope", "printout": False}) == "Error: 'Nope'"
    assert (
        await raw.ask({"cmd": "Get", "widget_nickname": "Heater", "field_name": "x"}) == "Error: 'printout'"
    )
    assert await raw.ask(eval_("1/0")) == "Error: division by zero"
    # printout builds its log line by concatenation: a number fails; without printout it is stored.
    reply = await raw.ask(set_("Heater", "Setpoint Entry", 5, printout=True))
    assert reply == 'Error: can only concatenate str (not "int") to str'
    assert await raw.ask(set_("Heater", "Setpoint Entry", 5)) == "Success"


async def test_set_of_unknown_field_succeeds_then_fails_in_the_log(
    fake: FakeOpticonDashboard, raw: Raw, caplog: pytest.LogCaptureFixture
) -> None:
    assert await raw.ask(set_("Heater", "Nope", "1")) == "Success"
    await fake.wait_until(lambda: fake.dashboard.pending == 0, WAIT)
    assert "Exception in internal PyOpticon code: 'Nope'" in caplog.text


async def test_numeric_value_reads_back_as_string(fake: FakeOpticonDashboard, raw: Raw) -> None:
    assert await raw.ask(set_("MFC", "Setpoint Entry", 5)) == "Success"
    await fake.wait_until(lambda: fake.dashboard.pending == 0, WAIT)
    assert await raw.ask(get("MFC", "Setpoint Entry")) == "5"


async def test_unknown_command_resends_the_previous_reply(fake: FakeOpticonDashboard, raw: Raw) -> None:
    assert await raw.ask(get("Nope", "x")) == "Error: 'Nope'"
    assert await raw.ask({"cmd": "Bogus"}) == "Error: 'Nope'"
    assert await raw.ask({"cmd": "get", "printout": False}) == "Error: 'Nope'"  # cmd is case-sensitive


async def test_previous_reply_outlives_the_connection(fake: FakeOpticonDashboard, raw: Raw) -> None:
    # The real port thread keeps its last reply in a variable of the thread, not of the connection.
    assert await raw.ask(get("Nope", "x")) == "Error: 'Nope'"
    await raw.send({"cmd": "Close"})
    assert await raw.ended()
    again = await Raw.open(fake)
    try:
        assert await again.ask({"cmd": "Bogus"}) == "Error: 'Nope'"
    finally:
        await again.close()


async def test_unknown_command_first_on_a_port_drops_the_connection(
    fake: FakeOpticonDashboard, raw: Raw
) -> None:
    await raw.send({"cmd": "Bogus"})
    assert await raw.ended()
    assert fake.drops == 1


@pytest.mark.parametrize(
    "payload",
    [
        b'{"cmd":"Get","widget_nickname":"Heater","field_name":"Temperature","printout":false}'
        b'{"cmd":"Get","widget_nickname":"Heater","field_name":"Temperature","printout":false}',
        json.dumps(eval_("'" + "x" * 1100 + "'")).encode(),
        b"{not json",
        b'{"printout": false}',
        b'["Get"]',
        b"\xff\xfe",
    ],
    ids=["two-in-one-recv", "over-1024", "malformed", "no-cmd", "not-a-dict", "not-utf8"],
)
async def test_bad_requests_drop_the_connection_and_the_port_keeps_serving(
    fake: FakeOpticonDashboard, raw: Raw, payload: bytes
) -> None:
    await raw.send(payload)
    assert await raw.ended()
    await fake.wait_until(lambda: fake.sockets_connected == 0, WAIT)
    assert fake.drops == 1
    again = await Raw.open(fake)
    try:
        assert await again.ask(get("Valve", "Position Selection")) == "Closed"
    finally:
        await again.close()


async def test_eval_returning_a_non_str_drops_the_connection(fake: FakeOpticonDashboard, raw: Raw) -> None:
    await raw.send(eval_("1 + 1"))
    assert await raw.ended()
    await fake.wait_until(lambda: fake.drops == 1, WAIT)


async def test_empty_value_sends_zero_bytes(fake: FakeOpticonDashboard, raw: Raw) -> None:
    assert await raw.ask(set_("Heater", "Setpoint Entry", "")) == "Success"
    await fake.wait_until(lambda: fake.dashboard.pending == 0, WAIT)
    before = fake.requests_received
    await raw.send(get("Heater", "Setpoint Entry"))
    await fake.wait_requests(before + 1, WAIT)  # the Get was read and answered (with nothing)
    # The next bytes on the wire are the next reply: the Get's reply had none.
    assert await raw.ask(eval_("'marker'")) == "marker"
    await raw.send(eval_("''"))  # an empty eval string sends nothing either
    await fake.wait_requests(before + 3, WAIT)
    assert await raw.ask(eval_("'after'")) == "after"


async def test_long_reply_is_sent_whole(raw: Raw) -> None:
    await raw.send(eval_("'z' * 5000 + 'é'"))
    assert await raw.exactly(5002) == "z" * 5000 + "é"
    assert await raw.ask(eval_("'next'")) == "next"


async def test_exec_rewriting(fake: FakeOpticonDashboard, raw: Raw) -> None:
    def exec_(code: str) -> dict[str, object]:
        return {"cmd": "Exec", "code": code, "printout": True}

    # An input field: the simulation never overwrites it.
    position = "get_dashboard().get_widget_by_nickname('Valve').attributes['Position Selection']"
    source = f"def anything():\n    {position}.set('A')\n"
    assert await raw.ask(exec_(source)) == "Success"
    assert fake.dashboard.get_field("Valve", "Position Selection") == "A"
    lam = f"f = lambda: {position}.set('B')"
    assert await raw.ask(exec_(lam)) == "Success"
    assert fake.dashboard.get_field("Valve", "Position Selection") == "B"
    plain = f"w = 1\n{position}.set('C')"
    assert await raw.ask(exec_(plain)) == "Success"
    assert fake.dashboard.get_field("Valve", "Position Selection") == "C"
    assert (await raw.ask(exec_("do_exec(f)"))).startswith("Error: Ignoring do_exec() call: Not allowed")
    assert await raw.ask(exec_("def oneline(): pass")) == "Error: substring not found"
    # do_threadsafe runs the function on the loop a moment later (Tk's after(0)).
    deferred = f"def g():\n    do_threadsafe(lambda: {position}.set('D'))\n"
    assert await raw.ask(exec_(deferred)) == "Success"
    await fake.wait_until(lambda: fake.dashboard.pending == 0, WAIT)
    assert fake.dashboard.get_field("Valve", "Position Selection") == "D"


async def test_confirm_answers_success_before_on_confirm_runs() -> None:
    slow = FakeOpticonDashboard(confirm_delay=60.0, poll_interval=0.01)
    await slow.start()
    conn = await Raw.open(slow)
    try:
        assert await conn.ask(set_("Heater", "Mode Selection", "On")) == "Success"
        await slow.wait_until(lambda: slow.dashboard.get_field("Heater", "Mode Selection") == "On", WAIT)
        assert await conn.ask({"cmd": "Confirm", "widget_nickname": "Heater", "printout": False}) == "Success"
        assert await conn.ask(get("Heater", "Device Mode")) == "No Reading"
        slow.dashboard.apply_pending()
        assert await conn.ask(get("Heater", "Device Mode")) == "On"
    finally:
        await conn.close()
        await slow.stop()


async def test_instruments_evolve_after_confirm(fake: FakeOpticonDashboard, raw: Raw) -> None:
    assert await raw.ask(set_("Heater", "Setpoint Entry", "80")) == "Success"
    assert await raw.ask(set_("Heater", "Mode Selection", "On")) == "Success"
    await fake.wait_until(lambda: fake.dashboard.pending == 0, WAIT)
    assert await raw.ask({"cmd": "Confirm", "widget_nickname": "Heater", "printout": True}) == "Success"
    await fake.wait_until(lambda: float(fake.dashboard.get_field("Heater", "Temperature")) > 79.0, WAIT)
    assert await raw.ask(get("Heater", "Device Setpoint")) == "80.0"
    assert await raw.ask(get("Heater", "Device Mode")) == "On"

    assert await raw.ask(set_("Valve", "Position Selection", "Open")) == "Success"
    await fake.wait_until(lambda: fake.dashboard.pending == 0, WAIT)
    assert await raw.ask({"cmd": "Confirm", "widget_nickname": "Valve", "printout": False}) == "Success"
    await fake.wait_until(lambda: fake.dashboard.get_field("Valve", "Actual Position") == "Open", WAIT)

    for field, value in (("Mode Selection", "Setpoint"), ("Setpoint Entry", "40"), ("Gas Selection", "Ar")):
        assert await raw.ask(set_("MFC", field, value)) == "Success"
    await fake.wait_until(lambda: fake.dashboard.pending == 0, WAIT)
    assert await raw.ask({"cmd": "Confirm", "widget_nickname": "MFC", "printout": False}) == "Success"
    await fake.wait_until(lambda: abs(float(fake.dashboard.get_field("MFC", "Actual Flow")) - 40) < 0.1, WAIT)
    assert await raw.ask(get("MFC", "Device Gas")) == "Ar"


async def test_bad_confirm_is_logged_only(
    fake: FakeOpticonDashboard, raw: Raw, caplog: pytest.LogCaptureFixture
) -> None:
    assert await raw.ask(set_("MFC", "Gas Selection", "Xenon")) == "Success"
    await fake.wait_until(lambda: fake.dashboard.pending == 0, WAIT)
    assert await raw.ask({"cmd": "Confirm", "widget_nickname": "MFC", "printout": False}) == "Success"
    await fake.wait_until(lambda: fake.dashboard.pending == 0, WAIT)
    assert "Exception in on_confirm" in caplog.text and "Xenon" in caplog.text
    assert await raw.ask(get("MFC", "Device Gas")) == "None"


async def test_introspection_and_minimal_widgets() -> None:
    fake = FakeOpticonDashboard(minimal_nickname="Banner", poll_interval=0.01)
    await fake.start()
    conn = await Raw.open(fake)
    try:
        listing = await conn.ask(eval_(INTROSPECTION_EXPRESSION))
        assert eval(listing) == {
            "Heater": ["Setpoint Entry", "Mode Selection", "Device Setpoint", "Device Mode", "Temperature"],
            "Valve": ["Position Selection", "Actual Position"],
            "MFC": [
                "Gas Selection",
                "Mode Selection",
                "Setpoint Entry",
                "Device Gas",
                "Device Mode",
                "Device Setpoint",
                "Actual Flow",
            ],
            "Banner": [],
        }
        reply = await conn.ask(eval_(DOCUMENTED_INTROSPECTION_EXPRESSION))
        assert reply == "Error: 'MinimalFakeWidget' object has no attribute 'attributes'"
        assert (
            await conn.ask(get("Banner", "x"))
            == "Error: 'MinimalFakeWidget' object has no attribute 'get_field'"
        )
    finally:
        await conn.close()
        await fake.stop()


async def test_close_gets_no_reply_and_the_port_relistens(fake: FakeOpticonDashboard, raw: Raw) -> None:
    await raw.send({"cmd": "Close"})
    assert await raw.ended()
    assert fake.closes == 1
    again = await Raw.open(fake)
    try:
        assert await again.ask(get("Valve", "Position Selection")) == "Closed"
    finally:
        await again.close()


async def test_one_client_per_port(fake: FakeOpticonDashboard, raw: Raw) -> None:
    assert await raw.ask(get("Valve", "Actual Position")) == "Closed"
    waiting = await Raw.open(fake)  # the TCP handshake completes in the backlog ...
    try:
        await waiting.send(get("Valve", "Actual Position"))
        assert await raw.ask(eval_("'still serving the first'")) == "still serving the first"
        assert fake.connections_accepted == 1  # ... but it gets no service
        assert fake.requests_received == 2
        await raw.send({"cmd": "Close"})
        assert await waiting.ended()  # its backlog entry is discarded with the old listener
    finally:
        await waiting.close()
    third = await Raw.open(fake)
    try:
        assert await third.ask(get("Valve", "Actual Position")) == "Closed"
    finally:
        await third.close()


async def test_several_ports_serve_several_clients() -> None:
    fake = FakeOpticonDashboard(extra_ports=[0], poll_interval=0.01)
    await fake.start()
    assert len(fake.ports) == 2 and fake.ports[0] != fake.ports[1]
    first, second = await Raw.open(fake, fake.ports[0]), await Raw.open(fake, fake.ports[1])
    try:
        assert await first.ask(eval_("'one'")) == "one"
        assert await second.ask(eval_("'two'")) == "two"
        assert fake.sockets_connected == 2
        # The previous reply is kept per port: an unknown command on each replays its own.
        assert await first.ask({"cmd": "?"}) == "one"
        assert await second.ask({"cmd": "?"}) == "two"
    finally:
        await first.close()
        await second.close()
        await fake.stop()


async def test_force_disconnect(fake: FakeOpticonDashboard, raw: Raw) -> None:
    assert await raw.ask(eval_("'hi'")) == "hi"
    fake.force_disconnect()
    assert await raw.ended()
    await fake.wait_until(lambda: fake.sockets_connected == 0, WAIT)
    again = await Raw.open(fake)
    try:
        assert await again.ask(eval_("'back'")) == "back"
    finally:
        await again.close()


async def test_stop_closes_connected_clients(fake: FakeOpticonDashboard, raw: Raw) -> None:
    assert await raw.ask(eval_("'hi'")) == "hi"
    await fake.stop()
    assert await raw.ended()


async def test_run_as_a_module() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fake_servers.opticon_dashboard", "--port", "0", "--speed", "10"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        match = re.fullmatch(r"listening on (127\.0\.0\.1):(\d+)\n", line)
        assert match, line
        reader, writer = await asyncio.open_connection(match.group(1), int(match.group(2)))
        writer.write(json.dumps(get("Heater", "Mode Selection")).encode())
        assert await asyncio.wait_for(reader.read(100), WAIT) == b"Off"
        writer.close()
        await writer.wait_closed()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
