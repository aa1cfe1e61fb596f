"""Every sampling strategy, in virtual time (async-solipsism; STYLE.md habit 9).

Sources: protocols/katcp.md 1.7 and 4 section 2.3; KATCP v5 spec section 3.5.3.  The
server runs on an async-solipsism loop and the test client is wired in with
``handle_stream`` over an in-memory socket pair, so sleeps cost no wall-clock time and
every time below is exact virtual seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from katclient.protocol import Message, Sampling, Status, Strategy
from katclient.server import DeviceServer, Sensor
from katclient.server.testing import LineClient, run_virtual


class Recorder:
    """Collects ``#sensor-status`` informs with their (virtual) arrival time, in the background."""

    def __init__(self, client: LineClient) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.got: list[tuple[float, Message]] = []
        self._task = self.loop.create_task(self._record())

    async def _record(self) -> None:
        while True:
            msg = await self.client.next_message(None)
            if msg.name == "sensor-status":
                self.got.append((round(self.loop.time() - self.t0, 6), msg))

    async def until(self, t: float) -> list[tuple[float, Message]]:
        """Wait until virtual time ``t0 + t``; returns everything recorded so far."""
        await asyncio.sleep(max(0.0, self.t0 + t - self.loop.time()))
        return self.got

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def values(self) -> list[bytes]:
        return [m.arguments[4] for _, m in self.got]

    def times(self) -> list[float]:
        return [t for t, _ in self.got]


Scenario = Callable[[DeviceServer, LineClient, Sensor, Recorder], Awaitable[None]]


def run(scenario: Scenario, stype: str = "integer", protocol: str = "5.1-BIMT") -> None:
    async def main() -> None:
        server = DeviceServer(protocol=protocol)
        sensor = Sensor(stype, "s", default=0, initial_status=Status.NOMINAL)
        server.add_sensor(sensor)
        client, _ = LineClient.pair(server)
        for _ in range(3 if server.protocol.major >= 5 else 2):
            await client.next_message()
        rec = Recorder(client)
        try:
            await scenario(server, client, sensor, rec)
        finally:
            await rec.close()
            await client.close()
            await server.stop()

    run_virtual(main)


async def sample(client: LineClient, *strategy: object) -> None:
    reply, _ = await client.request("sensor-sampling", "s", *strategy)
    assert reply.reply_ok(), reply


def test_auto_reports_every_set_value_even_unchanged() -> None:
    async def scenario(server: DeviceServer, client: LineClient, sensor: Sensor, rec: Recorder) -> None:
        await sample(client, "auto")
        for v in (1, 1, 1, 2):
            await asyncio.sleep(1)
            sensor.set_value(v)
        await rec.until(10)
        assert rec.values() == [b"0", b"1", b"1", b"1", b"2"]
        assert rec.times() == [0, 1, 2, 3, 4]

    run(scenario)


def test_event_reports_changes_of_value_or_status() -> None:
    async def scenario(server: DeviceServer, client: LineClient, sensor: Sensor, rec: Recorder) -> None:
        await sample(client, "event")
        for v, status in ((0, Status.NOMINAL), (5, Status.NOMINAL), (5, Status.NOMINAL), (5, Status.WARN)):
            await asyncio.sleep(1)
            sensor.set_value(v, status)
        await rec.until(10)
        assert [(m.arguments[3], m.arguments[4]) for _, m in rec.got] == [
            (b"nominal", b"0"), (b"nominal", b"5"), (b"warn", b"5"),
        ]
        assert rec.times() == [0, 2, 4]

    run(scenario)


def test_differential_uses_a_dead_band() -> None:
    async def scenario(server: DeviceServer, client: LineClient, sensor: Sensor, rec: Recorder) -> None:
        await sample(client, "differential", "5")
        for v in (1, 3, 5, 6, 7, 12, 8):
            await asyncio.sleep(1)
            sensor.set_value(v)
        sensor.set_value(8, Status.ERROR)  # a status change is always reported
        await rec.until(20)
        assert rec.values() == [b"0", b"6", b"12", b"8"]

    run(scenario)


def test_period_reports_the_current_value_every_period() -> None:
    async def scenario(server: DeviceServer, client: LineClient, sensor: Sensor, rec: Recorder) -> None:
        await sample(client, "period", "0.5")

        async def change() -> None:
            for v in range(1, 100):
                await asyncio.sleep(0.2)
                sensor.set_value(v)

        changer = asyncio.create_task(change())
        await rec.until(5.1)
        changer.cancel()
        assert rec.times() == [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5]
        # each report carries the value current at that time
        assert rec.values()[:4] == [b"0", b"2", b"4", b"7"]
        await sample(client, "none")
        before = len(rec.got)
        await rec.until(10)
        assert len(rec.got) == before

    run(scenario)


