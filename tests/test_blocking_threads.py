"""BlockingClient under concurrency: many threads at once, a running asyncio loop in the
calling thread (the Jupyter case), a device restart, and a clean shutdown."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from katclient.client.blocking import BlockingClient, BlockingSensor, SyncState
from katclient.client.events import ClientEvent, Events
from katclient.errors import KatclientConnectionError, OperationFailure
from katclient.protocol import Reading, Status
from tests.test_blocking_support import DeviceThread, open_sockets

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


def read_events(client: BlockingClient, count: int) -> list[ClientEvent]:
    events: list[ClientEvent] = []
    for _ in range(count):
        event = client.read_event(timeout=WAIT)
        assert event is not None, f"only {events} arrived"
        events.append(event)
    return events


def run_threads(*targets: Callable[[], Any]) -> list[BaseException]:
    """Start every target at once (barrier), join them, return what they raised."""
    barrier = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait(WAIT)
                fn()
            except BaseException as exc:
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t), name=f"worker-{i}") for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(3 * WAIT)
    assert not any(t.is_alive() for t in threads)
    return errors


def test_requests_waits_and_event_reads_in_parallel(device: DeviceThread) -> None:
    client = BlockingClient("parallel", timeout=WAIT, enabled_events=Events.LISTEN_SENSOR_UPDATE)
    client.watch_sensors("counter")
    bumps_per_thread, bump_threads = 20, 3
    total = bumps_per_thread * bump_threads
    with client.connect(device.host, device.port):
        counter = client.sensors["counter"]
        replies: list[int] = []
        seen_values: list[int] = []

        def bumper() -> None:
            for _ in range(bumps_per_thread // 2):
                reply, _ = client.requests["bump"]()
                replies.append(int(reply.arguments[1]))
            pendings = [client.request_async("bump") for _ in range(bumps_per_thread // 2)]
            for p in pendings:
                reply, _ = p.wait_for_completion(WAIT)
                replies.append(int(reply.arguments[1]))

        def waiter() -> None:
            assert counter.wait(total, timeout=WAIT).value == total

        def event_reader() -> None:
            while not seen_values or seen_values[-1] != total:
                event = client.read_event(timeout=WAIT)
                assert isinstance(event, Events.SensorUpdateEvent)
                seen_values.append(event.reading.value)

        def informs_checker() -> None:
            for n in range(1, 15):
                _, informs = client.simple_request("things", n)
                assert [m.arguments[0] for m in informs] == [f"thing-{i}".encode() for i in range(n)]

        def status_reader() -> None:
            for _ in range(20):
                status = client.get_status()
                assert status.connected and status.sensor_count == 3

        errors = run_threads(*([bumper] * bump_threads), waiter, event_reader, informs_checker, status_reader)
        assert errors == []
        assert sorted(replies) == list(range(1, total + 1))  # each bump answered once
        assert seen_values == sorted(seen_values) and seen_values[0] == 0 and seen_values[-1] == total
    assert client.dropped_events == 0


async def test_blocking_api_from_a_thread_whose_loop_is_running(device: DeviceThread) -> None:
    """The Jupyter case: the caller's thread runs an asyncio loop; the facade needs only its own."""
    assert asyncio.get_running_loop().is_running()
    client = BlockingClient(
        "jupyter", timeout=WAIT, enabled_events=Events.LISTEN_CONNECTED | Events.LISTEN_SYNCED
    )
    with client.connect(f"katcp://{device.host}:{device.port}"):
        assert [type(e) for e in read_events(client, 2)] == [Events.ConnectedEvent, Events.SyncedEvent]
        assert client.get_status().sync_state is SyncState.SYNCED
        client.requests["set-counter"](3)
        assert client.sensors["counter"].wait(3).value == 3
        pending = client.request_async("slow", 0.01)
        assert pending.wait_for_completion(WAIT)[0].reply_ok()
        client.set_sampling("counter", "event")
    await asyncio.sleep(0)  # the caller's loop was never needed and still runs


