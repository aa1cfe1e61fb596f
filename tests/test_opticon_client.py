"""Tests of katclient's Tornado PyOpticon client against the fake dashboard and scripted peers."""

from __future__ import annotations

import ast
import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from fake_servers.opticon_dashboard import FakeOpticonDashboard
from katclient.client.backoff import ExponentialRandomBackoff
from katclient.devices.opticon import (
    DashboardError,
    OpticonClient,
    ReplyTooLong,
    RequestQueueFull,
    RequestTooLong,
    UnexpectedReply,
)
from katclient.errors import (
    InvalidUsage,
    KatclientConnectionError,
    KatclientTimeoutError,
    OperationFailure,
    ProtocolError,
)

WAIT = 5.0  # bound on every wait, in seconds; never reached when things work


def fast_backoff() -> ExponentialRandomBackoff:
    return ExponentialRandomBackoff(0.01, 0.1, 2.0, 0.5)


def make_client(host: str, port: int, **kwargs: object) -> OpticonClient:
    options: dict[str, object] = {"timeout": WAIT, "connect_timeout": WAIT, "backoff": fast_backoff()}
    options.update(kwargs)
    return OpticonClient(host, port, **options)  # type: ignore[arg-type]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpticonDashboard]:
    server = FakeOpticonDashboard(speed=1000.0, poll_interval=0.01)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(fake: FakeOpticonDashboard) -> AsyncIterator[OpticonClient]:
    c = make_client(*fake.address)
    await c.connect()
    yield c
    await c.close()


async def applied(fake: FakeOpticonDashboard) -> None:
    await fake.wait_until(lambda: fake.dashboard.pending == 0, WAIT)


# ------------------------------------------------------------------------------------------------------
# Every operation


async def test_every_operation(fake: FakeOpticonDashboard, client: OpticonClient) -> None:
    assert client.connected and client.connection_count == 1
    assert await client.get_field("Heater", "Setpoint Entry") == "25.0"
    assert await client.set_field("Heater", "Setpoint Entry", 60, printout=True) == "Success"
    await applied(fake)
    assert await client.get_field("Heater", "Setpoint Entry", printout=True) == "60"
    assert await client.do_confirm("Heater") == "Success"
    await client.wait_for_field("Heater", "Device Setpoint", "60.0", timeout=WAIT)
    assert await client.do_eval("get_dashboard().get_field('Heater', 'Device Setpoint')") == "60.0"
    assert (
        await client.do_exec("get_dashboard().set_field('Valve', 'Position Selection', 'Open', False)")
        == "Success"
    )
    await applied(fake)
    assert await client.get_field("Valve", "Position Selection") == "Open"
    assert await client.list_fields() == {
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
    }
    values = await client.get_fields([("Heater", "Device Setpoint"), ("Valve", "Nope"), ("Nope", "x")])
    assert values == {("Heater", "Device Setpoint"): "60.0", ("Valve", "Nope"): None, ("Nope", "x"): None}
    # Every request carried the flags as sent.
    sent = [request for _, request in fake.commands]
    assert {"cmd": "Set", "widget_nickname": "Heater", "field_name": "Setpoint Entry", "new_value": "60",
            "printout": True} in sent  # fmt: skip
    await client.close()
    await fake.wait_until(lambda: fake.closes == 1, WAIT)
    assert sent[0]["cmd"] == "Eval"  # the connection probe


def valve_opener() -> None:
    get_dashboard().set_field("Valve", "Position Selection", "Open", False)  # noqa: F821


async def test_exec_of_functions_and_of_text_with_lambda(
    fake: FakeOpticonDashboard, client: OpticonClient
) -> None:
    assert await client.do_exec(valve_opener) == "Success"
    await applied(fake)
    assert await client.get_field("Valve", "Position Selection") == "Open"

    def nested() -> None:  # indented source: dedented before sending
        get_dashboard().set_field("Valve", "Position Selection", "Closed", False)  # noqa: F821

    assert await client.do_exec(nested) == "Success"
    await applied(fake)
    assert await client.get_field("Valve", "Position Selection") == "Closed"
    # Text containing 'lambda' would be mangled by the dashboard's rewriting if sent bare; it runs whole.
    text = "pick = lambda: 'Open'\nget_dashboard().set_field('Valve', 'Position Selection', pick(), False)"
    assert await client.do_exec(text) == "Success"
    await applied(fake)
    assert await client.get_field("Valve", "Position Selection") == "Open"


async def test_instrument_settles_at_its_confirmed_setpoint(client: OpticonClient) -> None:
    assert await client.set_field_verified("Heater", "Setpoint Entry", "60", timeout=WAIT) == "60"
    assert await client.set_field_verified("Heater", "Mode Selection", "On", timeout=WAIT) == "On"
    assert await client.do_confirm("Heater") == "Success"
    assert (
        await client.wait_for_field("Heater", "Temperature", "60.00", timeout=WAIT, interval=0.01) == "60.00"
    )


