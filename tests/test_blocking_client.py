"""BlockingClient against an aiokatcp device running in its own thread: connect, status,
requests, pending requests, sensors, listeners, events and TARGET strings."""

from __future__ import annotations

import dataclasses
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from katclient import targets
from katclient.client.blocking import (
    DEFAULT,
    BlockingClient,
    BlockingSensor,
    ConnectionState,
    IOThread,
    SyncState,
)
from katclient.client.events import ClientEvent, Events
from katclient.errors import (
    FailReply,
    InvalidReply,
    InvalidUsage,
    KatclientConnectionError,
    KatclientError,
    KatclientTimeoutError,
    OperationFailure,
)
from katclient.protocol import Reading, Status
from tests.test_blocking_support import SLOW_HINT, BlockingTestDevice, DeviceThread

WAIT = 20.0  # seconds: generous bound for things that happen at once on a healthy machine


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []


@pytest.fixture
def device() -> Iterator[DeviceThread]:
    with DeviceThread() as dev:
        yield dev


@pytest.fixture
def client(device: DeviceThread) -> Iterator[BlockingClient]:
    c = BlockingClient("test", timeout=WAIT)
    with c.connect(device.host, device.port):
        yield c


def read_events(client: BlockingClient, count: int) -> list[ClientEvent]:
    events: list[ClientEvent] = []
    for _ in range(count):
        event = client.read_event(timeout=WAIT)
        assert event is not None, f"only {events} arrived"
        events.append(event)
    return events


def drain(client: BlockingClient) -> list[ClientEvent]:
    events: list[ClientEvent] = []
    while (event := client.read_event(timeout=0)) is not None:
        events.append(event)
    return events


# ---------------------------------------------------------------------- connect and status
def test_connect_syncs_and_status_is_an_immutable_snapshot(device: DeviceThread) -> None:
    client = BlockingClient("status", timeout=WAIT)
    assert client.get_status().connection_state is ConnectionState.DISCONNECTED
    with client.connect(device.host, device.port) as same:
        assert same is client
        status = client.get_status()
        assert status.connected and status.synced
        assert status.connection_state is ConnectionState.CONNECTED
        assert status.sync_state is SyncState.SYNCED
        assert str(status.protocol) == "5.1-BIMT"
        assert status.versions["katcp-device"] == ("blocking-test-1.0", "blocking-test-1.0.0")
        assert status.sensor_count == 3 == len(client.sensors)
        assert status.request_count == len(client.requests) and "bump" in client.requests
        assert (status.host, status.port) == (device.host, device.port)
        assert status.last_error is None
        with pytest.raises(dataclasses.FrozenInstanceError):
            status.sensor_count = 0  # type: ignore[misc]
        with pytest.raises(TypeError):
            status.versions["x"] = ("y",)  # type: ignore[index]
    after = client.get_status()
    assert after.connection_state is ConnectionState.DISCONNECTED and not after.connected
    assert after.versions["katcp-device"][0] == "blocking-test-1.0"
    assert status.synced  # the old snapshot did not change


def test_connect_accepts_target_strings(device: DeviceThread) -> None:
    for target in (f"katcp://{device.host}:{device.port}", f"{device.host}:{device.port}"):
        client = BlockingClient(timeout=WAIT)
        with client.connect(target):
            assert client.get_status().target == target
            assert client.requests["bump"](1)[0].reply_ok()


class _FakeVirtualDevice:
    """Stands in for a virtual device class (``from_target``, ``start``, ``address``, ``stop``)."""

    started_in: list[str] = []

    def __init__(self, listen_host: str, listen_port: int) -> None:
        self._server = BlockingTestDevice(listen_host, listen_port)

    @classmethod
    def from_target(cls, host: str, port: int, *, listen_host: str, listen_port: int, **options: Any) -> Any:
        return cls(listen_host, listen_port)

    async def start(self) -> None:
        _FakeVirtualDevice.started_in.append(threading.current_thread().name)
        await self._server.start()

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address

    async def stop(self) -> None:
        await self._server.stop()


