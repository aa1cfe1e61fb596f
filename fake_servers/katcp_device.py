"""A simulated KATCP device: sensors of all eight types that change, slow requests, a changing interface.

Run it as ``python -m fake_servers.katcp_device --port P --sensors N --requests M
[--protocol 5.1-BIMT|5.0-IM|4.0] [--update-rate HZ]``; it prints ``listening on
HOST:PORT`` once ready (``--port 0`` picks a free port) and serves until SIGINT or
SIGTERM.  Import :class:`FakeKatcpDevice` to run it inside a test's event loop.

Sensors are named ``sensor.00000``, ``sensor.00001``, ... and cycle through the
types integer, float, boolean, lru, discrete, timestamp, address and string
(protocols/katcp.md 1.5); every sensor gets a new reading ``update_rate`` times a
second.  Requests beyond the standard ones (katcp.md 1.8):

``?echo ARGS...``                    replies ``ok ARGS...``
``?slow-echo DELAY ARGS...``         waits DELAY seconds, then ``ok ARGS...`` (timeout hint)
``?slow-informs COUNT INTERVAL``     one inform every INTERVAL seconds, then ``ok COUNT`` (hint)
``?set-sensor NAME VALUE [STATUS]``  sets a sensor from its wire form
``?add-sensors COUNT [TYPE]``        adds ``dyn.NNNNN`` sensors; replies ``ok <total sensors>``
``?remove-sensors COUNT``            removes the newest ``dyn.*`` sensors; replies ``ok <removed>``
``?retype-sensor NAME TYPE``         replaces a sensor by one of another type, same name
``?add-requests COUNT`` / ``?remove-requests COUNT``   dynamic ``dyn-req-NNNNN`` requests
``?fail-always``                     always replies ``fail``
``?req-NNNNN``                       ``--requests M`` dummy requests replying ``ok``

Every interface change reaches v5 clients as ``#interface-changed`` (sent by
:class:`~katclient.server.DeviceServer` itself).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import katclient
from fake_servers._common import base_parser, serve_until_signalled
from katclient.protocol import SENSOR_TYPES, Address, FailReply, InvalidUsage, Lru, Status
from katclient.server import DeviceServer, RequestContext, Sensor, timeout_hint

__all__ = ["FakeKatcpDevice", "SENSOR_TYPE_CYCLE", "main"]

logger = logging.getLogger(__name__)

#: Type of ``sensor.NNNNN`` is ``SENSOR_TYPE_CYCLE[N % 8]``.
SENSOR_TYPE_CYCLE: Final = ("integer", "float", "boolean", "lru", "discrete", "timestamp", "address", "string")

#: Longest ``?slow-echo`` / ``?slow-informs`` wait, seconds (keeps a typo from parking a task for days).
MAX_DELAY: Final = 3600.0
#: Most informs one ``?slow-informs`` sends, and most sensors or requests one call may add.
MAX_COUNT: Final = 100_000

_DISCRETE_VALUES: Final = ("on", "off", "error")
_UNITS: Final = {"integer": "count", "float": "V", "timestamp": "s"}


def make_sensor(name: str, type_name: str, index: int, clock: Callable[[], float]) -> Sensor:
    """A sensor of ``type_name`` with a description, units, params and a nominal first reading."""
    params: tuple[Any, ...] = ()
    if type_name == "integer":
        params = (-1_000_000, 1_000_000)
    elif type_name == "float":
        params = (-1e9, 1e9)
    elif type_name == "discrete":
        params = _DISCRETE_VALUES
    return Sensor(
        type_name,
        name,
        f"Test {type_name} sensor number {index}",
        _UNITS.get(type_name, ""),
        params,
        default=sensor_value(type_name, index, 0, clock),
        initial_status=Status.NOMINAL,
        clock=clock,
    )


def sensor_value(type_name: str, index: int, tick: int, clock: Callable[[], float]) -> Any:
    """The simulated value of sensor ``index`` (of ``type_name``) at update number ``tick``."""
    n = index + tick
    if type_name == "integer":
        return n % 1000
    if type_name == "float":
        return n * 0.25
    if type_name == "boolean":
        return bool(n % 2)
    if type_name == "lru":
        return Lru.ERROR if n % 10 == 9 else Lru.NOMINAL
    if type_name == "discrete":
        return _DISCRETE_VALUES[n % 3]
    if type_name == "timestamp":
        return clock()
    if type_name == "address":
        return Address("127.0.0.1", 7000 + n % 100)
    return f"value with spaces {n}"


class FakeKatcpDevice(DeviceServer):
    """The simulated device; start it with ``await FakeKatcpDevice(...).start()``.

    :param host: address to bind.
    :param port: TCP port, 0 for a free one.
    :param sensors: number of ``sensor.NNNNN`` sensors.
    :param requests: number of ``req-NNNNN`` dummy requests.
    :param protocol: ``"5.1-BIMT"``, ``"5.0-IM"`` or ``"4.0"``.
    :param update_rate: readings per sensor per second (0 = values never change on their own).
    :param kwargs: passed to :class:`~katclient.server.DeviceServer` (``clock``, limits).
    """

    VERSION = "fake-katcp-device-1.0"
    BUILD_STATE = f"fake-katcp-device-{katclient.__version__}"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        sensors: int = 16,
        requests: int = 0,
        protocol: str = "5.1-BIMT",
        update_rate: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(host, port, protocol=protocol, **kwargs)
        if sensors < 0 or requests < 0 or update_rate < 0:
            raise InvalidUsage("sensors, requests and update_rate must be >= 0")
        self.update_rate = update_rate
        self.tick = 0
        self._next_dyn = 0
        self._next_dyn_req = 0
        self._updater: asyncio.Task[None] | None = None
        for i in range(sensors):
            type_name = SENSOR_TYPE_CYCLE[i % len(SENSOR_TYPE_CYCLE)]
            self.add_sensor(make_sensor(f"sensor.{i:05d}", type_name, i, self.clock))
        for i in range(requests):
            name = f"req-{i:05d}"
            self.add_request(name, _dummy_request, f"Dummy request {name}; replies ok. Takes no arguments.")

    async def start(self) -> tuple[str, int]:
        """Listen and start changing the sensors; returns ``(host, port)``."""
        address = await super().start()
        self.start_updates()
        return address

    def start_updates(self) -> None:
        """Start the task that updates every sensor ``update_rate`` times a second."""
        if self._updater is None and self.update_rate > 0:
            self._updater = asyncio.get_running_loop().create_task(self._update_loop())

    async def _update_loop(self) -> None:
        interval = 1.0 / self.update_rate
        while True:
            await asyncio.sleep(interval)
            self.update_all()

    def update_all(self) -> int:
        """Give every sensor its next simulated reading; returns how many were updated."""
        self.tick += 1
        tick = self.tick
        now = self.clock()
        sensors = list(self.sensors.values())
        for i, s in enumerate(sensors):
            value = sensor_value(s.type.name, i, tick, self.clock)
            status = Status.WARN if value == "error" or value is Lru.ERROR else Status.NOMINAL
            s.set_value(value, status, now)
        return len(sensors)

    async def on_stop(self) -> None:
        if self._updater is not None:
            self._updater.cancel()
            await asyncio.gather(self._updater, return_exceptions=True)
            self._updater = None

    # -- requests --------------------------------------------------------------------------
    def request_echo(self, ctx: RequestContext, *args: bytes) -> tuple[bytes, ...]:
        """Reply ok with the arguments unchanged."""
        return args

    @timeout_hint(MAX_DELAY)
    async def request_slow_echo(self, ctx: RequestContext, delay: float, *args: bytes) -> tuple[bytes, ...]:
        """Wait DELAY seconds (at most 3600), then reply ok with the other arguments."""
        if not 0 <= delay <= MAX_DELAY:
            raise FailReply(f"delay must be between 0 and {MAX_DELAY:g} seconds")
        await asyncio.sleep(delay)
        return args

    @timeout_hint(MAX_DELAY)
    async def request_slow_informs(self, ctx: RequestContext, count: int, interval: float) -> int:
        """Send COUNT informs ``#slow-informs <i>``, one every INTERVAL seconds, then reply ok COUNT."""
        if not 0 <= count <= MAX_COUNT or not 0 <= interval or count * interval > MAX_DELAY:
            raise FailReply(f"need 0 <= count <= {MAX_COUNT}, interval >= 0, count * interval <= {MAX_DELAY:g} s")
        for i in range(count):
            await asyncio.sleep(interval)
            ctx.inform(i)
        return count

    def request_fail_always(self, ctx: RequestContext) -> None:
        """Always reply fail (for testing error paths)."""
        raise FailReply("This request always fails.")

    def request_set_sensor(self, ctx: RequestContext, name: str, value: bytes, status: Status | None = None) -> None:
        """Set sensor NAME to VALUE (its wire form, e.g. 1.5, on, 127.0.0.1:80) with STATUS (default nominal)."""
        sensor = self._get_sensor(name)
        try:
            decoded = sensor.type.decode_value(value, self.protocol.major)
            sensor.set_value(decoded, status if status is not None else Status.NOMINAL)
        except (ValueError, InvalidUsage) as exc:
            raise FailReply(f"Bad value for {sensor.type.name} sensor {name}: {exc}") from None

    def request_add_sensors(self, ctx: RequestContext, count: int, type_name: str | None = None) -> int:
        """Add COUNT sensors dyn.NNNNN (of TYPE, default cycling through all types); reply ok with the new total."""
        if not 0 <= count <= MAX_COUNT:
            raise FailReply(f"count must be between 0 and {MAX_COUNT}")
        if type_name is not None and type_name not in SENSOR_TYPES:
            raise FailReply(f"Unknown sensor type {type_name!r}")
        for _ in range(count):
            i = self._next_dyn
            self._next_dyn += 1
            t = type_name or SENSOR_TYPE_CYCLE[i % len(SENSOR_TYPE_CYCLE)]
            self.add_sensor(make_sensor(f"dyn.{i:05d}", t, i, self.clock))
        return len(self.sensors)

    def request_remove_sensors(self, ctx: RequestContext, count: int) -> int:
        """Remove up to COUNT dyn.* sensors, newest first; reply ok with how many were removed."""
        dyn = sorted((n for n in self.sensors if n.startswith("dyn.")), reverse=True)[: max(count, 0)]
        for name in dyn:
            self.remove_sensor(name)
        return len(dyn)

    def request_retype_sensor(self, ctx: RequestContext, name: str, type_name: str) -> None:
        """Replace sensor NAME by a new sensor of TYPE with the same name."""
        old = self._get_sensor(name)
        if type_name not in SENSOR_TYPES:
            raise FailReply(f"Unknown sensor type {type_name!r}")
        suffix = name.rsplit(".", 1)[-1]
        index = int(suffix) if suffix.isdigit() else 0
        logger.info("retyping %s from %s to %s", name, old.type.name, type_name)
        self.add_sensor(make_sensor(name, type_name, index, self.clock))

    def request_add_requests(self, ctx: RequestContext, count: int) -> int:
        """Add COUNT dummy requests dyn-req-NNNNN; reply ok with the number of requests."""
        if not 0 <= count <= MAX_COUNT:
            raise FailReply(f"count must be between 0 and {MAX_COUNT}")
        for _ in range(count):
            name = f"dyn-req-{self._next_dyn_req:05d}"
            self._next_dyn_req += 1
            self.add_request(name, _dummy_request, f"Dynamic dummy request {name}; replies ok.")
        return len(self.request_names)

    def request_remove_requests(self, ctx: RequestContext, count: int) -> int:
        """Remove up to COUNT dyn-req-* requests, newest first; reply ok with how many were removed."""
        names = sorted((n for n in self.request_names if n.startswith("dyn-req-")), reverse=True)[: max(count, 0)]
        for name in names:
            self.remove_request(name)
        return len(names)


async def _dummy_request(ctx: RequestContext, *args: bytes) -> None:
    if args:
        raise FailReply(f"Too many arguments: got {len(args)}, at most 0")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (see the module docstring)."""
    parser = base_parser("Simulated KATCP device (katclient fake)", default_port=0)
    parser.add_argument("--sensors", type=int, default=16, help="number of sensor.NNNNN sensors")
    parser.add_argument("--requests", type=int, default=0, help="number of req-NNNNN dummy requests")
    parser.add_argument("--protocol", default="5.1-BIMT", help="5.1-BIMT (default), 5.0-IM or 4.0")
    parser.add_argument("--update-rate", type=float, default=1.0, help="sensor updates per second (0: none)")
    args = parser.parse_args(argv)
    device = FakeKatcpDevice(
        args.host,
        args.port,
        sensors=args.sensors,
        requests=args.requests,
        protocol=args.protocol,
        update_rate=args.update_rate,
        clock=time.time,
    )
    serve_until_signalled(device.start, device.stop, args.log_level)


if __name__ == "__main__":
    main()