# ------------------------------------------------------------------------------------------------------
# Errors


async def test_error_replies_raise_with_the_dashboards_text(client: OpticonClient) -> None:
    with pytest.raises(DashboardError) as info:
        await client.get_field("Nope", "x")
    assert isinstance(info.value, OperationFailure)
    assert (
        info.value.reason == "'Nope'" and info.value.reply == "Error: 'Nope'" and info.value.command == "Get"
    )
    assert str(info.value) == "In Get, Error: 'Nope'"
    with pytest.raises(DashboardError, match="'Nope'"):
        await client.get_field("Heater", "Nope")
    with pytest.raises(DashboardError, match="In Set, Error: 'Nope'"):
        await client.set_field("Nope", "x", "1")
    with pytest.raises(DashboardError, match="In Confirm"):
        await client.do_confirm("Nope")
    with pytest.raises(DashboardError, match="division by zero"):
        await client.do_eval("1/0")
    with pytest.raises(DashboardError, match="Ignoring do_exec"):
        await client.do_exec("do_exec(print)")
    with pytest.raises(DashboardError, match="not_defined"):
        await client.do_eval("not_defined")
    # Set on an unknown field of an existing widget answers Success; the read-back shows the error.
    assert await client.set_field("Heater", "Nope", "1") == "Success"
    with pytest.raises(DashboardError, match="'Nope'"):
        await client.set_field_verified("Heater", "Nope", "1", timeout=WAIT)
    assert client.connection_count == 1  # errors never cost the connection