def test_virtual_device_target_runs_in_the_io_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        targets.VIRTUAL_DEVICES, "testdev", targets.VirtualDeviceSpec(__name__, "_FakeVirtualDevice", 9)
    )
    _FakeVirtualDevice.started_in.clear()
    client = BlockingClient("virtual", timeout=WAIT)
    with client.connect("testdev://somewhere:1234"):
        assert client.synced
        assert client.requests["bump"](4)[0].arguments == (b"ok", b"4")
        assert client.get_status().host == "127.0.0.1"
    assert _FakeVirtualDevice.started_in == ["katclient-io-virtual"]


def test_unknown_scheme_is_invalid_usage() -> None:
    with pytest.raises(InvalidUsage):
        BlockingClient().connect("nope://127.0.0.1:1")


def test_refused_connection_fails_fast_with_connection_error() -> None:
    with DeviceThread() as dev:
        host, port = dev.host, dev.port
    client = BlockingClient(timeout=60.0)  # refused: must not wait for the timeout
    with pytest.raises(KatclientConnectionError) as info:
        client.connect(host, port)
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, KatclientError)
    status = client.get_status()
    assert status.connection_state is ConnectionState.DISCONNECTED
    assert status.last_error and "refused" in status.last_error.lower() and status.target == f"{host}:{port}"
    with pytest.raises(KatclientConnectionError):
        client.simple_request("help")


def test_connect_without_waiting_for_sync_then_wait_synced(device: DeviceThread) -> None:
    client = BlockingClient(timeout=WAIT)
    with client.connect(device.host, device.port, wait_synced=False):
        assert client.connected
        client.wait_synced()
        assert client.synced and "counter" in client.sensors
        client.wait_connected(timeout=0)


def test_connect_twice_is_invalid_usage(client: BlockingClient, device: DeviceThread) -> None:
    with pytest.raises(InvalidUsage):
        client.connect(device.host, device.port)
    assert client.synced


def test_reconnect_after_disconnect_keeps_sensor_objects(device: DeviceThread) -> None:
    client = BlockingClient(timeout=WAIT)
    with client.connect(device.host, device.port):
        sensor = client.sensors["counter"]
    assert client.sensors["counter"].status is Status.UNREACHABLE
    with client.connect(device.host, device.port):
        assert client.sensors["counter"] is sensor
        client.requests["set-counter"](42)
        assert sensor.wait(42).value == 42


# ---------------------------------------------------------------------- requests
def test_simple_request_ok_fail_invalid_and_raw(client: BlockingClient) -> None:
    reply, informs = client.simple_request("things", 3)
    assert reply.reply_ok() and reply.arguments == (b"ok", b"3")
    assert [m.arguments for m in informs] == [(b"thing-0",), (b"thing-1",), (b"thing-2",)]
    with pytest.raises(FailReply) as info:
        client.simple_request("boom")
    assert isinstance(info.value, OperationFailure)
    assert info.value.reason == "it broke on purpose"
    assert info.value.reply is not None
    reply, _ = client.simple_request("boom", check=False)
    assert not reply.reply_ok() and reply.code == b"fail"
    with pytest.raises(InvalidReply):
        client.simple_request("no-such-request")


