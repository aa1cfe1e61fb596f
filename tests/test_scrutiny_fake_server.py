"""The fake Scrutiny server at the wire level: message shapes as captured from the real 0.16.0
server (protocols/scrutiny.md 1.2-1.5), bad input, several clients, a client that stops reading,
restart, and the command line."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

from fake_servers.scrutiny_device import DEMO_FIRMWARE_ID, TEST_FIRMWARE_ID, parse_math_expr
from fake_servers.scrutiny_server import FakeScrutinyServer
from katclient.devices.scrutiny import MessageDecoder, ScrutinyClient, encode_frame, encode_message
from tests.test_scrutiny_helpers import record, wait_until


class RawClient:
    """A bare protocol client: send dicts or bytes, await decoded messages."""

    def __init__(self, stream: IOStream) -> None:
        self.stream = stream
        self.decoder = MessageDecoder()
        self.inbox: list[dict[str, Any]] = []
        self.errors: list[object] = []

    @classmethod
    async def connect(cls, fake: FakeScrutinyServer) -> RawClient:
        return cls(await TCPClient().connect(fake.host, fake.port))

    def send(self, obj: dict[str, Any], compress: bool = True, use_hash: bool = True) -> None:
        self.stream.write(encode_message(obj, compress=compress, use_hash=use_hash))

    async def recv(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> dict[str, Any]:
        async def scan() -> dict[str, Any]:
            while True:
                for i, msg in enumerate(self.inbox):
                    if predicate(msg):
                        del self.inbox[: i + 1]
                        return msg
                chunk = await self.stream.read_bytes(65536, partial=True)
                for item in self.decoder.feed(chunk):
                    (self.inbox if isinstance(item, dict) else self.errors).append(item)  # type: ignore[arg-type]

        return await asyncio.wait_for(scan(), timeout)

    async def reply(self, reqid: int, timeout: float = 5.0) -> dict[str, Any]:
        return await self.recv(lambda m: m.get("reqid") == reqid, timeout)

    def close(self) -> None:
        self.stream.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeScrutinyServer]:
    server = FakeScrutinyServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def raw(fake: FakeScrutinyServer) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(fake)
    yield client
    client.close()


async def test_welcome_then_status_shape(raw: RawClient, fake: FakeScrutinyServer) -> None:
    welcome = await raw.recv(lambda m: True)
    assert welcome == {"cmd": "welcome", "reqid": None, "server_time_zero_timestamp": fake.time_zero}
    raw.send({"cmd": "get_server_status", "reqid": 7})
    status = await raw.reply(7)
    assert list(status) == [
        "cmd",
        "reqid",
        "device_status",
        "device_session_id",
        "loaded_sfd_firmware_id",
        "datalogging_status",
        "device_comm_link",
    ]
    assert status["cmd"] == "inform_server_status" and status["device_status"] == "connected_ready"
    assert status["datalogging_status"] == {"datalogging_state": "standby", "completion_ratio": None}
    assert status["device_comm_link"] == {
        "link_type": "dummy",
        "link_operational": True,
        "link_config": {},
        "demo_mode": True,
    }


async def test_plain_frames_are_accepted_and_errors_match_the_real_server(raw: RawClient) -> None:
    raw.send({"cmd": "echo", "reqid": 1, "payload": "p"}, compress=False, use_hash=False)
    assert await raw.reply(1) == {"cmd": "response_echo", "reqid": 1, "payload": "p"}
    raw.send({"cmd": "no_such_cmd", "reqid": 2})
    assert await raw.reply(2) == {
        "cmd": "error",
        "reqid": 2,
        "request_cmd": "no_such_cmd",
        "msg": "Unsupported command no_such_cmd",
    }
    raw.send({"cmd": "list_datalogging_acquisitions", "reqid": 3})
    assert (await raw.reply(3))["msg"] == "'Missing field \"count\"'"  # str(KeyError) keeps its quotes
    raw.send({"cmd": "read_memory", "reqid": 4, "address": "0", "size": 1})
    assert (await raw.reply(4))["msg"] == 'Field address is expected to be of type "(int)" but found "str"'
    raw.send({"cmd": "change_subscription_update_rate", "reqid": 5, "changes": [{"id": "zz", "rate": 1}]})
    assert (await raw.reply(5))[
        "msg"
    ] == "Cannot change update rate : 'Entry with ID zz not found in datastore'"
    raw.send({"cmd": "subscribe_watchable", "reqid": 6, "watchables": ["/rpv/x1000"], "rate": 0})
    assert (await raw.reply(6))["msg"] == "Internal error"  # as captured: the real datastore raises
    raw.send({"cmd": "echo", "reqid": "x", "payload": "p"})
    bad_reqid = await raw.recv(lambda m: m.get("cmd") == "error")
    assert bad_reqid["msg"] == "Invalid request ID" and bad_reqid["reqid"] is None


async def test_bad_input_does_not_stop_the_connection(raw: RawClient, fake: FakeScrutinyServer) -> None:
    good = encode_message({"cmd": "echo", "reqid": 9, "payload": "after"})
    bad_hash = bytearray(encode_message({"cmd": "echo", "reqid": 8, "payload": "bad"}))
    bad_hash[-3] ^= 0xFF
    raw.stream.write(b"garbage\x00\xff" + bytes(bad_hash) + encode_frame(b"not json") + encode_frame(b"[]"))
    raw.stream.write(b"<SCRUTINY size=ffffffff flags=ch>" + good)  # oversize header: skipped
    assert (await raw.reply(9))["payload"] == "after"
    assert not any(m.get("reqid") == 8 for m in raw.inbox)
    second = await RawClient.connect(fake)
    try:
        second.send({"cmd": "echo", "reqid": 1, "payload": "other client"})
        assert (await second.reply(1))["payload"] == "other client"
    finally:
        second.close()


async def test_updates_batch_vars_and_send_each_rpv_alone(raw: RawClient) -> None:
    raw.send(
        {
            "cmd": "subscribe_watchable",
            "reqid": 1,
            "watchables": ["/static/main.cpp/counter", "/Up Time", "/rpv/x1000", "/rpv/x2000"],
        }
    )
    reply = await raw.reply(1)
    ids = {path: d["id"] for path, d in reply["subscribed"].items()}
    assert reply["subscribed"]["/rpv/x2000"] == {
        "dtype": "sint32",
        "path": "/rpv/x2000",
        "type": "rpv",
        "id": ids["/rpv/x2000"],
        "rpvid": 8192,
    }
    var_msg = await raw.recv(lambda m: m["cmd"] == "watchable_update" and len(m["updates"]) == 2)
    assert {u["id"] for u in var_msg["updates"]} == {ids["/static/main.cpp/counter"], ids["/Up Time"]}
    assert all(list(u) == ["id", "v", "t", "d"] for u in var_msg["updates"])
    rpv_msg = await raw.recv(
        lambda m: m["cmd"] == "watchable_update" and m["updates"][0]["id"] == ids["/rpv/x1000"]
    )
    assert len(rpv_msg["updates"]) == 1 and list(rpv_msg["updates"][0]) == ["id", "v", "t"]


async def test_two_phase_write_reply_precedes_informs_and_reaches_watchers(fake: FakeScrutinyServer) -> None:
    writer, watcher = await RawClient.connect(fake), await RawClient.connect(fake)
    try:
        watcher.send(
            {"cmd": "subscribe_watchable", "reqid": 1, "watchables": ["/global/sinewave_generator/frequency"]}
        )
        entry_id = (await watcher.reply(1))["subscribed"]["/global/sinewave_generator/frequency"]["id"]
        writer.send(
            {
                "cmd": "write_watchable",
                "reqid": 5,
                "updates": [
                    {"batch_index": 0, "watchable": entry_id, "value": 2},
                    {"batch_index": 1, "watchable": entry_id, "value": "1+0.5"},
                ],
            }
        )
        response = await writer.reply(5)
        assert response["cmd"] == "response_write_watchable" and response["count"] == 2
        token = response["request_token"]
        assert re.fullmatch(r"[0-9a-f]{32}", token)
        informs = [await writer.recv(lambda m: m["cmd"] == "inform_write_completion") for _ in range(2)]
        assert [(m["batch_index"], m["success"], m["failure_reason"]) for m in informs] == [
            (0, True, ""),
            (1, True, ""),
        ]
        assert all(m["request_token"] == token and m["watchable"] == entry_id for m in informs)
        seen = await watcher.recv(lambda m: m["cmd"] == "inform_write_completion")
        assert seen["request_token"] == token
        writer.send(
            {
                "cmd": "write_watchable",
                "reqid": 6,
                "updates": [{"batch_index": 0, "watchable": "zz", "value": 1}],
            }
        )
        assert (await writer.reply(6))["msg"] == "Unknown watchable ID zz"
        writer.send(
            {
                "cmd": "write_watchable",
                "reqid": 7,
                "updates": [
                    {"batch_index": 0, "watchable": entry_id, "value": 1},
                    {"batch_index": 0, "watchable": entry_id, "value": 2},
                ],
            }
        )
        assert (await writer.reply(7))["msg"] == "Duplicate batch_index in request"
    finally:
        writer.close()
        watcher.close()


async def test_load_sfd_has_no_reply_and_status_is_broadcast(fake: FakeScrutinyServer) -> None:
    a, b = await RawClient.connect(fake), await RawClient.connect(fake)
    try:
        a.send({"cmd": "load_sfd", "reqid": 1, "firmware_id": TEST_FIRMWARE_ID})
        for client in (a, b):
            pushed = await client.recv(lambda m: m["cmd"] == "inform_server_status")
            assert pushed["reqid"] is None and pushed["loaded_sfd_firmware_id"] == TEST_FIRMWARE_ID
        a.send({"cmd": "echo", "reqid": 2, "payload": "x"})
        await a.reply(2)
        assert not any(m.get("reqid") == 1 for m in a.inbox)  # never answered
        a.send({"cmd": "load_sfd", "reqid": 3, "firmware_id": "ab" * 16})  # unknown: silently ignored
        a.send({"cmd": "echo", "reqid": 4, "payload": "x"})
        await a.reply(4)
        assert fake.loaded is not None and fake.loaded.firmware_id == TEST_FIRMWARE_ID
    finally:
        a.close()
        b.close()


async def test_device_disconnect_push_sequence(raw: RawClient, fake: FakeScrutinyServer) -> None:
    await raw.recv(lambda m: m["cmd"] == "welcome")
    fake.disconnect_device()
    states = [await raw.recv(lambda m: m["cmd"] == "inform_server_status") for _ in range(3)]
    assert [
        (
            s["device_status"],
            s["device_session_id"],
            s["loaded_sfd_firmware_id"],
            s["datalogging_status"]["datalogging_state"],
        )
        for s in states
    ] == [
        ("disconnected", None, DEMO_FIRMWARE_ID, "standby"),
        ("disconnected", None, None, "standby"),
        ("disconnected", None, None, "unavailable"),
    ]
    fake.restart_device()
    states = [await raw.recv(lambda m: m["cmd"] == "inform_server_status") for _ in range(3)]
    assert [
        (s["device_status"], s["loaded_sfd_firmware_id"], s["datalogging_status"]["datalogging_state"])
        for s in states
    ] == [
        ("connected_ready", None, "unavailable"),
        ("connected_ready", DEMO_FIRMWARE_ID, "unavailable"),
        ("connected_ready", DEMO_FIRMWARE_ID, "standby"),
    ]
    assert states[0]["device_session_id"] == fake.session_id


async def test_several_clients_get_updates(fake: FakeScrutinyServer) -> None:
    clients = [ScrutinyClient(fake.host, fake.port) for _ in range(3)]
    try:
        recorders = []
        for c in clients:
            await c.connect(5)
            recorders.append(record(c)[1])
            await c.subscribe(["/rpv/x1000"])
        for values in recorders:
            await values.wait_count(lambda v: v.path == "/rpv/x1000", 3)
        assert fake.client_count == 3
    finally:
        for c in clients:
            await c.close()


async def test_a_client_that_stops_reading_does_not_block_the_others() -> None:
    fake = FakeScrutinyServer(soft_backlog=16 * 1024, hard_backlog=256 * 1024)
    await fake.start()
    good = ScrutinyClient(fake.host, fake.port)
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((fake.host, fake.port))
        await good.connect(5)
        _, values = record(good)
        await good.subscribe(["/rpv/x1000"])
        # The stalled client asks for big incompressible echoes and never reads the replies.
        payload = base64.b64encode(os.urandom(300_000)).decode()
        stalled.setblocking(False)
        loop = asyncio.get_running_loop()
        for i in range(200):  # until the fake gives up on it (kernel buffers absorb the first MBs)
            if fake.client_count == 1:
                break
            try:
                await loop.sock_sendall(
                    stalled, encode_message({"cmd": "echo", "reqid": i, "payload": payload})
                )
            except OSError:  # reset by the fake
                break
        await wait_until(lambda: fake.client_count == 1, timeout=10)  # dropped once its backlog was too big
        mark = len(values.items)
        await values.wait_count(
            lambda v: v.path == "/rpv/x1000", 3 + values.count(lambda v: v.path == "/rpv/x1000")
        )
        assert len(values.items) > mark
        assert await good.echo("still served") == "still served"
    finally:
        stalled.close()
        await good.close()
        await fake.stop()


async def test_restart_on_the_same_port_is_a_new_process(fake: FakeScrutinyServer) -> None:
    host, port = fake.host, fake.port
    first_session, first_zero = fake.session_id, fake.time_zero
    await fake.stop()
    assert fake.client_count == 0
    assert await fake.start() == (host, port)
    assert fake.session_id != first_session and fake.time_zero >= first_zero
    assert TEST_FIRMWARE_ID in fake.installed  # installed SFDs persist like files on disk
    with pytest.raises(Exception, match="already running"):
        await fake.start()


def test_write_value_expressions() -> None:
    assert parse_math_expr("1+0.5") == 1.5
    assert parse_math_expr("2*0.5") == 1.0
    assert parse_math_expr("2^3^2") == 512.0
    assert parse_math_expr("0x10 + 0b11") == 19.0
    assert parse_math_expr("-sqrt(16)*pi/pi") == -4.0
    assert parse_math_expr("1e3") == 1000.0
    for bad in ("abc", "1+", "(1", "foo(1)", "1/0"):
        with pytest.raises(ValueError):
            parse_math_expr(bad)


async def test_command_line_prints_listening_and_serves() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fake_servers.scrutiny_server", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline), 20
        )
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, line
        client = ScrutinyClient("127.0.0.1", int(match.group(1)))
        try:
            await client.connect(5)
            assert client.status is not None and client.status.device_ready
        finally:
            await client.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


async def test_stream_closed_by_stop_while_reading(fake: FakeScrutinyServer, raw: RawClient) -> None:
    await raw.recv(lambda m: m["cmd"] == "welcome")
    await fake.stop()
    with pytest.raises(StreamClosedError):  # the server's sockets linger 0: an abortive close
        await raw.recv(lambda m: False, timeout=5)
