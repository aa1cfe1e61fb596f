"""DeviceServer: connect informs, every standard request, request declaration and decoding.

Sources: protocols/katcp.md 1.2 (mids), 1.3 (flags), 1.8 (standard requests, verified
wire forms), 1.9 (informs) and 4 section 2.2 (declaring requests).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator
from typing import Optional

import pytest

from katclient.protocol import Address, FailReply, InvalidReply, Message, Status
from katclient.server import DeviceServer, RequestContext, Sensor, timeout_hint
from katclient.server.testing import LineClient

STANDARD_V51 = [
    "client-list", "halt", "help", "log-level", "request-timeout-hint", "restart", "sensor-list",
    "sensor-sampling", "sensor-sampling-clear", "sensor-value", "version-list", "watchdog",
]


class Colour(enum.Enum):
    DARK_RED = 1
    GREEN = 2


class Device(DeviceServer):
    VERSION = "testdev-1.2"
    BUILD_STATE = "testdev-1.2.3"

    def request_add(self, ctx: RequestContext, a: int, b: int = 10) -> int:
        """Add two integers."""
        return a + b

    def request_types(
        self, ctx: RequestContext, s: str, f: float, flag: bool, addr: Address, colour: Colour,
        status: Status, raw: bytes, maybe: Optional[int] = None, *rest: float,  # noqa: UP045
    ) -> tuple[object, ...]:
        """Decode every supported argument type and echo them back."""
        return (s, f, flag, addr, colour, status, raw, maybe if maybe is not None else "none", *rest)

    def request_either(self, ctx: RequestContext, x: int | float) -> str:
        """Union annotations are tried in order."""
        return type(x).__name__

    async def request_progress(self, ctx: RequestContext, n: int) -> None:
        """Send N informs, then reply explicitly."""
        for i in range(n):
            ctx.inform("step", i)
        ctx.reply("ok", "done", n)

    def request_listing(self, ctx: RequestContext) -> None:
        """Informs plus ok N through ctx.informs."""
        ctx.informs([("a", 1), ("b", 2)])

    @timeout_hint(33)
    async def request_slow(self, ctx: RequestContext, delay: float) -> float:
        """A slow request with a timeout hint."""
        await asyncio.sleep(delay)
        return delay

    def request_deferred(self, ctx: RequestContext) -> None:
        """Replies later from a background callback."""
        ctx.defer()
        asyncio.get_running_loop().call_soon(ctx.reply, "ok", "later")

    def request_boom(self, ctx: RequestContext) -> None:
        """Raises an unexpected exception."""
        raise RuntimeError("kaput\nsecond line")

    async def request_fail(self, ctx: RequestContext, how: str) -> None:
        """Raises FailReply or InvalidReply."""
        if how == "fail":
            raise FailReply("it failed")
        raise InvalidReply("it was invalid")

    def request_bad_return(self, ctx: RequestContext) -> object:
        """Returns something that cannot be encoded."""
        return object()


def make_device(**kwargs: object) -> Device:
    dev = Device(**kwargs)  # type: ignore[arg-type]
    dev.add_sensor(Sensor("integer", "sensor.00000", "Test integer sensor number 0", "count", (-1000000, 1000000),
                          default=3, initial_status=Status.NOMINAL))
    dev.add_sensor(Sensor("boolean", "sensor.00002", "Test boolean sensor number 2", default=True,
                          initial_status=Status.NOMINAL))
    dev.add_sensor(Sensor("string", "other.name", "A string", default="with spaces", initial_status=Status.WARN))
    return dev


@pytest.fixture
async def device() -> AsyncIterator[Device]:
    dev = make_device()
    yield dev
    await dev.stop()


async def connect(dev: DeviceServer) -> LineClient:
    client, _ = LineClient.pair(dev)
    n = 3 if dev.protocol.major >= 5 else 2
    for _ in range(n):
        await client.next_message()
    return client


@pytest.fixture
async def client(device: Device) -> AsyncIterator[LineClient]:
    c = await connect(device)
    yield c
    await c.close()


def args(msg: Message) -> list[bytes]:
    return list(msg.arguments)


async def test_connect_informs_v5(device: Device) -> None:
    c, _ = LineClient.pair(device)
    msgs = [await c.next_message() for _ in range(3)]
    assert [bytes(m) for m in msgs] == [
        b"#version-connect katcp-protocol 5.1-BIMT\n",
        b"#version-connect katcp-library katclient-0.1.0 0.1.0\n",
        b"#version-connect katcp-device testdev-1.2 testdev-1.2.3\n",
    ]
    await c.close()


async def test_client_connected_goes_to_the_other_clients(device: Device, client: LineClient) -> None:
    second, conn = LineClient.pair(device)
    announced = await client.wait_inform("client-connected")
    assert announced.arguments == (f"127.0.0.1:{conn.address[1]}".encode(),)  # type: ignore[index]
    reply, informs = await second.request("watchdog")
    assert reply.reply_ok()
    assert all(m.name != "client-connected" for m in second.queued())
    reply, informs = await client.request("client-list")
    assert args(reply) == [b"ok", b"2"] and len(informs) == 2
    await second.close()


async def test_help_lists_every_request_with_its_docstring(device: Device, client: LineClient) -> None:
    reply, informs = await client.request("help")
    names = [m.arguments[0].decode() for m in informs]
    assert names == sorted(names)
    assert set(STANDARD_V51) <= set(names)
    assert args(reply) == [b"ok", str(len(informs)).encode()]
    assert len(informs) == len(STANDARD_V51) + 10
    reply, informs = await client.request("help", "add")
    assert args(reply) == [b"ok", b"1"] and informs[0].arguments == (b"add", b"Add two integers.")
    reply, _ = await client.request("help", "nope")
    assert reply.arguments[0] == b"fail" and b"Unknown request" in reply.arguments[1]


async def test_watchdog_and_mids(client: LineClient) -> None:
    client.send_raw(b"?watchdog[42]\n?watchdog\n")
    assert bytes(await client.next_message()) == b"!watchdog[42] ok\n"
    assert bytes(await client.next_message()) == b"!watchdog ok\n"
    reply, informs = await client.request("listing", mid=7)
    assert [bytes(m) for m in informs] == [b"#listing[7] a 1\n", b"#listing[7] b 2\n"]
    assert bytes(reply) == b"!listing[7] ok 2\n"


async def test_unknown_request_exact_text(client: LineClient) -> None:
    client.send_raw(b"?bogus\n")
    assert bytes(await client.next_message()) == b"!bogus invalid Unknown\\_request.\n"


async def test_version_list(client: LineClient) -> None:
    reply, informs = await client.request("version-list")
    assert [args(m) for m in informs] == [
        [b"katcp-protocol", b"5.1-BIMT"],
        [b"katcp-library", b"katclient-0.1.0", b"0.1.0"],
        [b"katcp-device", b"testdev-1.2", b"testdev-1.2.3"],
    ]
    assert args(reply) == [b"ok", b"3"]


async def test_log_level(client: LineClient) -> None:
    reply, _ = await client.request("log-level")
    assert args(reply) == [b"ok", b"warn"]
    reply, _ = await client.request("log-level", "debug")
    assert args(reply) == [b"ok", b"debug"]
    client.send_raw(b"?log-level bogus\n")
    assert bytes(await client.next_message()) == b"!log-level fail Unknown\\_logging\\_level\\_name\\_'bogus'\n"


async def test_mass_log_respects_the_level(device: Device, client: LineClient) -> None:
    device.mass_log("info", "hidden")
    device.mass_log("error", "shown", "my.logger")
    msg = await client.wait_inform("log")
    assert msg.arguments[0] == b"error" and msg.arguments[2:] == (b"my.logger", b"shown")
    float(msg.arguments[1])


async def test_sensor_list(client: LineClient) -> None:
    reply, informs = await client.request("sensor-list", mid=None)
    assert [bytes(m) for m in informs] == [
        b"#sensor-list other.name A\\_string \\@ string\n",
        b"#sensor-list sensor.00000 Test\\_integer\\_sensor\\_number\\_0 count integer -1000000 1000000\n",
        b"#sensor-list sensor.00002 Test\\_boolean\\_sensor\\_number\\_2 \\@ boolean\n",
    ]
    assert args(reply) == [b"ok", b"3"]
    reply, informs = await client.request("sensor-list", "sensor.00002")
    assert args(reply) == [b"ok", b"1"] and informs[0].arguments[0] == b"sensor.00002"
    reply, informs = await client.request("sensor-list", "/^sensor\\./")
    assert args(reply) == [b"ok", b"2"] and len(informs) == 2
    reply, informs = await client.request("sensor-list", "/nothing/")
    assert args(reply) == [b"ok", b"0"] and informs == []
    reply, _ = await client.request("sensor-list", "missing")
    assert reply.arguments[0] == b"fail" and b"Unknown sensor name" in reply.arguments[1]
    reply, _ = await client.request("sensor-list", "/(/")
    assert reply.arguments[0] == b"fail" and b"regular expression" in reply.arguments[1]


async def test_sensor_value(device: Device, client: LineClient) -> None:
    device.sensors["sensor.00000"].set_value(7, timestamp=1795297929.807324)
    reply, informs = await client.request("sensor-value", "sensor.00000", mid=5)
    assert [bytes(m) for m in informs] == [b"#sensor-value[5] 1795297929.807324 1 sensor.00000 nominal 7\n"]
    assert bytes(reply) == b"!sensor-value[5] ok 1\n"
    reply, informs = await client.request("sensor-value")
    assert args(reply) == [b"ok", b"3"]
    assert [m.arguments[2:] for m in informs] == [
        (b"other.name", b"warn", b"with spaces"),
        (b"sensor.00000", b"nominal", b"7"),
        (b"sensor.00002", b"nominal", b"1"),
    ]
    reply, _ = await client.request("sensor-value", "nope")
    assert reply.arguments[0] == b"fail" and b"Unknown sensor name" in reply.arguments[1]


async def test_sensor_sampling_query_set_and_errors(device: Device, client: LineClient) -> None:
    reply, _ = await client.request("sensor-sampling", "sensor.00000")
    assert args(reply) == [b"ok", b"sensor.00000", b"none"]
    # setting a strategy sends the current value before the reply (katcp.md 1.7)
    client.send_raw(b"?sensor-sampling[3] sensor.00000 period 0.5\n")
    first = await client.next_message()
    assert first.name == "sensor-status" and first.arguments[2:] == (b"sensor.00000", b"nominal", b"3")
    assert bytes(await client.next_message()) == b"!sensor-sampling[3] ok sensor.00000 period 0.5\n"
    reply, _ = await client.request("sensor-sampling", "sensor.00000")
    assert args(reply) == [b"ok", b"sensor.00000", b"period", b"0.5"]
    for bad, reason in [
        (("sensor.00000", "period", "0"), b"Period must be > 0"),
        (("sensor.00002", "differential", "1"), b"needs a numeric sensor"),
        (("sensor.00000", "bogus"), b"Unknown strategy"),
        (("sensor.00000", "event-rate", "1"), b"takes 2 parameter"),
        (("missing", "auto"), b"Unknown sensor name"),
    ]:
        reply, _ = await client.request("sensor-sampling", *bad)
        assert reply.arguments[0] == b"fail" and reason in reply.arguments[1], reply
        assert b"\n" not in reply.arguments[1]
    reply, _ = await client.request("sensor-sampling", "sensor.00000", "none")
    assert args(reply) == [b"ok", b"sensor.00000", b"none"]
    assert device.sensors["sensor.00000"].observer_count == 0


async def test_bulk_sensor_sampling(device: Device, client: LineClient) -> None:
    names = "sensor.00000,other.name,sensor.00002"
    reply, _ = await client.request("sensor-sampling", names, "event")
    assert args(reply) == [b"ok", names.encode(), b"event"]
    statuses = [m for m in client.queued() if m.name == "sensor-status"]
    assert sorted(m.arguments[2] for m in statuses) == [b"other.name", b"sensor.00000", b"sensor.00002"]
    # duplicates are rejected
    reply, _ = await client.request("sensor-sampling", "sensor.00000,sensor.00000", "auto")
    assert reply.arguments[0] == b"fail" and b"Duplicate sensor name" in reply.arguments[1]
    # all are checked before anything changes: one unknown name or a bad type changes nothing
    reply, _ = await client.request("sensor-sampling", "sensor.00000,missing", "auto")
    assert reply.arguments[0] == b"fail" and b"Unknown sensor name 'missing'" in reply.arguments[1]
    reply, _ = await client.request("sensor-sampling", "sensor.00000,sensor.00002", "differential", "1")
    assert reply.arguments[0] == b"fail"
    reply, _ = await client.request("sensor-sampling", "sensor.00000")
    assert args(reply) == [b"ok", b"sensor.00000", b"event"]
    assert not any(m.name == "sensor-status" for m in client.queued())
    # a multi-name query fails (katcp.md 1.7)
    reply, _ = await client.request("sensor-sampling", "sensor.00000,sensor.00002")
    assert reply.arguments == (b"fail", b"Cannot query multiple sensors.")
    # and ?sensor-sampling-clear drops every strategy of this client
    reply, _ = await client.request("sensor-sampling-clear")
    assert args(reply) == [b"ok"]
    assert all(s.observer_count == 0 for s in device.sensors.values())


async def test_without_flag_b_a_comma_list_is_just_an_unknown_name() -> None:
    dev = make_device(protocol="5.0-IM")
    c = await connect(dev)
    reply, _ = await c.request("sensor-sampling", "sensor.00000,sensor.00002", "auto")
    assert reply.arguments[0] == b"fail" and b"Unknown sensor name" in reply.arguments[1]
    reply, _ = await c.request("request-timeout-hint")
    assert args(reply) == [b"invalid", b"Unknown request."]  # flag T absent
    reply, informs = await c.request("help")
    assert len(informs) == len(STANDARD_V51) - 1 + 10
    await c.close()
    await dev.stop()


async def test_request_timeout_hint(client: LineClient) -> None:
    reply, informs = await client.request("request-timeout-hint")
    assert [args(m) for m in informs] == [[b"slow", b"33.0"]] and args(reply) == [b"ok", b"1"]
    reply, informs = await client.request("request-timeout-hint", "add")
    assert [args(m) for m in informs] == [[b"add", b"0.0"]]
    reply, _ = await client.request("request-timeout-hint", "missing")
    assert reply.arguments[0] == b"fail"


async def test_restart_default_fails_and_hook_works(client: LineClient) -> None:
    reply, _ = await client.request("restart")
    assert reply.arguments[0] == b"fail" and b"cannot restart" in reply.arguments[1]

    class Restartable(Device):
        restarted = 0

        async def restart(self) -> None:
            self.restarted += 1

    dev = Restartable()
    c = await connect(dev)
    reply, _ = await c.request("restart")
    assert args(reply) == [b"ok"] and dev.restarted == 1
    await c.close()
    await dev.stop()


async def test_halt_replies_then_disconnects_everybody(device: Device, client: LineClient) -> None:
    other = await connect(device)
    reply, _ = await client.request("halt")
    assert args(reply) == [b"ok"]
    for c in (client, other):
        msg = await c.wait_inform("disconnect")
        assert bytes(msg) == b"#disconnect Device\\_server\\_shutting\\_down.\n"
        await c.wait_closed()
    await asyncio.wait_for(device.until_stopped(), 5)
    assert device.connections == []
    await other.close()


async def test_argument_decoding(client: LineClient) -> None:
    reply, _ = await client.request("add", 2, 3)
    assert args(reply) == [b"ok", b"5"]
    reply, _ = await client.request("add", 2)
    assert args(reply) == [b"ok", b"12"]
    reply, _ = await client.request("types", "héllo wörld", "1.5", "1", "[::1]:80", "dark-red", "warn", b"\xff")
    assert args(reply) == [
        b"ok", "héllo wörld".encode(), b"1.5", b"1", b"[::1]:80", b"dark-red", b"warn", b"\xff", b"none",
    ]
    reply, _ = await client.request("types", "s", "2", "0", "10.0.0.1", "green", "nominal", b"", "4", "1", "2.5")
    assert args(reply)[7:] == [b"", b"4", b"1.0", b"2.5"]
    reply, _ = await client.request("either", "3")
    assert args(reply) == [b"ok", b"int"]
    reply, _ = await client.request("either", "3.5")
    assert args(reply) == [b"ok", b"float"]
    for bad, reason in [
        (("add",), b"Too few arguments"),
        (("add", 1, 2, 3), b"Too many arguments"),
        (("add", "x"), b"Bad value b'x' for argument a"),
        (("watchdog", "extra"), b"Too many arguments"),
        (("types", "s", "1", "2", "h:1", "green", "nominal", b""), b"argument flag"),
        (("types", "s", "1", "1", "h:1", "blue", "nominal", b""), b"expected one of dark-red, green"),
        (("types", b"\xff", "1", "1", "h:1", "green", "nominal", b""), b"argument s"),
        (("either", "x"), b"argument x"),
    ]:
        reply, _ = await client.request(*bad)
        assert reply.arguments[0] == b"fail" and reason in reply.arguments[1], (bad, reply)


async def test_replies_informs_and_errors(client: LineClient, caplog: pytest.LogCaptureFixture) -> None:
    reply, informs = await client.request("progress", 2)
    assert [args(m) for m in informs] == [[b"step", b"0"], [b"step", b"1"]]
    assert args(reply) == [b"ok", b"done", b"2"]
    reply, _ = await client.request("deferred")
    assert args(reply) == [b"ok", b"later"]
    reply, _ = await client.request("fail", "fail")
    assert args(reply) == [b"fail", b"it failed"]
    reply, _ = await client.request("fail", "invalid")
    assert args(reply) == [b"invalid", b"it was invalid"]
    with caplog.at_level(logging.ERROR, logger="katclient.server.server"):
        reply, _ = await client.request("boom")
    # one line: the exception type and message, no traceback; the traceback is logged
    assert args(reply) == [b"fail", b"RuntimeError: kaput second line"]
    assert any(r.exc_info and "boom" in r.getMessage() for r in caplog.records)
    reply, _ = await client.request("bad-return")
    assert reply.arguments[0] == b"fail" and b"cannot encode" in reply.arguments[1]


async def test_long_requests_run_concurrently(client: LineClient) -> None:
    client.send("slow", "0.3", mid=1)
    reply, _ = await client.request("watchdog", mid=2)
    assert reply.reply_ok()
    slow = await client.wait_for(lambda m: m.name == "slow")
    assert args(slow) == [b"ok", b"0.3"]


async def test_context_misuse_is_an_error() -> None:
    dev = make_device()
    c, conn = LineClient.pair(dev)
    ctx = RequestContext(conn, Message.request("x"))
    ctx.reply("ok")
    with pytest.raises(Exception, match="already been replied"):
        ctx.inform("late")
    ctx2 = RequestContext(conn, Message.request("x"))
    with pytest.raises(Exception, match="ok, fail or invalid"):
        ctx2.reply("maybe")
    await c.close()
    await dev.stop()


def test_a_request_without_docstring_is_a_type_error_at_class_creation() -> None:
    with pytest.raises(TypeError, match="no docstring"):

        class NoDoc(DeviceServer):
            def request_x(self, ctx: RequestContext) -> None:
                pass

    with pytest.raises(TypeError, match="cannot decode"):

        class BadAnnotation(DeviceServer):
            def request_x(self, ctx: RequestContext, x: list[int]) -> None:
                """Doc."""

    with pytest.raises(TypeError, match="cannot resolve annotation"):

        class Unresolvable(DeviceServer):
            def request_x(self, ctx: RequestContext, x: NoSuchType) -> None:  # type: ignore[name-defined]  # noqa: F821
                """Doc."""

    class OnlyTypeCheckingNames(DeviceServer):  # ctx and return annotations are never evaluated
        def request_x(self, ctx: NoSuchContext, x: int) -> NoSuchResult:  # type: ignore[name-defined]  # noqa: F821
            """Doc."""

    assert "x" in OnlyTypeCheckingNames._request_specs


async def test_dynamic_requests(device: Device, client: LineClient) -> None:
    async def handler(ctx: RequestContext, *raw: bytes) -> tuple[bytes, ...]:
        return tuple(reversed(raw))

    device.add_request("reverse", handler, "Reverse the arguments.", timeout_hint=2.5)
    reply, _ = await client.request("reverse", "a", "b")
    assert args(reply) == [b"ok", b"b", b"a"]
    reply, informs = await client.request("help", "reverse")
    assert informs[0].arguments == (b"reverse", b"Reverse the arguments.")
    reply, informs = await client.request("request-timeout-hint", "reverse")
    assert args(informs[0]) == [b"reverse", b"2.5"]
    device.remove_request("reverse")
    reply, _ = await client.request("reverse")
    assert args(reply) == [b"invalid", b"Unknown request."]
    with pytest.raises(KeyError):
        device.remove_request("reverse")
    for bad in [("1x", handler, "help"), ("ok", handler, ""), ("ok", handler, "help", 0.0)]:
        with pytest.raises(ValueError):
            device.add_request(*bad)  # type: ignore[arg-type]


async def test_mass_inform(device: Device, client: LineClient) -> None:
    other = await connect(device)
    device.mass_inform("custom", "a b", 3)
    device.mass_inform(Message.inform("other"))
    for c in (client, other):
        assert bytes(await c.wait_inform("custom")) == b"#custom a\\_b 3\n"
        assert (await c.next_message()).name == "other"
    await other.close()


async def test_real_tcp_listener() -> None:
    dev = make_device()
    host, port = await dev.start()
    assert dev.address == (host, port) and host == "127.0.0.1" and port > 0
    c = await LineClient.connect(host, port)
    assert (await c.next_message()).name == "version-connect"
    reply, informs = await c.request("client-list")
    assert args(reply) == [b"ok", b"1"]
    await dev.stop()
    await c.wait_closed()
    await c.close()


async def test_async_handler_with_bad_arguments_gets_a_fail_reply() -> None:
    from katclient.server import DeviceServer
    from katclient.server.testing import LineClient

    class Dev(DeviceServer):
        async def request_add(self, ctx, a: int, b: int) -> int:
            """Add two integers."""
            return a + b

    dev = Dev()
    host, port = await dev.start()
    client = await LineClient.connect(host, port)
    try:
        for args, expected in ((("1", "2"), b"!add ok 3"), (("x", "2"), b"!add fail"), (("1",), b"!add fail")):
            client.send("add", *args)
            while True:
                msg = await client.next_message()
                if msg.name == "add":
                    break
            assert bytes(msg).startswith(expected), msg
    finally:
        await client.close()
        await dev.stop()
