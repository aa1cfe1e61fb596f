"""Sensor types, statuses, timestamps, addresses, sampling strategies and protocol flags.

Sources: protocols/katcp.md 1.3-1.7.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from katclient.protocol import (
    SENSOR_TYPES,
    STATUS_FROM_WIRE,
    V4,
    V5_0_IM,
    V5_1_BIMT,
    Address,
    InvalidUsage,
    Lru,
    ProtocolError,
    ProtocolFlags,
    Sampling,
    Status,
    Strategy,
    decode_timestamp,
    encode_timestamp,
    parse_sampling,
    sensor_type,
)


@pytest.mark.parametrize(
    "type_name, value, wire",
    [
        ("integer", 0, b"0"),
        ("integer", -42, b"-42"),
        ("float", 0.5, b"0.5"),
        ("float", 1e-05, b"1e-05"),
        ("boolean", True, b"1"),
        ("boolean", False, b"0"),
        ("lru", Lru.NOMINAL, b"nominal"),
        ("lru", Lru.ERROR, b"error"),
        ("discrete", "on", b"on"),
        ("timestamp", 1795297929.807324, b"1795297929.807324"),
        ("address", Address("127.0.0.1", 7147), b"127.0.0.1:7147"),
        ("address", Address("::1", 80), b"[::1]:80"),
        ("address", Address("example.org"), b"example.org"),
        ("string", "value with spaces 4", b"value with spaces 4"),
    ],
)
def test_sensor_type_wire_forms(type_name: str, value: object, wire: bytes) -> None:
    # katcp.md 1.5 (verified examples)
    st_ = sensor_type(type_name)
    assert st_.encode_value(value) == wire
    assert st_.decode_value(wire) == value


def test_v4_timestamps_are_milliseconds() -> None:
    assert encode_timestamp(1795297929.759, 4) == b"1795297929759"
    assert decode_timestamp(b"1795297929759", 4) == pytest.approx(1795297929.759)
    assert encode_timestamp(1795297929.807324) == b"1795297929.807324"
    assert sensor_type("timestamp").encode_value(1.5, 4) == b"1500"


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_values_round_trip(x: float) -> None:
    ft = SENSOR_TYPES["float"]
    assert ft.decode_value(ft.encode_value(x)) == x


@given(st.integers(min_value=-(2**63), max_value=2**63))
def test_integer_values_round_trip(n: int) -> None:
    it = SENSOR_TYPES["integer"]
    assert it.decode_value(it.encode_value(n)) == n


def test_check_value_coerces_and_rejects() -> None:
    assert SENSOR_TYPES["float"].check_value(3) == 3.0
    assert SENSOR_TYPES["integer"].check_value(3.0) == 3
    with pytest.raises(InvalidUsage):
        SENSOR_TYPES["integer"].check_value(3.5)
    with pytest.raises(InvalidUsage):
        SENSOR_TYPES["integer"].check_value(True)
    with pytest.raises(InvalidUsage):
        SENSOR_TYPES["discrete"].check_value("maybe", ("on", "off"))
    with pytest.raises(InvalidUsage):
        SENSOR_TYPES["timestamp"].check_value(math.inf)
    with pytest.raises(InvalidUsage):
        sensor_type("complex")


@pytest.mark.parametrize("text", ["", "a:b:c", "[::1", "[::1]x", "host:99999", "host:port"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        Address.parse(text)


def test_statuses_on_the_wire() -> None:
    # katcp.md 1.6
    assert [s.wire for s in Status] == [
        b"unknown", b"nominal", b"warn", b"error", b"failure", b"unreachable", b"inactive",
    ]
    assert STATUS_FROM_WIRE[b"warn"] is Status.WARN
    assert [s for s in Status if s.valid_value()] == [Status.NOMINAL, Status.WARN, Status.ERROR]


def test_params_for_sensor_list() -> None:
    assert SENSOR_TYPES["integer"].format_params((-1000000, 1000000)) == (b"-1000000", b"1000000")
    assert SENSOR_TYPES["integer"].parse_params([b"-5", b"5"]) == (-5, 5)
    assert SENSOR_TYPES["discrete"].parse_params([b"on", b"off"]) == ("on", "off")
    assert SENSOR_TYPES["boolean"].parse_params([]) == ()
    with pytest.raises(ValueError):
        SENSOR_TYPES["discrete"].parse_params([])


# -- sampling strategies (katcp.md 1.7) ------------------------------------------------------


@pytest.mark.parametrize(
    "strategy, params, expected",
    [
        ("none", [], Sampling(Strategy.NONE)),
        ("auto", [], Sampling(Strategy.AUTO)),
        ("period", [b"0.5"], Sampling(Strategy.PERIOD, (0.5,))),
        ("event", [], Sampling(Strategy.EVENT)),
        ("differential", [b"5"], Sampling(Strategy.DIFFERENTIAL, (5.0,))),
        ("event-rate", [b"0.1", b"10"], Sampling(Strategy.EVENT_RATE, (0.1, 10.0))),
        ("differential-rate", [b"1", b"0.1", b"10"], Sampling(Strategy.DIFFERENTIAL_RATE, (1.0, 0.1, 10.0))),
    ],
)
def test_parse_each_strategy(strategy: str, params: list[bytes], expected: Sampling) -> None:
    assert parse_sampling(strategy, params, SENSOR_TYPES["float"]) == expected


def test_differential_takes_a_float_on_an_integer_sensor() -> None:
    # katcp-python rejects `differential 5.0` for integer sensors (katcp.md 1.7); katclient does not.
    assert parse_sampling("differential", [b"5.0"], SENSOR_TYPES["integer"]).params == (5.0,)


@pytest.mark.parametrize(
    "strategy, params, sensor, reason",
    [
        ("bogus", [], "float", "Unknown strategy"),
        ("period", [], "float", "takes 1 parameter"),
        ("period", [b"0"], "float", "Period must be > 0"),
        ("period", [b"-1"], "float", "must be finite and >= 0"),
        ("period", [b"nan"], "float", "must be finite"),
        ("period", [b"x"], "float", "not a number"),
        ("auto", [b"1"], "float", "takes 0 parameter"),
        ("event-rate", [b"2", b"1"], "float", "longer than longest"),
        ("differential", [b"1"], "boolean", "needs a numeric sensor"),
        ("differential-rate", [b"1", b"0", b"1"], "string", "needs a numeric sensor"),
    ],
)
def test_bad_strategies_give_one_line_reasons(strategy: str, params: list[bytes], sensor: str, reason: str) -> None:
    with pytest.raises(InvalidUsage) as info:
        parse_sampling(strategy, params, SENSOR_TYPES[sensor])
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_v4_strategies_and_millisecond_periods() -> None:
    assert parse_sampling("period", [b"500"], major=4).params == (0.5,)
    assert Sampling(Strategy.PERIOD, (0.5,)).wire_arguments(4) == (b"period", b"500")
    assert Sampling(Strategy.PERIOD, (0.5,)).wire_arguments(5) == (b"period", b"0.5")
    with pytest.raises(InvalidUsage):
        parse_sampling("event-rate", [b"1", b"2"], major=4)


# -- protocol flags (katcp.md 1.3) ------------------------------------------------------------


def test_protocol_flags() -> None:
    assert ProtocolFlags.parse("5.0-IM") == V5_0_IM and str(V5_0_IM) == "5.0-IM"
    assert str(ProtocolFlags.parse("5.1-TBMI")) == "5.1-BIMT"
    assert V5_1_BIMT.bulk_set_sensor_sampling and V5_1_BIMT.request_timeout_hints and V5_1_BIMT.message_ids
    assert not ProtocolFlags.parse("5.0-BIMT").bulk_set_sensor_sampling  # B needs 5.1
    assert V4.timestamps_in_ms and not V4.message_ids and not V5_0_IM.timestamps_in_ms
    with pytest.raises(ProtocolError):
        ProtocolFlags.parse("five")
