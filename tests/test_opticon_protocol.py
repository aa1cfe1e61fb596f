"""Sans-I/O tests of the PyOpticon protocol core: encoding, reply classification, framing, batching."""

from __future__ import annotations

import ast
import json
import pathlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from katclient.devices.opticon import protocol as p
from katclient.errors import InvalidUsage, OperationFailure, ProtocolError

NONCE = "katclient-probe-test-1"


def seed_dict(data: bytes) -> dict[str, object]:
    return json.loads(data)


# ------------------------------------------------------------------------------------------------------
# Encoding


def test_requests_match_the_seed_clients_json() -> None:
    # Keys and key order exactly as PyOpticonSocketClient builds them (protocols/pyopticon.md 1.2).
    cases = [
        (
            p.encode_get("Heater", "Temperature", True),
            {"cmd": "Get", "widget_nickname": "Heater", "field_name": "Temperature", "printout": True},
        ),
        (
            p.encode_set("Heater", "Setpoint Entry", "80", False),
            {
                "cmd": "Set",
                "widget_nickname": "Heater",
                "field_name": "Setpoint Entry",
                "new_value": "80",
                "printout": False,
            },
        ),
        (p.encode_confirm("Valve"), {"cmd": "Confirm", "widget_nickname": "Valve", "printout": False}),
        (p.encode_eval("1", True), {"cmd": "Eval", "code": "1", "printout": True}),
        (p.encode_close(), {"cmd": "Close"}),
    ]
    for request, expected in cases:
        decoded = seed_dict(request.data)
        assert decoded == expected
        assert list(decoded) == list(expected)
    assert p.encode_close().data == b'{"cmd":"Close"}'
    assert p.encode_get("a", "b").command is p.Command.GET
    assert p.encode_set("a", "b", "c").shape is p.ReplyShape.ACK
    assert p.encode_get("a", "b").shape is p.ReplyShape.VALUE
    assert p.encode_close().shape is p.ReplyShape.NONE


def test_numbers_are_sent_as_strings_and_bad_types_refused() -> None:
    assert seed_dict(p.encode_set("H", "F", 5).data)["new_value"] == "5"
    assert seed_dict(p.encode_set("H", "F", 2.5).data)["new_value"] == "2.5"
    with pytest.raises(InvalidUsage):
        p.encode_set("H", "F", True)
    with pytest.raises(InvalidUsage):
        p.encode_set("H", "F", None)  # type: ignore[arg-type]
    with pytest.raises(InvalidUsage):
        p.encode_get(3, "F")  # type: ignore[arg-type]
    with pytest.raises(InvalidUsage):
        p.encode_eval(b"1")  # type: ignore[arg-type]


def test_request_limit_is_exactly_1024_bytes() -> None:
    base = len(p.encode_get("", "F").data)
    fits = p.encode_get("x" * (p.MAX_REQUEST_BYTES - base), "F")
    assert len(fits.data) == p.MAX_REQUEST_BYTES
    with pytest.raises(p.RequestTooLong) as info:
        p.encode_get("x" * (p.MAX_REQUEST_BYTES - base + 1), "F")
    assert info.value.size == p.MAX_REQUEST_BYTES + 1
    assert isinstance(info.value, InvalidUsage) and isinstance(info.value, ValueError)
    # Non-ASCII text is counted as encoded (json escapes it), not as characters.
    with pytest.raises(p.RequestTooLong):
        p.encode_eval("'" + "é" * 200 + "'")


def test_exec_source_wraps_text_and_dedents_functions() -> None:
    assert p.exec_source("x = 1\ny = lambda: x") == "def _katclient_exec():\n    x = 1\n    y = lambda: x\n"
    assert p.exec_source("   ") == "def _katclient_exec():\n    pass\n"

    def nested() -> None:
        pass

    source = p.exec_source(nested)
    assert source.startswith("def nested() -> None:\n")
    with pytest.raises(InvalidUsage):
        p.exec_source(print)  # a builtin has no source
    with pytest.raises(InvalidUsage):
        p.exec_source(3)  # type: ignore[arg-type]
    assert seed_dict(p.encode_exec("pass").data)["cmd"] == "Exec"


def test_probe_is_an_eval_of_a_literal() -> None:
    decoded = seed_dict(p.encode_probe(NONCE).data)
    assert decoded == {"cmd": "Eval", "code": repr(NONCE), "printout": False}
    assert eval(decoded["code"], {}) == NONCE  # type: ignore[arg-type]
    for bad in ("", "tab\there", "é"):
        with pytest.raises(InvalidUsage):
            p.encode_probe(bad)