def test_event_rate_limits_and_refreshes() -> None:
    async def scenario(server: DeviceServer, client: LineClient, sensor: Sensor, rec: Recorder) -> None:
        await sample(client, "event-rate", "1", "4")

        async def change() -> None:
            for v in range(1, 26):  # a change every 0.1 s for 2.5 s
                await asyncio.sleep(0.1)
                sensor.set_value(v)

        await change()
        await rec.until(12)
        times = rec.times()
        # at most one report per shortest period while changing...
        assert times[:4] == [0, 1, 2, 3]
        assert all(b - a >= 1 - 1e-9 for a, b in zip(times, times[1:]))
        # ...the last change is not lost...
        assert rec.values()[3] == b"25"
        # ...and when idle, at least one per longest period
        assert times[4:] == [7, 11]

    run(scenario)


def test_differential_rate() -> None:
    async def scenario(server: DeviceServer, client: LineClient, sensor: Sensor, rec: Recorder) -> None:
        await sample(client, "differential-rate", "2.5", "0.5", "100")
        for t, v in ((0.1, 1), (0.2, 2), (0.3, 3), (1.0, 4), (2.0, 10)):
            await asyncio.sleep(t - (asyncio.get_running_loop().time() - rec.t0))
            sensor.set_value(v)
        await rec.until(10)
        # 3 exceeds the band at 0.3 but the window ends at 0.5; 4 is within 2.5 of 3; 10 is not
        assert rec.got and [(t, m.arguments[4]) for t, m in rec.got] == [(0, b"0.0"), (0.5, b"3.0"), (2, b"10.0")]

    run(scenario, stype="float")


def test_strategies_end_with_the_connection_and_the_hook_sees_it() -> None:
    calls: list[tuple[str, list[Sampling]]] = []

    class Hooked(DeviceServer):
        def sensor_sampling_changed(self, sensor: Sensor, samplings: list[Sampling]) -> None:
            calls.append((sensor.name, samplings))

    async def main() -> None:
        server = Hooked()
        sensor = Sensor("float", "s")
        server.add_sensor(sensor)
        a, conn_a = LineClient.pair(server)
        b, _ = LineClient.pair(server)
        assert (await a.request("sensor-sampling", "s", "period", "1"))[0].reply_ok()
        assert (await b.request("sensor-sampling", "s", "auto"))[0].reply_ok()
        assert sensor.observer_count == 1  # auto observes; period uses a timer
        await a.close()
        await conn_a.wait_closed()
        assert (await b.request("sensor-sampling-clear"))[0].reply_ok()
        assert sensor.observer_count == 0
        assert calls == [
            ("s", [Sampling(Strategy.PERIOD, (1.0,))]),
            ("s", [Sampling(Strategy.PERIOD, (1.0,)), Sampling(Strategy.AUTO)]),
            ("s", [Sampling(Strategy.AUTO)]),
            ("s", []),
        ]
        await b.close()
        await server.stop()

    run_virtual(main)


def test_v4_period_is_in_milliseconds_and_timestamps_too() -> None:
    async def scenario(server: DeviceServer, client: LineClient, sensor: Sensor, rec: Recorder) -> None:
        sensor.set_value(4, timestamp=1795297929.759)
        reply, _ = await client.request("sensor-sampling", "s", "period", "250", mid=None)
        assert reply.arguments == (b"ok", b"s", b"period", b"250")
        await rec.until(1.1)
        assert rec.times() == [0, 0.25, 0.5, 0.75, 1.0]
        assert rec.got[0][1].arguments == (b"1795297929759", b"1", b"s", b"nominal", b"4")
        reply, _ = await client.request("sensor-sampling", "s", "event-rate", "1", "2", mid=None)
        assert reply.arguments[0] == b"fail" and b"needs KATCP v5" in reply.arguments[1]

    run(scenario, protocol="4.0")


@pytest.mark.parametrize("strategy", [("auto",), ("event",), ("period", "1"), ("event-rate", "1", "2")])
def test_setting_a_strategy_again_replaces_the_old_one(strategy: tuple[str, ...]) -> None:
    async def scenario(server: DeviceServer, client: LineClient, sensor: Sensor, rec: Recorder) -> None:
        await sample(client, *strategy)
        await sample(client, *strategy)
        await rec.until(0.5)
        assert len(rec.got) == 2  # one current value per ?sensor-sampling
        assert sensor.observer_count == (0 if strategy[0] == "period" else 1)
        sensor.set_value(9)  # at t = 0.5
        await rec.until(1.5)
        assert rec.values()[2:] == [b"9"], rec.got  # once: the first sampler is gone

    run(scenario)
