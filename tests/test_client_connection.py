"""Connection: mids, name matching, inform routing, timeouts, disconnects (protocols/katcp.md 1.2)."""

import asyncio

import pytest
from tornado.iostream import IOStream
from tornado.tcpclient import TCPClient

from katclient.client.connection import Connection
from katclient.protocol import MAX_MID, KatclientConnectionError, KatclientTimeoutError, Message, ProtocolFlags
from tests.scripted_katcp import ScriptedConnection, ScriptedServer


async def open_conn(srv: ScriptedServer, informs: list, protocol=None) -> Connection:
    stream: IOStream = await TCPClient().connect("127.0.0.1", srv.port)
    closed = asyncio.Event()
    conn = Connection(stream, informs.append, lambda exc: closed.set(), protocol=protocol)
    conn.closed_event = closed  # type: ignore[attr-defined]
    return conn


@pytest.fixture
async def srv():
    s = ScriptedServer()
    await s.start()
    yield s
    await s.stop()


async def test_mid_counter_wraps_and_skips_ids_in_flight(srv: ScriptedServer) -> None:
    release = asyncio.Event()

    async def hold(conn: ScriptedConnection, msg: Message) -> None:
        await release.wait()
        conn.send(Message.reply_to_request(msg, "ok"))

    srv.handlers["hold"] = hold
    conn = await open_conn(srv, [])
    await asyncio.wait_for(conn.protocol_known.wait(), 5)
    held = asyncio.ensure_future(conn.request("hold"))  # takes mid 1
    await asyncio.sleep(0.05)
    conn._next_mid = MAX_MID
    r1 = await conn.request("watchdog")
    r2 = await conn.request("watchdog")  # wraps past 1, which is still in flight
    assert r1[0].mid == MAX_MID and r2[0].mid == 2
    release.set()
    assert (await held)[0].mid == 1
    conn.close()


async def test_name_matching_without_flag_i_routes_informs(srv: ScriptedServer) -> None:
    srv.protocol = "5.0-M"
    srv.add_sensor("s1")
    srv.add_sensor("s2")
    informs: list = []
    conn = await open_conn(srv, informs)
    await asyncio.wait_for(conn.protocol_known.wait(), 5)
    assert not conn.protocol.message_ids
    (reply, got), (reply2, got2) = await asyncio.gather(
        conn.request("sensor-list"), conn.request("help")
    )
    assert [m.arguments[0] for m in got] == [b"s1", b"s2"] and reply.arguments == (b"ok", b"2")
    assert reply2.reply_ok() and got2
    assert all(m.mid is None for m in srv.received)
    assert [m.name for m in informs] == ["version-connect"]
    conn.close()


async def test_unsolicited_informs_go_to_the_handler(srv: ScriptedServer) -> None:
    informs: list = []
    conn = await open_conn(srv, informs)
    await asyncio.wait_for(conn.protocol_known.wait(), 5)
    await conn.request("watchdog")
    srv.connections[0].send(Message.inform("log", "warn", "0", "dev", "hi"), Message.inform("help", "x", "y"))
    await conn.request("watchdog")
    assert [m.name for m in informs] == ["version-connect", "log", "help"]
    conn.close()


async def test_disconnect_fails_pending_and_later_requests(srv: ScriptedServer) -> None:
    async def never(conn: ScriptedConnection, msg: Message) -> None:
        conn.close()

    srv.handlers["never"] = never
    conn = await open_conn(srv, [])
    with pytest.raises(KatclientConnectionError, match="never"):
        await conn.request("never", timeout=None)
    await asyncio.wait_for(conn.closed_event.wait(), 5)  # type: ignore[attr-defined]
    with pytest.raises(KatclientConnectionError, match="not connected"):
        await conn.request("watchdog")


async def test_timeout_then_late_reply_dropped(srv: ScriptedServer) -> None:
    release = asyncio.Event()

    async def late(conn: ScriptedConnection, msg: Message) -> None:
        await release.wait()
        conn.send(Message.reply_to_request(msg, "ok", "late"))

    srv.handlers["late"] = late
    conn = await open_conn(srv, [], protocol=ProtocolFlags.parse("5.0-IM"))
    with pytest.raises(KatclientTimeoutError):
        await conn.request("late", timeout=0.01)
    assert conn.pending_count == 0
    release.set()
    reply, _ = await conn.request("watchdog")
    assert reply.arguments == (b"ok",)
    conn.close()


async def test_bad_mid_name_or_argument_is_refused_before_sending(srv: ScriptedServer) -> None:
    from katclient.protocol import InvalidUsage

    conn = await open_conn(srv, [], protocol=ProtocolFlags.parse("5.0-IM"))
    for kwargs, args in (({"mid": 0}, ()), ({"mid": MAX_MID + 1}, ()), ({}, (object(),))):
        with pytest.raises(InvalidUsage):
            await conn.request("watchdog", *args, **kwargs)
    with pytest.raises(InvalidUsage):
        await conn.request("bad name")
    assert conn.pending_count == 0
    reply, _ = await conn.request("watchdog", mid=MAX_MID)
    assert reply.mid == MAX_MID
    conn.close()


@pytest.mark.parametrize("protocol", ["5.0-IM", "5.0-M"])
async def test_request_batch_pipelines_and_keeps_order(srv: ScriptedServer, protocol: str) -> None:
    from katclient.protocol import InvalidUsage

    for i in range(50):
        srv.add_sensor(f"s{i}")
    conn = await open_conn(srv, [], protocol=ProtocolFlags.parse(protocol))
    names = [f"s{i}" for i in range(50)] + ["missing"]
    replies = await conn.request_batch("sensor-sampling", [(n, "auto") for n in names])
    assert [r.arguments[:2] for r in replies[:-1]] == [(b"ok", n.encode()) for n in names[:-1]]
    assert replies[-1].code == b"fail"
    with pytest.raises(InvalidUsage):
        await conn.request_batch("watchdog", [(), (object(),)])
    assert conn.pending_count == 0
    conn.close()


async def test_request_head_cache_is_bounded(srv: ScriptedServer) -> None:
    from katclient.client.connection import MAX_CACHED_HEADS

    conn = await open_conn(srv, [], protocol=ProtocolFlags.parse("5.0-IM"))
    replies = await asyncio.gather(*(conn.request(f"no-such-{i}") for i in range(MAX_CACHED_HEADS + 10)))
    assert all(reply.code == b"invalid" for reply, _ in replies)
    assert len(conn._heads) <= MAX_CACHED_HEADS
    conn.close()