def test_introspection_expressions() -> None:
    class Widget:
        def __init__(self, fields: list[str]) -> None:
            self.attributes = dict.fromkeys(fields)

    class Minimal:
        pass

    class Dashboard:
        widgets_by_nickname = {"Heater": Widget(["A", "B"]), "Title": Minimal()}

    namespace = {"get_dashboard": lambda: Dashboard}
    assert p.parse_field_listing(eval(p.INTROSPECTION_EXPRESSION, namespace)) == {
        "Heater": ["A", "B"],
        "Title": [],
    }
    with pytest.raises(AttributeError):  # why katclient hardens the documented one
        eval(p.DOCUMENTED_INTROSPECTION_EXPRESSION, namespace)
    assert p.encode_list_fields().shape is p.ReplyShape.LITERAL


# ------------------------------------------------------------------------------------------------------
# Batch reads


class _Var:
    def __init__(self, value: str) -> None:
        self.value = value

    def get(self) -> str:
        return self.value


def test_batch_get_splits_under_the_limit_and_reads_in_order() -> None:
    pairs = [(f"Widget number {i}", f"Field with a long name {j}") for i in range(20) for j in range(5)]

    class Widget:
        def __init__(self, i: int) -> None:
            self.attributes = {f"Field with a long name {j}": _Var(f"v{i}.{j}") for j in range(4)}

    class Dashboard:
        widgets_by_nickname = {f"Widget number {i}": Widget(i) for i in range(19)}

    batches = p.encode_batch_get(pairs)
    assert len(batches) > 1
    assert [pair for _, chunk in batches for pair in chunk] == pairs
    values: dict[tuple[str, str], str | None] = {}
    for request, chunk in batches:
        assert len(request.data) <= p.MAX_REQUEST_BYTES
        assert request.shape is p.ReplyShape.LITERAL
        code = seed_dict(request.data)["code"]
        reply = eval(code, {"get_dashboard": lambda: Dashboard})  # type: ignore[arg-type]
        values.update(zip(chunk, p.parse_batch_reply(reply, len(chunk))))
    assert values[("Widget number 3", "Field with a long name 2")] == "v3.2"
    assert values[("Widget number 3", "Field with a long name 4")] is None  # no such field
    assert values[("Widget number 19", "Field with a long name 0")] is None  # no such widget
    assert p.encode_batch_get([]) == []


def test_batch_get_refuses_a_pair_too_long_alone() -> None:
    with pytest.raises(p.RequestTooLong):
        p.encode_batch_get([("x" * 1100, "y")])


def test_batch_reply_and_listing_validation() -> None:
    assert p.parse_batch_reply("['a', None]", 2) == ["a", None]
    for bad, count in (("['a']", 2), ("[1, 2]", 2), ("{'a': 1}", 1), ("['a'", 1), ("__import__('os')", 1)):
        with pytest.raises(p.UnexpectedReply):
            p.parse_batch_reply(bad, count)
    assert p.parse_field_listing("{'H': ['A']}") == {"H": ["A"]}
    for bad in ("{'H': 'A'}", "['H']", "{1: []}", "{'H': [1]}", "nonsense"):
        with pytest.raises(p.UnexpectedReply):
            p.parse_field_listing(bad)


# ------------------------------------------------------------------------------------------------------
# Reply classification


def test_check_reply_modes() -> None:
    assert p.check_reply(p.Command.SET, "Success", p.ReplyShape.ACK) == "Success"
    assert p.check_reply(p.Command.GET, "25.0", p.ReplyShape.VALUE) == "25.0"
    assert p.check_reply(p.Command.GET, "Errors: 3", p.ReplyShape.VALUE) == "Errors: 3"  # not an error
    with pytest.raises(p.DashboardError) as info:
        p.check_reply(p.Command.GET, "Error: 'Nope'", p.ReplyShape.VALUE)
    err = info.value
    assert isinstance(err, OperationFailure)
    assert err.reason == "'Nope'" and err.reply == "Error: 'Nope'" and err.command == "Get"
    assert str(err) == "In Get, Error: 'Nope'"  # the seed's 'exception' mode message
    assert p.check_reply(p.Command.GET, "Error: 'Nope'", p.ReplyShape.VALUE, "none") == "Error: 'Nope'"
    assert p.check_reply(p.Command.SET, "Error: x", p.ReplyShape.ACK, "print") == "Error: x"
    with pytest.raises(p.UnexpectedReply):
        p.check_reply(p.Command.SET, "25.0", p.ReplyShape.ACK)


# ------------------------------------------------------------------------------------------------------
# Framing


def framer(shape_request: p.Request | None = None, probing: bool = True) -> p.ReplyFramer:
    return p.ReplyFramer(shape_request or p.encode_get("H", "F"), NONCE, probing)


