"""Per-connection sampling strategies: when to send a sensor's reading to one client.

Sources: KATCP v5 spec section 3.5.3 (``?sensor-sampling``, the strategies) and
protocols/katcp.md 1.7 (katcp-python's behaviour) and 4 section 2.3 (aiokatcp's
``SensorSampler``).  Strategy names and parameters are validated by
:func:`katclient.protocol.parse_sampling`; this module only runs them.

A sampler calls ``sink(sensor, reading)`` whenever its strategy says the client
should see a reading: once when it starts (KATCP sends the current value when a
strategy is set), then as the strategy dictates.  The sink is the connection's
"queue a ``#sensor-status`` line" method, so for ``auto`` the sink itself is the
sensor's observer and an update costs one call.  Times for rate limits and periods
come from ``loop.time()`` (monotonic seconds; virtual under async-solipsism) and
timers use ``loop.call_at``.

Semantics (all times in seconds):

* ``auto``: every :meth:`Sensor.set_value` is reported, changed or not.
* ``event``: reported when the value or the status differs from the last one sent.
* ``differential D``: reported when the status changed or ``|value - last| > D``.
* ``period P``: the current reading every ``P``; a late timer does not burst, it
  skips the missed ticks.
* ``event-rate shortest longest`` and ``differential-rate D shortest longest``: as
  ``event``/``differential``, but at most one report per ``shortest`` (a change
  inside that window is sent when it ends, with the reading current then) and at
  least one per ``longest`` (``longest == 0`` means no such floor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from katclient.protocol import Reading, Sampling, Status, Strategy
from katclient.server.sensor import Sensor

__all__ = ["Sampler", "Sink", "TimerLoop", "create_sampler"]

#: ``sink(sensor, reading)``: send this reading to the client.
Sink = Callable[[Sensor, Reading], None]


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class TimerLoop(Protocol):
    """What a sampler needs from the event loop (an :class:`asyncio.AbstractEventLoop` fits)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> TimerHandle: ...


class Sampler:
    """One running strategy for one sensor on one client connection.

    :ivar sensor: the sampled :class:`~katclient.server.Sensor`.
    :ivar sampling: the validated :class:`~katclient.protocol.Sampling`.
    """

    __slots__ = ("sensor", "sampling", "_sink")

    def __init__(self, sensor: Sensor, sampling: Sampling, sink: Sink) -> None:
        self.sensor = sensor
        self.sampling = sampling
        self._sink = sink

    def start(self) -> None:
        """Send the current reading and begin sampling."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop sampling: detach from the sensor and cancel timers.  Idempotent."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.sensor.name} {self.sampling.strategy.value} {self.sampling.params}>"


class AutoSampler(Sampler):
    """``auto``: the sink observes the sensor directly, so each update costs one call."""

    __slots__ = ()

    def start(self) -> None:
        self._sink(self.sensor, self.sensor.reading)
        self.sensor.attach(self._sink)

    def close(self) -> None:
        self.sensor.detach(self._sink)


class PeriodSampler(Sampler):
    """``period P``: the current reading every ``P`` seconds."""

    __slots__ = ("_loop", "_period", "_handle")

    def __init__(self, sensor: Sensor, sampling: Sampling, sink: Sink, loop: TimerLoop) -> None:
        super().__init__(sensor, sampling, sink)
        self._loop = loop
        self._period = sampling.params[0]
        self._handle: TimerHandle | None = None

    def start(self) -> None:
        self._tick(self._loop.time())

    def _tick(self, due: float) -> None:
        self._sink(self.sensor, self.sensor.reading)
        nxt = due + self._period
        now = self._loop.time()
        if nxt <= now:  # the loop was late: skip missed ticks instead of bursting
            nxt = now + self._period
        self._handle = self._loop.call_at(nxt, self._tick, nxt)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class ChangeSampler(Sampler):
    """``event``, ``differential``, ``event-rate`` and ``differential-rate``.

    :param difference: dead-band for the differential strategies, ``None`` for "any change".
    :param shortest: least time between reports (seconds, 0 = no limit).
    :param longest: most time between reports (seconds, 0 = no floor).
    """

    __slots__ = (
        "_loop",
        "_difference",
        "_shortest",
        "_longest",
        "_last_value",
        "_last_status",
        "_last_time",
        "_pending",
        "_handle",
        "_attached",
    )

    def __init__(
        self,
        sensor: Sensor,
        sampling: Sampling,
        sink: Sink,
        loop: TimerLoop,
        difference: float | None,
        shortest: float = 0.0,
        longest: float = 0.0,
    ) -> None:
        super().__init__(sensor, sampling, sink)
        self._loop = loop
        self._difference = difference
        self._shortest = shortest
        self._longest = longest
        self._last_value: Any = None
        self._last_status: Status | None = None
        self._last_time = 0.0
        self._pending = False
        self._handle: TimerHandle | None = None
        self._attached = False

    def start(self) -> None:
        self._send(self._loop.time(), self.sensor.reading)
        self.sensor.attach(self._update)
        self._attached = True

    def _send(self, when: float, reading: Reading) -> None:
        self._sink(self.sensor, reading)
        self._last_value = reading[2]
        self._last_status = reading[1]
        self._last_time = when
        self._pending = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._longest > 0:
            nxt = max(self._loop.time(), when + self._longest)
            self._handle = self._loop.call_at(nxt, self._timer, nxt)

    def _timer(self, when: float) -> None:
        self._handle = None
        self._send(when, self.sensor.reading)

    def _update(self, sensor: Sensor, reading: Reading) -> None:
        if self._pending:  # a report is already scheduled for the end of the window
            return
        if reading[1] is not self._last_status:
            pass
        elif self._difference is None:
            if reading[2] == self._last_value:
                return
        elif not abs(reading[2] - self._last_value) > self._difference:
            return
        now = self._loop.time()
        due = self._last_time + self._shortest
        if self._shortest <= 0 or now >= due:
            self._send(now, reading)
            return
        self._pending = True
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(due, self._timer, due)

    def close(self) -> None:
        if self._attached:
            self.sensor.detach(self._update)
            self._attached = False
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def create_sampler(sensor: Sensor, sampling: Sampling, sink: Sink, loop: TimerLoop) -> Sampler | None:
    """Build (but do not start) the sampler for ``sampling``; ``None`` for strategy ``none``.

    :param sensor: the sensor to sample.
    :param sampling: a strategy already validated by :func:`~katclient.protocol.parse_sampling`
        (parameters in seconds).
    :param sink: ``sink(sensor, reading)`` sends a reading to the client.
    :param loop: the event loop, for ``time()`` and ``call_at``.
    """
    strategy, params = sampling
    if strategy is Strategy.NONE:
        return None
    if strategy is Strategy.AUTO:
        return AutoSampler(sensor, sampling, sink)
    if strategy is Strategy.PERIOD:
        return PeriodSampler(sensor, sampling, sink, loop)
    if strategy is Strategy.EVENT:
        return ChangeSampler(sensor, sampling, sink, loop, None)
    if strategy is Strategy.DIFFERENTIAL:
        return ChangeSampler(sensor, sampling, sink, loop, params[0])
    if strategy is Strategy.EVENT_RATE:
        return ChangeSampler(sensor, sampling, sink, loop, None, params[0], params[1])
    return ChangeSampler(sensor, sampling, sink, loop, params[0], params[1], params[2])