@pytest.mark.parametrize(
    "crash, error",
    [(True, KatclientConnectionError), (False, OperationFailure)],
    ids=["device-died", "device-stopped"],
)
def test_device_restart_events_in_order_pending_fails_model_returns(
    device: DeviceThread, crash: bool, error: type[Exception]
) -> None:
    """A dead device fails the pending request with a connection error; aiokatcp stopping
    cleanly first replies ``!slow fail request cancelled``.  Either way it fails clearly."""
    client = BlockingClient(
        "restart",
        timeout=WAIT,
        enabled_events=(
            Events.LISTEN_CONNECTED | Events.LISTEN_DISCONNECTED | Events.LISTEN_SYNCED | Events.LISTEN_NOT_SYNCED
        ),
    )
    with client.connect(device.host, device.port):
        assert [type(e) for e in read_events(client, 2)] == [Events.ConnectedEvent, Events.SyncedEvent]
        counter = client.sensors["counter"]
        client.requests["set-counter"](8)
        counter.wait(8)
        pending = client.request_async("slow", 30)
        assert device.device is not None and device.device.slow_started.wait(WAIT)

        device.stop(crash=crash)
        with pytest.raises(error):
            pending.wait_for_completion(WAIT)
        assert pending.completed and not pending.is_success and pending.failure_reason
        not_synced, disconnected = read_events(client, 2)
        assert isinstance(not_synced, Events.NotSyncedEvent)
        assert isinstance(disconnected, Events.DisconnectedEvent) and disconnected.reason
        assert client.get_status().last_error
        assert counter.wait(lambda r: r.status is Status.UNREACHABLE).value == 8  # value kept
        with pytest.raises(KatclientConnectionError):
            client.simple_request("bump")  # fails at once while the device is away

        with DeviceThread(port=device.port) as again:
            connected, synced = read_events(client, 2)
            assert isinstance(connected, Events.ConnectedEvent) and connected.port == again.port
            assert isinstance(synced, Events.SyncedEvent)
            assert client.sensors["counter"] is counter  # the same object, model back
            assert counter.wait(0).status is Status.NOMINAL  # the new device starts at 0
            assert client.requests["bump"](2)[0].arguments == (b"ok", b"2")
            assert client.get_status().sync_state is SyncState.SYNCED
            client.disconnect()
            (disconnected,) = read_events(client, 2)[1:]
            assert isinstance(disconnected, Events.DisconnectedEvent)
            assert disconnected.reason == "client disconnected"


def test_clean_shutdown_leaves_no_thread_or_socket() -> None:
    gc.collect()
    threads_before = set(threading.enumerate())
    sockets_before = open_sockets()
    with DeviceThread() as device:
        client = BlockingClient("shutdown", timeout=WAIT, enabled_events=Events.LISTEN_ALL)
        got: list[Reading] = []
        client.connect(device.host, device.port)
        client.sensors["counter"].add_listener(lambda s, r: got.append(r))
        client.watch_sensors("counter")
        pending = client.request_async("slow", 30)
        client.requests["bump"]()
        client.sensors["counter"].wait(1)
        names = {t.name for t in threading.enumerate()}
        assert {"katclient-io-shutdown", "katclient-listeners-shutdown"} <= names
        client.disconnect()
        client.disconnect()  # idempotent
        assert pending.completed and isinstance(pending.error, KatclientConnectionError)
    gc.collect()
    assert set(threading.enumerate()) == threads_before
    if sockets_before >= 0:
        assert open_sockets() == sockets_before


def test_disconnect_from_a_listener_does_not_deadlock(device: DeviceThread) -> None:
    client = BlockingClient("self-stop", timeout=WAIT)
    done = threading.Event()

    def listener(sensor: BlockingSensor, reading: Reading) -> None:
        if reading.value == 1:
            client.disconnect()
            done.set()

    with client.connect(device.host, device.port):
        client.sensors["counter"].add_listener(listener)
        pending = client.request_async("bump")  # its reading may disconnect before its reply
        assert done.wait(WAIT)
        assert pending.completed  # disconnect() ends every request in flight
        assert pending.is_success or isinstance(pending.error, KatclientConnectionError)
        assert not client.connected
    for thread in threading.enumerate():
        if thread.name == "katclient-listeners-self-stop":
            thread.join(WAIT)  # it ends once the listener returned