def test_request_timeout_raises_timeout_error(client: BlockingClient) -> None:
    with pytest.raises(KatclientTimeoutError) as info:
        client.simple_request("slow", 30, timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert client.simple_request("bump")[0].reply_ok()  # the client is still usable


def test_requests_are_callable_with_help_as_docstring(client: BlockingClient) -> None:
    bump = client.requests["bump"]
    assert inspect.getdoc(bump) == "Bump the counter by N." == bump.description
    assert bump(5)[0].arguments == (b"ok", b"5")
    assert client.requests["slow"].timeout_hint == SLOW_HINT
    assert client.requests["bump"].timeout_hint is None
    with pytest.raises(TypeError):
        client.requests["x"] = bump  # type: ignore[index]
    with pytest.raises(TypeError):
        client.sensors["x"] = client.sensors["counter"]  # type: ignore[index]


def test_timeout_hint_outlasts_the_default_timeout(device: DeviceThread) -> None:
    client = BlockingClient(timeout=0.05)
    with client.connect(device.host, device.port, timeout=WAIT):
        pending = client.request_async("slow", 0.3)  # hint 30 s, not the client's 0.05 s
        assert pending.wait_for_completion(WAIT)[0].reply_ok()
        with pytest.raises(KatclientTimeoutError):
            client.simple_request("slow", 0.3, timeout=0.05)


def test_pending_request_success(client: BlockingClient) -> None:
    pending = client.requests["slow"].call_async(0.01)
    reply, informs = pending.wait_for_completion(timeout=WAIT)
    assert reply.arguments == (b"ok", b"0.01") and informs == []
    assert pending.completed and pending.is_success
    assert pending.completion_datetime is not None and pending.completion_datetime.tzinfo is not None
    assert pending.failure_reason == "" and pending.error is None
    assert pending.reply is reply


def test_pending_request_failure(client: BlockingClient) -> None:
    pending = client.request_async("boom")
    with pytest.raises(FailReply) as info:
        pending.wait_for_completion(WAIT)
    assert info.value.reason == "it broke on purpose"
    assert pending.completed and not pending.is_success
    assert pending.failure_reason == "it broke on purpose"
    assert pending.reply is not None and pending.reply.code == b"fail"


def test_pending_request_wait_timeout_leaves_it_running(client: BlockingClient, device: DeviceThread) -> None:
    pending = client.request_async("slow", 30)  # default timeout: the device's hint (30 s)
    with pytest.raises(KatclientTimeoutError):
        pending.wait_for_completion(timeout=0.01)
    assert not pending.completed and pending.failure_reason == "" and pending.completion_datetime is None
    assert device.device is not None and device.device.slow_started.wait(WAIT)  # the request reached the device
    client.disconnect()
    with pytest.raises(KatclientConnectionError):
        pending.wait_for_completion(WAIT)
    assert pending.completed and not pending.is_success and pending.failure_reason


def test_request_async_when_not_connected_reports_through_the_handle() -> None:
    client = BlockingClient(enabled_events=Events.LISTEN_REQUEST_COMPLETED)
    pending = client.request_async("help")
    assert pending.completed and isinstance(pending.error, KatclientConnectionError)
    event = client.read_event(timeout=0)
    assert isinstance(event, Events.RequestCompletedEvent) and event.request is pending and not event.is_success


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "5", True])
def test_bad_timeouts_are_invalid_usage(client: BlockingClient, bad: Any) -> None:
    with pytest.raises(InvalidUsage):
        client.simple_request("bump", timeout=bad)


# ---------------------------------------------------------------------- sensors
def test_sensor_metadata_and_reading(client: BlockingClient) -> None:
    temp = client.sensors["temperature"]
    assert isinstance(temp, BlockingSensor)
    assert (temp.sensor_type, temp.units, temp.description) == ("float", "degC", "Fake temperature")
    assert temp.value == 20.5 and temp.status is Status.NOMINAL and temp.timestamp > 0
    assert isinstance(temp.reading, Reading)


def test_wait_for_value_and_callable(client: BlockingClient) -> None:
    counter = client.sensors["counter"]
    client.requests["set-counter"](7)
    assert counter.wait(7).value == 7
    client.requests["bump"](3)
    reading = counter.wait(lambda r: r.value >= 10 and r.status is Status.NOMINAL, timeout=WAIT)
    assert reading.value == 10