def test_short_first_arrival_is_whole() -> None:
    f = framer()
    assert f.state is p.FramerState.AWAITING
    f.receive_data(b"25.00")
    assert f.done and f.reply == "25.00"


def test_ack_success_is_recognised_by_content() -> None:
    f = framer(p.encode_set("H", "F", "1"))
    f.receive_data(b"Success")
    assert f.done and f.reply == "Success"


def test_bytes_after_a_complete_reply_are_refused() -> None:
    f = framer()
    f.receive_data(b"25.00")
    with pytest.raises(p.UnexpectedReply):
        f.receive_data(b"junk")


def test_zero_byte_reply_found_with_a_probe() -> None:
    f = framer()
    f.quiet()
    assert f.state is p.FramerState.PROBE_NEEDED
    assert seed_dict(f.probe.data)["code"] == repr(NONCE)
    f.probe_sent()
    assert f.state is p.FramerState.PROBING
    f.receive_data(NONCE.encode())
    assert f.done and f.reply == ""


def test_long_reply_fed_one_byte_at_a_time_then_probe_echo() -> None:
    reply = ("é" * 400 + "tail").encode()
    f = framer(p.encode_eval("x"))
    f.receive_data(reply[:600])
    assert f.state is p.FramerState.PROBE_NEEDED  # long: more may follow
    for i in range(600, len(reply)):
        f.receive_data(reply[i : i + 1])
    assert f.state is p.FramerState.PROBE_NEEDED
    f.probe_sent()
    for byte in NONCE.encode():
        assert not f.done
        f.receive_data(bytes([byte]))
    assert f.done and f.reply == reply.decode()


def test_literal_reply_complete_by_content_without_probe() -> None:
    listing = repr({f"W{i}": [f"F{j}" for j in range(10)] for i in range(50)}).encode()
    assert len(listing) > p.WHOLE_REPLY_BYTES
    f = framer(p.encode_list_fields())
    f.receive_data(listing[:700])
    assert f.state is p.FramerState.PROBE_NEEDED
    f = framer(p.encode_list_fields())
    f.receive_data(listing)
    assert f.done and ast.literal_eval(f.reply) == ast.literal_eval(listing.decode())


def test_without_probing_quiet_settles_a_reply_but_not_silence() -> None:
    f = framer(probing=False)
    f.quiet()
    assert f.state is p.FramerState.AWAITING  # zero bytes: only a timeout ends this
    f.receive_data(b"x" * 1000)
    assert f.state is p.FramerState.AWAITING
    f.quiet()
    assert f.done and f.reply == "x" * 1000


def test_framer_limits_and_misuse() -> None:
    f = framer()
    f.quiet()
    f.probe_sent()
    with pytest.raises(p.ReplyTooLong):
        f.receive_data(b"x" * (p.MAX_REPLY_BYTES + 1))
    with pytest.raises(InvalidUsage):
        framer().probe_sent()
    with pytest.raises(InvalidUsage):
        p.ReplyFramer(p.encode_close(), NONCE)
    with pytest.raises(InvalidUsage):
        _ = framer().reply
    bad = framer()
    bad.receive_data(b"\xff\xfe")
    with pytest.raises(p.UnexpectedReply):
        _ = bad.reply
    assert issubclass(p.UnexpectedReply, ProtocolError) and issubclass(p.ReplyTooLong, ProtocolError)


@given(
    reply=st.text(max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
    early=st.booleans(),
)
def test_probed_reply_is_exact_under_any_split(reply: str, cuts: list[int], early: bool) -> None:
    """Whatever the reply and however TCP splits it (and the probe's echo), the reply comes out exact."""
    data = reply.encode()
    wire = data + NONCE.encode()
    f = framer(p.encode_eval("x"))
    if early and len(data) >= p.WHOLE_REPLY_BYTES:
        # Some of a long reply came first; the rest arrives after the probe was asked for.
        head = p.WHOLE_REPLY_BYTES
        f.receive_data(wire[:head])
        wire = wire[head:]
    else:
        f.quiet()
    assert f.state is p.FramerState.PROBE_NEEDED
    f.probe_sent()
    points = sorted({c for c in cuts if 0 < c < len(wire)})
    for start, end in zip([0, *points], [*points, len(wire)]):
        f.receive_data(wire[start:end])
    assert f.done and f.reply == reply


def test_protocol_module_imports_no_io() -> None:
    """The core is sans-I/O: no socket, event loop or Tornado import (STYLE.md habit 1)."""
    source = pathlib.Path(p.__file__).read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"socket", "asyncio", "tornado", "selectors", "ssl", "threading", "logging"}
