"""DeviceServer robustness and flow control: garbage, endless lines, slow clients, in-flight limits.

Sources: protocols/katcp.md 1.1 (a server answers an unparsable line with ``#log error``
and keeps the connection), 5.3 (over-long lines) and 4 section 2.4 (slow clients are
disconnected so that they cannot slow the others); DESIGN.md 5 (reliability).
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.iostream import IOStream

from katclient.protocol import Status
from katclient.server import DeviceServer, RequestContext, Sensor
from katclient.server.testing import LineClient, run_virtual


class Slow(DeviceServer):
    started = 0
    max_seen = 0

    async def request_sleep(self, ctx: RequestContext, seconds: float) -> float:
        """Sleep, then reply."""
        self.started += 1
        self.max_seen = max(self.max_seen, ctx.client.in_flight)
        await asyncio.sleep(seconds)
        return seconds


async def test_garbage_then_endless_line_then_watchdog_over_tcp(caplog: pytest.LogCaptureFixture) -> None:
    server = DeviceServer()
    host, port = await server.start()
    client = await LineClient.connect(host, port)
    for _ in range(3):
        await client.next_message()
    with caplog.at_level(logging.WARNING, logger="katclient.server"):
        client.send_raw(b"garbage line\n")
        chunk = b"x" * (64 * 1024)
        for _ in range(48):  # 3 MiB without a newline
            client.send_raw(chunk)
        client.send_raw(b"\n")
        client.send_raw(b"?watchdog\n")
        first = await client.next_message()
        second = await client.next_message()
        third = await client.next_message(10.0)
    assert first.name == "log" and first.arguments[0] == b"error" and first.arguments[2] == b"katclient.server"
    assert b"Bad type character 'g'" in first.arguments[3]
    assert second.name == "log" and b"Line too long" in second.arguments[3]
    float(second.arguments[1])  # a v5 timestamp
    assert bytes(third) == b"!watchdog ok\n"
    conn = server.connections[0]
    assert conn._parser.buffer_size < server.max_line_length
    assert any("malformed line" in r.getMessage() for r in caplog.records)
    await client.close()
    await server.stop()


async def test_replies_and_informs_from_a_client_are_ignored() -> None:
    server = DeviceServer()
    client, conn = LineClient.pair(server)
    client.send_raw(b"!watchdog ok\n#something 1\n")
    reply, _ = await client.request("watchdog")
    assert reply.reply_ok() and not conn.closed
    await client.close()
    await server.stop()


async def test_a_client_that_stops_reading_is_disconnected_and_others_keep_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = DeviceServer(max_backlog=64 * 1024)
    sensor = Sensor("string", "s", default="x" * 200, initial_status=Status.NOMINAL)
    server.add_sensor(sensor)
    fast, fast_conn = LineClient.pair(server)
    reply, _ = await fast.request("sensor-sampling", "s", "auto")
    assert reply.reply_ok()

    raw_client, raw_server = socket.socketpair()
    raw_client.setblocking(False)
    slow_conn = server.handle_stream(IOStream(raw_server), ("127.0.0.1", 1))
    raw_client.send(b"?sensor-sampling s auto\n")  # ... and never read again
    seen = 0
    target = -1
    caught_up = asyncio.Event()

    async def count_fast() -> None:
        nonlocal seen
        while True:
            msg = await fast.next_message(None)
            if msg.name == "sensor-status":
                seen += 1
                if seen == target:
                    caught_up.set()

    counter = asyncio.create_task(count_fast())
    with caplog.at_level(logging.WARNING, logger="katclient.server"):
        sent = 0
        for i in range(20000):
            if slow_conn.closed:
                break
            sensor.set_value(f"{i:06d}" + "x" * 200)
            sent += 1
            if i % 20 == 0:
                await asyncio.sleep(0)
    assert slow_conn.closed, "the stalled client was never dropped"
    assert any("too slow" in r.getMessage() for r in caplog.records)
    assert not fast_conn.closed
    # the fast client gets every update (plus the initial value)
    target = sent + 1
    if seen < target:
        await asyncio.wait_for(caught_up.wait(), 10)
    assert seen == target
    assert sensor.observer_count == 1  # the dropped client's strategy is gone
    counter.cancel()
    await asyncio.gather(counter, return_exceptions=True)
    raw_client.close()
    await fast.close()
    await server.stop()


def test_requests_run_concurrently_up_to_the_in_flight_limit() -> None:
    async def main() -> None:
        server = Slow(max_in_flight=3)
        client, conn = LineClient.pair(server)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(1, 10):
            client.send("sleep", "1", mid=i)
        client.send("watchdog", mid=100)
        replies = []
        while len(replies) < 10:
            msg = await client.next_message(30)
            if msg.mtype.name == "REPLY":
                replies.append((round(loop.time() - t0, 3), msg.name, msg.mid))
        # three at a time: 9 one-second requests take 3 virtual seconds; reading paused meanwhile,
        # so the watchdog behind them is answered only once a slot freed up
        assert server.max_seen == 3 and server.started == 9
        assert [t for t, name, _ in replies if name == "sleep"] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
        assert ("watchdog", 100) in [(n, m) for _, n, m in replies]
        watchdog_time = next(t for t, n, _ in replies if n == "watchdog")
        assert 0 < watchdog_time <= 3
        await client.close()
        await server.stop()

    run_virtual(main)


def test_stop_cancels_running_requests_cleanly() -> None:
    async def main() -> None:
        server = Slow()
        client, conn = LineClient.pair(server)
        client.send("sleep", "1000", mid=1)
        reply, _ = await client.request("watchdog")
        assert reply.reply_ok() and conn.in_flight == 1
        await server.stop()
        msg = await client.wait_inform("disconnect")
        assert msg.arguments == (b"Device server shutting down.",)
        await client.wait_closed()
        assert conn.in_flight == 0 and server.connections == []
        await server.stop()  # idempotent
        await client.close()

    run_virtual(main)


async def test_a_connection_after_stop_is_refused() -> None:
    server = DeviceServer()
    await server.stop()
    client, conn = LineClient.pair(server)
    await client.wait_closed()
    assert conn.closed
    await client.close()


async def test_garbage_from_one_client_does_not_disturb_another() -> None:
    server = DeviceServer()
    good, _ = LineClient.pair(server)
    bad, bad_conn = LineClient.pair(server)
    for _ in range(50):
        bad.send_raw(b"\x00\x01 nonsense \\q\n")
    reply, _ = await good.request("watchdog")
    assert reply.reply_ok()
    msgs = [await bad.wait_inform("log") for _ in range(50)]
    assert all(m.arguments[0] == b"error" for m in msgs)
    assert not bad_conn.closed
    assert not any(m.name == "log" for m in good.queued())
    await good.close()
    await bad.close()
    await server.stop()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=80) | st.sampled_from([
    b"?sensor-sampling s period 0\n", b"?sensor-sampling s,s auto\n", b"?help nope\n", b"?add\n",
    b"?sensor-list /(/\n", b"!watchdog ok\n", b"?log-level x y z\n", b"?sleep -1e999\n",
]), max_size=12))
def test_any_byte_stream_leaves_the_server_answering(chunks: list[bytes]) -> None:
    async def main() -> None:
        server = Slow()
        server.add_sensor(Sensor("integer", "s"))
        client, conn = LineClient.pair(server)
        for chunk in chunks:
            client.send_raw(chunk)
        client.send_raw(b"\n?watchdog[999]\n")
        reply = await client.wait_for(lambda m: m.name == "watchdog" and m.mid == 999, timeout=30)
        assert reply.reply_ok() and not conn.closed
        await client.close()
        await server.stop()

    run_virtual(main)
