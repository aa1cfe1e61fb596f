"""split_arguments gives exactly parse_line's arguments (it is only a faster path)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from katclient.protocol import KatcpSyntaxError, Message, format_message, parse_line
from katclient.protocol.parser import split_arguments


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_split_arguments_matches_parse_line(args: list[bytes]) -> None:
    line = format_message(Message.inform("sensor-list", *args, mid=7))[:-1]
    assert split_arguments(line) == parse_line(line).arguments == tuple(args)


@given(st.binary(max_size=60))
def test_split_arguments_agrees_on_arbitrary_tails(tail: bytes) -> None:
    line = b"#x[1] " + tail.replace(b"\n", b"").replace(b"\r", b"")
    try:
        expected = parse_line(line).arguments
    except KatcpSyntaxError:
        with pytest.raises(KatcpSyntaxError):
            split_arguments(line)
        return
    assert split_arguments(line) == expected
