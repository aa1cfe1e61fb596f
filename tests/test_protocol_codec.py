"""The sans-I/O KATCP codec: escapes, formatting, parsing, framing (protocols/katcp.md 1.1, 1.2, 5.2, 5.3).

Property-based where it matters (STYLE.md habit 6): any arguments survive format then
parse, and any split of a byte stream (whole, one byte at a time, random chunks, with
trailing garbage) yields the same messages.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from katclient.protocol import (
    MAX_MID,
    InvalidUsage,
    KatcpSyntaxError,
    LineTooLongError,
    Message,
    MessageType,
    Parser,
    encode_argument,
    escape,
    format_message,
    parse_line,
)

names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z")
mids = st.none() | st.integers(min_value=1, max_value=MAX_MID)
arguments = st.lists(st.binary(max_size=40), max_size=8)
mtypes = st.sampled_from(list(MessageType))


@st.composite
def messages(draw: st.DrawFn) -> Message:
    return Message(draw(mtypes), draw(names), *draw(arguments), mid=draw(mids))


@given(messages())
def test_any_message_survives_format_then_parse(msg: Message) -> None:
    line = format_message(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and b"\r" not in line
    assert parse_line(line[:-1]) == msg


@given(st.binary(max_size=200))
def test_escape_never_leaves_a_separator_or_terminator(arg: bytes) -> None:
    out = escape(arg)
    for raw in (b" ", b"\t", b"\n", b"\r", b"\0", b"\x1b"):
        assert raw not in out
    assert out  # an empty argument is \@
    assert parse_line(b"?x " + out).arguments == (arg,)


def _feed_all(chunks: list[bytes], limit: int = 1 << 20) -> list[Message | KatcpSyntaxError]:
    parser = Parser(limit)
    out: list[Message | KatcpSyntaxError] = []
    for c in chunks:
        out.extend(parser.feed(c))
    return out


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


@settings(max_examples=60)
@given(st.lists(messages(), max_size=12), st.lists(st.integers(min_value=0, max_value=3000), max_size=20),
       st.sampled_from([b"\n", b"\r", b"\r\n"]))
def test_any_split_of_a_stream_gives_the_same_messages(msgs: list[Message], cuts: list[int], eol: bytes) -> None:
    data = b"".join(format_message(m)[:-1] + eol for m in msgs)
    whole = _feed_all([data])
    assert whole == msgs
    assert _feed_all([data[i:i + 1] for i in range(len(data))]) == msgs
    assert _feed_all(_split(data, cuts)) == msgs


@settings(max_examples=60)
@given(st.lists(messages(), min_size=1, max_size=6), st.binary(max_size=60))
def test_trailing_garbage_loses_nothing_before_it(msgs: list[Message], garbage: bytes) -> None:
    data = b"".join(map(format_message, msgs)) + garbage
    for chunks in ([data], [data[i:i + 1] for i in range(len(data))]):
        parser = Parser()
        items = [item for c in chunks for item in parser.feed(c)]
        assert items[: len(msgs)] == msgs
        # whatever the garbage was, a line after it parses normally
        assert parser.feed(b"\n?tail\n")[-1] == Message.request("tail")


@settings(max_examples=60)
@given(st.binary(max_size=300))
def test_parser_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    items = _feed_all([data + b"\n"], limit=64)
    assert all(isinstance(i, (Message, KatcpSyntaxError)) for i in items)


def test_reference_request_with_every_escape() -> None:
    # katcp.md 1.1: the line katcp-python serialised with every escape.
    line = b"?echo[7] \\@ a\\_b tab\\there nl\\nx cr\\rx nul\\0x esc\\ex back\\\\slash 42 1.5 1"
    msg = parse_line(line)
    assert msg.mtype is MessageType.REQUEST and msg.name == "echo" and msg.mid == 7
    assert msg.arguments == (
        b"", b"a b", b"tab\there", b"nl\nx", b"cr\rx", b"nul\0x", b"esc\x1bx", b"back\\slash", b"42", b"1.5", b"1",
    )
    assert format_message(msg) == line + b"\n"


def test_codec_example_from_katcp_codec() -> None:
    # katcp.md 5.2: [b"1.5", b"a b", b"", b"\\x\n\t\0\x1b\r"] formats as 1.5 a\_b \@ \\x\n\t\0\e\r
    msg = Message.inform("x", b"1.5", b"a b", b"", b"\\x\n\t\0\x1b\r")
    assert format_message(msg) == b"#x 1.5 a\\_b \\@ \\\\x\\n\\t\\0\\e\\r\n"


def test_argument_encoding_like_katcp_python() -> None:
    assert encode_argument(True) == b"1" and encode_argument(False) == b"0"
    assert encode_argument(42) == b"42"
    assert encode_argument(1.5) == b"1.5" and encode_argument(1e-05) == b"1e-05"
    assert encode_argument(1000000000.0) == b"1000000000.0"
    assert encode_argument("héllo") == "héllo".encode()
    assert encode_argument(b"\xff") == b"\xff"
    with pytest.raises(InvalidUsage):
        encode_argument(object())


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"garbage line", "Bad type character"),
        (b"?", "Bad message name"),
        (b"?1abc", "Bad message name"),
        (b"?abc[0]", "Bad message name"),  # a mid's first digit must be 1-9 (katcp.md 5.2)
        (b"?abc[2147483648]", "Message ID overflowed"),
        (b"?abc \\q", "Invalid escape"),
        (b"?abc def\\", "Trailing backslash"),
        (b"?abc a\x00b", "Invalid character"),
        (b"?abc a\x1bb", "Invalid character"),
    ],
)
def test_malformed_lines_are_reported_with_a_reason(line: bytes, reason: str) -> None:
    with pytest.raises(KatcpSyntaxError) as info:
        parse_line(line)
    assert reason in str(info.value)
    # and the parser turns them into error objects, keeping later lines
    items = Parser().feed(line + b"\n?ok\n")
    assert isinstance(items[0], KatcpSyntaxError)
    assert items[1] == Message.request("ok")


def test_separators_blank_lines_and_max_mid() -> None:
    items = Parser().feed(b"\n\r\n   \t\n!a\tb \t c  \r#b[2147483647]\n")
    assert items == [Message.reply("a", b"b", b"c"), Message.inform("b", mid=MAX_MID)]


def test_over_long_line_costs_bounded_memory_and_parsing_resumes() -> None:
    limit = 1024
    parser = Parser(limit)
    errors: list[object] = []
    for _ in range(300):  # 300 KiB without a terminator
        errors.extend(parser.feed(b"x" * 1024))
        assert parser.buffer_size < limit
    assert len(errors) == 1 and isinstance(errors[0], LineTooLongError)
    assert parser.feed(b"still the same line\n?watchdog\n") == [Message.request("watchdog")]


def test_line_limit_counts_the_terminator() -> None:
    parser = Parser(20)
    ok = b"?a " + b"x" * 15  # 18 bytes + \n = 19
    assert parser.feed(ok + b"\n") == [parse_line(ok)]
    exact = b"?a " + b"x" * 17  # 20 bytes + \n = 21 > 20
    items = parser.feed(exact + b"\n?b\n")
    assert isinstance(items[0], LineTooLongError) and items[1] == Message.request("b")


def test_message_validation_fails_when_built() -> None:
    with pytest.raises(InvalidUsage):
        Message.request("1bad")
    with pytest.raises(InvalidUsage):
        Message.request("ok", mid=0)
    with pytest.raises(InvalidUsage):
        Message.request("ok", mid=MAX_MID + 1)
    reply = Message.reply("x", "ok", 3)
    assert reply.reply_ok() and reply.code == b"ok" and reply.arguments == (b"ok", b"3")
    assert not Message.reply("x", "fail").reply_ok()
    assert not Message.inform("x", "ok").reply_ok()