def test_wait_sees_a_value_that_came_and_went(client: BlockingClient) -> None:
    counter = client.sensors["counter"]
    results: list[Any] = []
    ready = threading.Event()

    def waiter() -> None:
        ready.set()
        results.append(counter.wait(99, timeout=WAIT))

    thread = threading.Thread(target=waiter)
    thread.start()
    ready.wait(WAIT)
    # The waiter may or may not be registered yet; the pulse is repeated until it saw one.
    while thread.is_alive():
        client.requests["pulse"](99)
        thread.join(0.05)
    assert results and results[0].value == 99
    assert counter.value == 0


def test_wait_timeout_and_disconnect(client: BlockingClient) -> None:
    counter = client.sensors["counter"]
    with pytest.raises(KatclientTimeoutError):
        counter.wait(-5, timeout=0.01)
    errors: list[BaseException] = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        try:
            counter.wait(-5, timeout=None)
        except KatclientError as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    started.wait(WAIT)
    client.disconnect()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], KatclientConnectionError)
    with pytest.raises(KatclientConnectionError):
        counter.wait(0)


def test_set_sampling_is_applied_and_validated(client: BlockingClient) -> None:
    counter = client.sensors["counter"]
    counter.set_sampling("none")
    client.requests["set-counter"](5)
    # An update would have been sent before the reply (one ordered connection): none came.
    assert counter.value == 0
    counter.set_sampling("auto")  # the device reports the current value before its reply
    assert counter.value == 5
    with pytest.raises(InvalidUsage):
        counter.set_sampling("bogus")
    with pytest.raises(InvalidUsage):
        client.set_sampling("counter", "period", "soon")  # type: ignore[arg-type]


def test_sensor_listeners_run_in_the_listener_thread(
    client: BlockingClient, caplog: pytest.LogCaptureFixture
) -> None:
    counter = client.sensors["counter"]
    seen: list[tuple[int, str]] = []
    done = threading.Event()

    def listener(sensor: BlockingSensor, reading: Reading) -> None:
        seen.append((reading.value, threading.current_thread().name))
        if reading.value == 3:
            done.set()

    def broken(sensor: BlockingSensor, reading: Reading) -> None:
        raise RuntimeError("a listener bug must not stop the others")

    counter.add_listener(broken)
    counter.add_listener(listener)
    for _ in range(3):
        client.requests["bump"]()
    assert done.wait(WAIT)
    assert [v for v, _ in seen] == [1, 2, 3]
    assert {name for _, name in seen} == {"katclient-listeners-test"}
    assert [r.getMessage() for r in caplog.records if r.exc_info] == [f"sensor counter: listener {broken!r} failed"] * 3
    counter.remove_listener(listener)
    counter.remove_listener(broken)


def test_state_listener_sees_changes_in_the_listener_thread(device: DeviceThread) -> None:
    client = BlockingClient("states", timeout=WAIT)
    calls: list[tuple[Any, Any, str]] = []
    synced = threading.Event()

    def listener(state: Any, changes: Any) -> None:
        calls.append((state, changes, threading.current_thread().name))
        if state.synced:
            synced.set()

    client.add_state_listener(listener)
    with client.connect(device.host, device.port):
        assert synced.wait(WAIT)
    assert [s.connected for s, _, _ in calls[:3]] == [True, True, True]
    assert "counter" in calls[1][1].sensors.added
    assert {name for _, _, name in calls} == {"katclient-listeners-states"}


