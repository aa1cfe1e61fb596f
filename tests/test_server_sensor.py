"""katclient.server.Sensor and SensorSet (protocols/katcp.md 1.5, 1.6 and 4 section 1.5)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from katclient.protocol import Address, InvalidUsage, Lru, Reading, SensorType, Status, parse_line
from katclient.server import Sensor, SensorSet


def clock() -> float:
    return 1000.0


def test_defaults_and_description() -> None:
    s = Sensor("integer", "a.b", "An integer", "count", (-10, 10), clock=clock)
    assert isinstance(s.type, SensorType) and s.type.name == "integer"
    assert (s.name, s.description, s.units, s.params) == ("a.b", "An integer", "count", (-10, 10))
    assert s.reading == Reading(1000.0, Status.UNKNOWN, 0)
    assert (s.value, s.status, s.timestamp) == (0, Status.UNKNOWN, 1000.0)
    d = Sensor("discrete", "d", params=["on", "off"])
    assert d.value == "on"  # a discrete sensor starts at its first value
    f = Sensor("float", "f", default=2.5, initial_status=Status.NOMINAL)
    assert (f.value, f.status) == (2.5, Status.NOMINAL)


def test_set_value_validates_and_notifies() -> None:
    s = Sensor("float", "x", clock=clock)
    seen: list[tuple[Sensor, Reading]] = []

    def observer(sensor: Sensor, reading: Reading) -> None:
        seen.append((sensor, reading))

    s.attach(observer)
    s.set_value(3)  # coerced to float
    s.set_value(4.5, Status.WARN, timestamp=12.0)
    assert seen == [(s, Reading(1000.0, Status.NOMINAL, 3.0)), (s, Reading(12.0, Status.WARN, 4.5))]
    assert type(s.value) is float
    with pytest.raises(InvalidUsage):
        s.set_value("not a number")
    with pytest.raises(InvalidUsage):
        s.set_value(1.0, status=99)  # type: ignore[arg-type]
    assert s.value == 4.5  # a rejected value changes nothing
    s.detach(observer)
    s.detach(observer)  # detaching twice is harmless
    s.set_value(5.0)
    assert len(seen) == 2 and s.observer_count == 0


def test_set_reading_and_discrete_validation() -> None:
    d = Sensor("discrete", "d", params=("on", "off"))
    d.set_reading(Reading(5.0, Status.ERROR, "off"))
    assert d.reading == Reading(5.0, Status.ERROR, "off")
    with pytest.raises(InvalidUsage):
        d.set_value("maybe")
    with pytest.raises(InvalidUsage):
        d.set_reading(Reading(5.0, Status.ERROR, "maybe"))


def test_an_observer_may_detach_itself_during_notification() -> None:
    s = Sensor("integer", "i")
    calls: list[str] = []

    def once(sensor: Sensor, reading: Reading) -> None:
        calls.append("once")
        sensor.detach(once)

    def always(sensor: Sensor, reading: Reading) -> None:
        calls.append("always")

    s.attach(once)
    s.attach(always)
    s.set_value(1)
    s.set_value(2)
    assert calls == ["once", "always", "always"]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(stype="complex", name="x"),
        dict(stype="integer", name="has space"),
        dict(stype="integer", name="a,b"),
        dict(stype="integer", name=""),
        dict(stype="integer", name="x", params=(1,)),
        dict(stype="integer", name="x", params=(5, 1)),
        dict(stype="discrete", name="x"),
        dict(stype="discrete", name="x", params=("two words",)),
        dict(stype="boolean", name="x", params=(1, 2)),
        dict(stype="integer", name="x", default=1.5),
    ],
)
def test_bad_sensor_definitions(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidUsage):
        Sensor(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "stype, params, value, wire",
    [
        ("integer", (), 42, b"42"),
        ("float", (), 0.5, b"0.5"),
        ("float", (), 1e-05, b"1e-05"),
        ("boolean", (), True, b"1"),
        ("lru", (), Lru.ERROR, b"error"),
        ("discrete", ("on", "off"), "off", b"off"),
        ("timestamp", (), 1795297922.929418, b"1795297922.929418"),
        ("address", (), Address("::1", 80), b"[::1]:80"),
        ("string", (), "value with spaces 4", b"value\\_with\\_spaces\\_4"),
        ("string", (), "", b"\\@"),
    ],
)
def test_status_line_per_type(stype: str, params: tuple[str, ...], value: object, wire: bytes) -> None:
    s = Sensor(stype, "sensor.00000", params=params)
    s.set_value(value, Status.NOMINAL, timestamp=1795297922.929418)
    line = s.status_line(s.reading)
    assert line == b"#sensor-status 1795297922.929418 1 sensor.00000 nominal " + wire + b"\n"
    assert s.status_line(s.reading) is line  # cached for the latest reading
    msg = parse_line(line[:-1])
    assert s.type.decode_value(msg.arguments[4]) == s.value
    v4 = s.status_line_v4(s.reading)
    assert v4.startswith(b"#sensor-status 1795297922929 1 sensor.00000 nominal ")


def test_list_tail_like_katcp_python() -> None:
    # katcp.md 1.5 example lines
    s = Sensor("integer", "sensor.00000", "Test integer sensor number 0", "count", (-1000000, 1000000))
    assert s.list_tail() == b"sensor.00000 Test\\_integer\\_sensor\\_number\\_0 count integer -1000000 1000000\n"
    b = Sensor("boolean", "sensor.00002", "Test boolean sensor number 2")
    assert b.list_tail() == b"sensor.00002 Test\\_boolean\\_sensor\\_number\\_2 \\@ boolean\n"


def test_sensor_set_callbacks_and_replacement() -> None:
    ss = SensorSet()
    events: list[tuple[str, Sensor]] = []
    ss.add_callbacks.append(lambda s: events.append(("add", s)))
    ss.remove_callbacks.append(lambda s: events.append(("remove", s)))
    a1 = Sensor("integer", "a")
    a2 = Sensor("float", "a")
    b = Sensor("integer", "b")
    ss.add(b)
    ss.add(a1)
    ss.add(a1)  # already there: no-op
    assert list(ss) == ["b", "a"] and [s.name for s in ss.sorted_sensors()] == ["a", "b"]
    ss.add(a2)  # replaces a1
    assert ss["a"] is a2 and len(ss) == 2
    with pytest.raises(KeyError):
        ss.remove(a1)  # not the sensor in the set any more
    ss.discard(a1)
    ss.remove(a2)
    del ss["b"]
    assert len(ss) == 0 and "a" not in ss
    assert events == [("add", b), ("add", a1), ("remove", a1), ("add", a2), ("remove", a2), ("remove", b)]
    with pytest.raises(InvalidUsage):
        ss.add("not a sensor")  # type: ignore[arg-type]


@given(st.text())
def test_any_string_value_survives_the_status_line(text: str) -> None:
    s = Sensor("string", "s")
    s.set_value(text, timestamp=1.5)
    msg = parse_line(s.status_line(s.reading)[:-1])
    assert msg.arguments[:4] == (b"1.500000", b"1", b"s", b"nominal")
    assert s.type.decode_value(msg.arguments[4]) == text


@given(st.floats())
def test_any_float_value_survives_the_status_line(x: float) -> None:
    s = Sensor("float", "f")
    s.set_value(x)
    got = s.type.decode_value(parse_line(s.status_line(s.reading)[:-1]).arguments[4])
    assert got == x or (math.isnan(x) and math.isnan(got))