async def test_error_modes(fake: FakeOpticonDashboard, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(InvalidUsage):
        OpticonClient(handle_errors="raise")  # type: ignore[arg-type]
    quiet = make_client(*fake.address, handle_errors="none")
    try:
        assert await quiet.get_field("Nope", "x") == "Error: 'Nope'"
    finally:
        await quiet.close()
    loud = make_client(*fake.address, handle_errors="print")
    try:
        with caplog.at_level(logging.WARNING, logger="katclient.devices.opticon.client"):
            assert await loud.do_eval("1/0") == "Error: division by zero"
        assert "In Eval, Error: division by zero" in caplog.text
        assert await loud.do_eval("'fine'") == "fine"
    finally:
        await loud.close()


async def test_over_long_request_is_refused_before_sending(
    fake: FakeOpticonDashboard, client: OpticonClient
) -> None:
    before = fake.requests_received
    with pytest.raises(RequestTooLong) as info:
        await client.do_eval("'" + "x" * 1100 + "'")
    assert isinstance(info.value, InvalidUsage) and isinstance(info.value, ValueError)
    with pytest.raises(RequestTooLong):
        await client.do_exec("x = 1\n" * 200)
    assert fake.requests_received == before
    assert await client.do_eval("'still fine'") == "still fine"
    assert client.connection_count == 1


# ------------------------------------------------------------------------------------------------------
# Framing: empty values, long replies


async def test_empty_value_without_waiting_for_a_timeout(
    fake: FakeOpticonDashboard, client: OpticonClient
) -> None:
    assert await client.set_field_verified("Heater", "Setpoint Entry", "", timeout=WAIT) == ""
    probes = client.probes_sent
    # No time limit at all: only the probe can end these reads.
    assert await asyncio.wait_for(client.get_field("Heater", "Setpoint Entry", timeout=None), WAIT) == ""
    assert await asyncio.wait_for(client.do_eval("''", timeout=None), WAIT) == ""
    assert client.probes_sent == probes + 2
    assert await client.get_field("Heater", "Mode Selection") == "Off"  # still in step
    assert client.connection_count == 1 and fake.drops == 0


async def test_long_and_non_ascii_replies_are_read_whole(client: OpticonClient) -> None:
    assert await client.do_eval("'x' * 5000") == "x" * 5000
    assert await client.do_eval("'é€' * 3000") == "é€" * 3000
    assert await client.do_eval("'short'") == "short"
    assert await client.set_field_verified("MFC", "Setpoint Entry", "ünïcode", timeout=WAIT) == "ünïcode"


async def test_batch_read_of_many_fields(fake: FakeOpticonDashboard, client: OpticonClient) -> None:
    listing = await client.list_fields()
    pairs = [(w, f) for w, fields in listing.items() for f in fields]
    pairs += [(f"Missing widget {i}", "Some field name") for i in range(60)]  # forces several batches
    before = fake.requests_received
    values = await client.get_fields(pairs)
    assert fake.requests_received - before > 1
    for widget, field in pairs:
        expected = None if widget.startswith("Missing") else fake.dashboard.get_field(widget, field)
        if field not in ("Temperature", "Actual Flow", "Actual Position"):  # those evolve meanwhile
            assert values[(widget, field)] == expected


async def test_without_probing_an_empty_value_times_out_and_the_connection_is_remade(
    fake: FakeOpticonDashboard,
) -> None:
    c = make_client(*fake.address, probe=False, timeout=0.3)
    try:
        await c.connect(WAIT)
        assert await c.set_field("Heater", "Setpoint Entry", "") == "Success"
        await applied(fake)
        with pytest.raises(KatclientTimeoutError):
            await c.get_field("Heater", "Setpoint Entry")
        # The stream may be out of step, so it was dropped; the client reconnects by itself.
        await c.connect(WAIT)
        assert await c.get_field("Heater", "Mode Selection", timeout=WAIT) == "Off"
        assert c.connection_count == 2
        assert await c.do_eval("'y' * 3000", timeout=WAIT) == "y" * 3000  # long replies settle
    finally:
        await c.close()


# ------------------------------------------------------------------------------------------------------
# Concurrency


async def test_one_request_in_flight_first_come_first_served(
    fake: FakeOpticonDashboard, client: OpticonClient
) -> None:
    before = len(fake.commands)
    calls: list[Awaitable[str]] = []
    for i in range(40):
        calls.append(client.do_eval(f"'reply {i}'"))
        if i % 10 == 0:
            calls.append(client.get_field("Valve", "Position Selection"))
    results = await asyncio.gather(*calls)
    expected = []
    for i in range(40):
        expected.append(f"reply {i}")
        if i % 10 == 0:
            expected.append("Closed")
    assert results == expected
    codes = [req.get("code") for _, req in list(fake.commands)[before:] if req["cmd"] == "Eval"]
    assert codes == [f"'reply {i}'" for i in range(40)]  # arrival order is call order
    assert fake.drops == 0 and fake.connections_accepted == 1  # never two requests in one recv


async def test_queue_is_bounded(fake: FakeOpticonDashboard) -> None:
    c = make_client(*fake.address, max_queued=3)
    try:
        await c.connect()
        results = await asyncio.gather(*(c.do_eval(f"'{i}'") for i in range(8)), return_exceptions=True)
        served = [r for r in results if isinstance(r, str)]
        refused = [r for r in results if isinstance(r, RequestQueueFull)]
        assert served == ["0", "1", "2"] and len(refused) == 5
        assert c.queued == 0
        assert await c.do_eval("'later'") == "later"
    finally:
        await c.close()


async def test_second_client_on_a_busy_port_waits_its_turn(
    fake: FakeOpticonDashboard, client: OpticonClient
) -> None:
    second = make_client(*fake.address, connect_timeout=0.3)
    try:
        with pytest.raises(KatclientConnectionError) as info:
            await second.connect(0.5)
        assert "one client per port" in str(info.value.__cause__)
        assert await client.do_eval("'first still served'") == "first still served"
        await client.close()
        await second.connect(WAIT)
        assert await second.do_eval("'second now'") == "second now"
    finally:
        await second.close()


# ------------------------------------------------------------------------------------------------------
# Connection loss and close


async def test_reconnects_after_the_dashboard_restarts(
    fake: FakeOpticonDashboard, client: OpticonClient
) -> None:
    host, port = fake.address
    await fake.stop()
    with pytest.raises(KatclientConnectionError):
        await client.get_field("Valve", "Position Selection", timeout=0.5)
    assert not client.connected
    restarted = FakeOpticonDashboard(host, port, poll_interval=0.01)
    await restarted.start()
    try:
        assert await client.get_field("Valve", "Position Selection", timeout=WAIT) == "Closed"
        assert client.connection_count == 2
    finally:
        await client.close()
        await restarted.stop()


async def test_eval_of_a_non_str_drops_and_the_client_reconnects(
    fake: FakeOpticonDashboard, client: OpticonClient
) -> None:
    with pytest.raises(KatclientConnectionError, match="closed the connection"):
        await client.do_eval("1 + 1")
    assert await client.do_eval("'back'") == "back"
    assert client.connection_count == 2 and fake.drops == 1


async def test_force_disconnect_while_idle(fake: FakeOpticonDashboard, client: OpticonClient) -> None:
    fake.force_disconnect()
    await fake.wait_until(lambda: fake.connections_accepted == 2, WAIT)
    assert await client.do_eval("'again'") == "again"
    assert client.connection_count == 2


async def test_close_leaves_no_task_or_socket(fake: FakeOpticonDashboard) -> None:
    before = asyncio.all_tasks()
    c = make_client(*fake.address)
    await c.connect()
    assert await c.get_field("Valve", "Position Selection") == "Closed"
    conn = c._conn
    assert conn is not None
    await c.close()
    await fake.wait_until(lambda: fake.closes == 1 and fake.sockets_connected == 0, WAIT)
    assert conn.stream.closed() and conn.reader is not None and conn.reader.done()
    assert asyncio.all_tasks() == before
    assert not c.connected and c.closed
    with pytest.raises(KatclientConnectionError):
        await c.get_field("Valve", "Position Selection")
    with pytest.raises(KatclientConnectionError):
        c.start()
    await c.close()  # idempotent


async def test_close_fails_waiting_requests_promptly(fake: FakeOpticonDashboard) -> None:
    host, port = fake.address
    await fake.stop()
    c = make_client(host, port, timeout=None)
    waiting = asyncio.ensure_future(c.get_field("Valve", "Position Selection"))
    queued = asyncio.ensure_future(c.do_eval("'x'"))
    await asyncio.sleep(0)
    await c.close()
    for task in (waiting, queued):
        with pytest.raises(KatclientConnectionError):
            await asyncio.wait_for(task, WAIT)
    assert c.connection_count == 0


async def test_context_manager(fake: FakeOpticonDashboard) -> None:
    async with make_client(*fake.address) as c:
        assert await c.get_field("MFC", "Gas Selection") == "N2"
    assert c.closed
    await fake.wait_until(lambda: fake.closes == 1, WAIT)


# ------------------------------------------------------------------------------------------------------
# Misbehaving peers (scripted servers)


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def serve(script: Script) -> tuple[asyncio.Server, list[int]]:
    """A server running *script* per connection; returns it and the list of connection indexes seen."""
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(len(seen))
        try:
            await script(reader, writer, seen[-1])
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen


async def echo_probe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer the client's connection probe like a dashboard."""
    request = json.loads(await reader.read(1024))
    writer.write(ast.literal_eval(request["code"]).encode())
    await writer.drain()


async def shutdown(server: asyncio.Server) -> None:
    server.close()
    await server.wait_closed()


async def test_a_timeout_mid_request_drops_the_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await echo_probe(reader, writer)
        if index == 0:
            await reader.read(1024)  # the request; never answered (nor its probe)
            while await reader.read(1024):
                pass
        else:
            request = json.loads(await reader.read(1024))
            writer.write(b"answered")
            await writer.drain()
            assert request["cmd"] == "Get"
            await reader.read(1024)

    server, seen = await serve(script)
    c = make_client("127.0.0.1", server.sockets[0].getsockname()[1], probe_after=0.05)
    try:
        with pytest.raises(KatclientTimeoutError):
            await c.get_field("H", "F", timeout=0.3)
        assert c.probes_sent == 1
        assert await c.get_field("H", "F") == "answered"
        assert seen == [0, 1]
    finally:
        await c.close()
        await shutdown(server)


async def test_unsolicited_bytes_and_floods_drop_the_connection() -> None:
    surprise = asyncio.Event()
    reconnected = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await echo_probe(reader, writer)
        if index == 0:
            await surprise.wait()
            writer.write(b"surprise")  # nobody asked
        elif index == 1:
            reconnected.set()
            await reader.read(1024)
            writer.write(b"x" * (2 << 20))  # over the reply limit
        else:
            await reader.read(1024)
            writer.write(b"fine")
        await writer.drain()
        await reader.read(1024)

    server, seen = await serve(script)
    c = make_client("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        await c.connect()
        surprise.set()
        await asyncio.wait_for(reconnected.wait(), WAIT)
        await c.connect()
        assert c.connection_count == 2
        assert isinstance(c.last_error, UnexpectedReply) and "unsolicited" in str(c.last_error)
        with pytest.raises(ReplyTooLong) as info:
            await c.do_eval("'flood'")
        assert isinstance(info.value, ProtocolError)
        assert await c.do_eval("'ok'") == "fine"
        assert seen == [0, 1, 2]
    finally:
        await c.close()
        await shutdown(server)


async def test_nothing_listening_gives_a_connection_error() -> None:
    server, _ = await serve(lambda r, w, i: asyncio.sleep(0))
    port = server.sockets[0].getsockname()[1]
    await shutdown(server)
    c = make_client("127.0.0.1", port)
    try:
        with pytest.raises(KatclientConnectionError) as info:
            await c.connect(0.3)
        assert isinstance(info.value.__cause__, KatclientConnectionError)
        assert "ConnectionRefusedError" in str(info.value)
        with pytest.raises(KatclientConnectionError):
            await c.get_field("H", "F", timeout=0.2)
    finally:
        await c.close()


def test_bad_parameters() -> None:
    for kwargs in ({"timeout": 0}, {"connect_timeout": -1}, {"probe_after": 0}, {"max_queued": 0}):
        with pytest.raises(InvalidUsage):
            OpticonClient(**kwargs)  # type: ignore[arg-type]