# ---------------------------------------------------------------------- events
def test_events_in_order_with_model_changes_sensor_updates_and_completions(device: DeviceThread) -> None:
    client = BlockingClient(
        "events",
        timeout=WAIT,
        enabled_events=Events.LISTEN_CONNECTED | Events.LISTEN_SYNCED | Events.LISTEN_MODEL_CHANGED,
    )
    with client.connect(device.host, device.port):
        connected, changed, synced = read_events(client, 3)
        assert isinstance(connected, Events.ConnectedEvent) and connected.port == device.port
        assert isinstance(changed, Events.ModelChangedEvent)
        assert {"counter", "temperature", "ticks"} <= changed.changes.sensors.added
        assert isinstance(synced, Events.SyncedEvent)

        client.listen_events(Events.LISTEN_SENSOR_UPDATE | Events.LISTEN_REQUEST_COMPLETED)
        client.watch_sensors("counter")
        client.requests["bump"](2)
        (update,) = read_events(client, 1)
        assert isinstance(update, Events.SensorUpdateEvent)
        assert (update.name, update.reading.value) == ("counter", 2)
        client.unwatch_sensors("counter")

        pending = client.request_async("boom")
        (completed,) = read_events(client, 1)
        assert isinstance(completed, Events.RequestCompletedEvent)
        assert completed.request is pending and not completed.is_success
        assert completed.failure_reason == "it broke on purpose"

        client.listen_events(0, Events.LISTEN_REQUEST_COMPLETED)
        client.requests["add-sensor"]("extra")  # #interface-changed: the model changes
        changed, synced = read_events(client, 2)
        assert isinstance(changed, Events.ModelChangedEvent)
        assert changed.changes.sensors.added == {"extra"} and not changed.changes.sensors.removed
        assert "extra" in client.sensors  # published before the event
        assert isinstance(synced, Events.SyncedEvent)
        client.requests["bump"]()  # not watched: no event
        client.request_async("bump").wait_for_completion(WAIT)  # completions off: no event
        assert drain(client) == []
    assert client.dropped_events == 0


def test_full_queue_drops_oldest_and_status_counts(device: DeviceThread) -> None:
    client = BlockingClient(
        timeout=WAIT, enabled_events=Events.LISTEN_SENSOR_UPDATE, event_queue_size=2
    )
    client.watch_sensors("counter")
    with client.connect(device.host, device.port):
        for _ in range(5):
            client.requests["bump"]()
        client.sensors["counter"].wait(5)
        values = [e.reading.value for e in drain(client) if isinstance(e, Events.SensorUpdateEvent)]
        assert values == [4, 5]
        # Six readings: the initial 0 from subscribing, then 1..5.
        assert client.get_status().dropped_events == client.dropped_events == 4


def test_read_event_timeout_returns_none_and_validates() -> None:
    client = BlockingClient(enabled_events=Events.LISTEN_ALL)
    assert client.read_event(timeout=0.01) is None
    assert not client.has_event_pending()
    with pytest.raises(InvalidUsage):
        client.listen_events(-1)
    with pytest.raises(InvalidUsage):
        client.read_event(timeout=-1)
    assert repr(DEFAULT) == "DEFAULT"


# ---------------------------------------------------------------------- the I/O thread
def test_blocking_calls_from_the_io_thread_are_refused(device: DeviceThread) -> None:
    with IOThread("shared-io") as io:
        client = BlockingClient(timeout=WAIT, io_thread=io)
        with client.connect(device.host, device.port):
            with pytest.raises(InvalidUsage):
                io.call(client.simple_request, "bump")
            with pytest.raises(InvalidUsage):
                io.call(client.sensors["counter"].wait, 0)
            assert io.call(client.get_status).synced  # non-blocking calls are fine
        assert io.running  # a shared thread outlives the client


def test_two_clients_share_one_io_thread(device: DeviceThread) -> None:
    with IOThread("shared-io") as io:
        a = BlockingClient("a", timeout=WAIT, io_thread=io)
        b = BlockingClient("b", timeout=WAIT, io_thread=io)
        with a.connect(device.host, device.port), b.connect(device.host, device.port):
            a.requests["set-counter"](11)
            assert b.sensors["counter"].wait(11).value == 11
        assert not a.connected and not b.connected
    with pytest.raises(InvalidUsage):
        BlockingClient(io_thread=io).connect(device.host, device.port)  # stopped thread
    with io:  # a stopped IOThread can be started again
        with BlockingClient(timeout=WAIT, io_thread=io).connect(device.host, device.port) as c:
            assert c.synced
