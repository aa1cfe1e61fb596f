#!/usr/bin/env python
# Copied from the project's shared peers folder (peers/aiokatcp_server.py) so that the
# repository's tests are self-contained: a real, independent KATCP peer built on aiokatcp.
"""Peer KATCP device server built on aiokatcp (PyPI `aiokatcp` 2.3.0).

A real, independent KATCP peer for interoperability tests and benchmarks.
Install ``pip install aiokatcp`` (any environment) and run e.g.

    python aiokatcp_server.py --port 7147 \
        --sensors 1000 --requests 100

It serves on 127.0.0.1 until killed (SIGINT/SIGTERM) or until ``?halt``.

Sensors are named sensor.00000, sensor.00001, ...  By default they are all
float sensors (units "V", description with spaces so that escaping is
exercised); --mixed cycles through float, integer, boolean, discrete, string,
timestamp and address.  Extra requests are named req-00000, req-00001, ...
and reply ``!req-NNNNN ok``.

Extra requests used by aiokatcp_bench.py and by future inspecting-client tests:

?bench-updates ROUNDS
    Set every sensor ROUNDS times in a tight loop (one timestamp per round).
    After each round it awaits drain() on every client connection, so the
    server never out-runs the slowest subscribed client by more than one
    round (otherwise aiokatcp would disconnect it once its backlog exceeds
    max_backlog).  Replies ``ok <updates> <seconds>``.
?add-sensors COUNT / ?remove-sensors COUNT
    Add or remove COUNT extra float sensors (dyn.NNNNN) and broadcast
    ``#interface-changed sensor-list``.
?set-all VALUE
    Set every float sensor to VALUE once.

Options --protocol (default 5.1-MIB) changes the advertised
``#version-connect katcp-protocol`` string, e.g. 5.0-MI to hide bulk sensor
sampling support from clients; --update-interval re-sets every sensor
periodically.
"""

import argparse
import asyncio
import enum
import ipaddress
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import aiokatcp
from aiokatcp import Address, DeviceServer, FailReply, RequestContext, Sensor, Timestamp


class Power(enum.Enum):
    ON = 1
    OFF = 2
    ERROR = 3


TYPES = ["float", "integer", "boolean", "discrete", "string", "timestamp", "address"]


def make_sensor(i: int, mixed: bool, prefix: str = "sensor") -> Sensor:
    name = f"{prefix}.{i:05d}"
    kind = TYPES[i % len(TYPES)] if mixed else "float"
    desc = f"Test {kind} sensor number {i}"
    nominal = Sensor.Status.NOMINAL
    if kind == "float":
        return Sensor(float, name, desc, "V", default=i * 0.5, initial_status=nominal)
    if kind == "integer":
        return Sensor(int, name, desc, "count", default=i, initial_status=nominal)
    if kind == "boolean":
        return Sensor(bool, name, desc, "", default=bool(i % 2), initial_status=nominal)
    if kind == "discrete":
        return Sensor(Power, name, desc, "", default=Power.ON, initial_status=nominal)
    if kind == "string":
        return Sensor(str, name, desc, "", default=f"value with spaces {i}", initial_status=nominal)
    if kind == "timestamp":
        return Sensor(Timestamp, name, desc, "s", default=Timestamp(time.time()),
                      initial_status=nominal)
    return Sensor(Address, name, desc, "",
                  default=Address(ipaddress.IPv4Address("127.0.0.1"), 7000 + i % 100),
                  initial_status=nominal)


def next_value(sensor: Sensor, counter: int) -> Any:
    """A new value of the right type for `sensor`."""
    stype = sensor.stype
    if stype is float:
        return counter * 0.25
    if stype is int:
        return counter
    if stype is bool:
        return bool(counter % 2)
    if stype is Power:
        return Power.ON if counter % 2 else Power.OFF
    if stype is str:
        return f"tick {counter}"
    if stype is Timestamp:
        return Timestamp(time.time())
    return sensor.value  # address: re-set same value (auto strategy still reports it)


def make_request_handler(req_name: str) -> Callable:
    async def handler(self, ctx: RequestContext) -> None:
        pass

    handler.__doc__ = f"Dummy request {req_name}; replies ok. Takes no arguments."
    handler.__name__ = "request_" + req_name.replace("-", "_")
    return handler


class PeerServerBase(DeviceServer):
    VERSION = "peer-aiokatcp-1.0"
    BUILD_STATE = f"peer-aiokatcp-{aiokatcp.__version__}"
    PROTOCOL = "5.1-MIB"

    def __init__(self, host: str, port: int, n_sensors: int, mixed: bool, **kwargs) -> None:
        super().__init__(host, port, **kwargs)
        self._mixed = mixed
        for i in range(n_sensors):
            self.sensors.add(make_sensor(i, mixed))
        self._next_dyn = 0
        self._counter = 0

    def send_version_info(self, ctx: RequestContext, *, send_reply=True) -> None:
        # Same as DeviceServer.send_version_info, but with a configurable protocol string.
        ctx.informs(
            [
                ("katcp-protocol", self.PROTOCOL),
                ("katcp-library", f"aiokatcp-{aiokatcp.minor_version()}",
                 f"aiokatcp-{aiokatcp.__version__}"),
                ("katcp-device", self.VERSION, self.BUILD_STATE),
            ],
            send_reply=send_reply,
        )

    def update_all(self) -> int:
        """Set every sensor once. Returns the number of updates."""
        self._counter += 1
        now = time.time()
        counter = self._counter
        n = 0
        for s in list(self.sensors.values()):
            s.set_value(next_value(s, counter), timestamp=now)
            n += 1
        return n

    async def request_bench_updates(self, ctx: RequestContext, rounds: int) -> tuple[int, float]:
        """Update every sensor ROUNDS times in a tight loop (drain between rounds).

        Replies with the number of sensor updates made and the elapsed seconds.
        """
        if rounds < 0:
            raise FailReply("rounds must be non-negative")
        t0 = time.monotonic()
        total = 0
        for _ in range(rounds):
            total += self.update_all()
            for conn in list(self._connections):
                await conn.drain()
            await asyncio.sleep(0)
        return total, time.monotonic() - t0

    async def request_set_all(self, ctx: RequestContext, value: float) -> int:
        """Set every float sensor to VALUE; replies with the number updated."""
        n = 0
        for s in self.sensors.values():
            if s.stype is float:
                s.value = value
                n += 1
        return n

    async def request_add_sensors(self, ctx: RequestContext, count: int) -> int:
        """Add COUNT float sensors named dyn.NNNNN and send #interface-changed."""
        for _ in range(count):
            self.sensors.add(make_sensor(self._next_dyn, False, prefix="dyn"))
            self._next_dyn += 1
        self.mass_inform("interface-changed", "sensor-list")
        return len(self.sensors)

    async def request_remove_sensors(self, ctx: RequestContext, count: int) -> int:
        """Remove up to COUNT dyn.* sensors (newest first) and send #interface-changed."""
        dyn = sorted((name for name in self.sensors if name.startswith("dyn.")), reverse=True)
        for name in dyn[:count]:
            del self.sensors[name]
        self.mass_inform("interface-changed", "sensor-list")
        return len(self.sensors)


def build_server_class(n_requests: int, protocol: str) -> type:
    attrs: dict[str, Any] = {"PROTOCOL": protocol}
    for i in range(n_requests):
        req_name = f"req-{i:05d}"
        attrs["request_" + req_name.replace("-", "_")] = make_request_handler(req_name)
    # DeviceServerMeta collects request_* methods when the class is created.
    return type("PeerDeviceServer", (PeerServerBase,), attrs)


async def periodic_updates(server: PeerServerBase, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        server.update_all()


async def amain(args: argparse.Namespace) -> None:
    cls = build_server_class(args.requests, args.protocol)
    kwargs = {}
    if args.max_backlog:
        kwargs["max_backlog"] = args.max_backlog
    server = cls(args.host, args.port, args.sensors, args.mixed, **kwargs)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.halt)
    if args.update_interval > 0:
        server.add_service_task(asyncio.create_task(periodic_updates(server, args.update_interval)))
    host, port = server.sockets[0].getsockname()[:2]
    n_requests = len(server._request_handlers)
    print(
        f"aiokatcp {aiokatcp.__version__} DeviceServer listening on {host}:{port} "
        f"({len(server.sensors)} sensors, {args.requests} extra requests, "
        f"{n_requests} requests in total, protocol {args.protocol})",
        flush=True,
    )
    await server.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7147, help="0 picks a free port")
    p.add_argument("--sensors", type=int, default=10)
    p.add_argument("--requests", type=int, default=10,
                   help="extra dummy requests on top of the standard ones")
    p.add_argument("--mixed", action="store_true",
                   help="cycle sensor types instead of all-float")
    p.add_argument("--protocol", default="5.1-MIB",
                   help="advertised katcp-protocol, e.g. 5.0-MI to hide bulk sampling")
    p.add_argument("--update-interval", type=float, default=0.0,
                   help="if >0, re-set every sensor this often (seconds)")
    p.add_argument("--max-backlog", type=int, default=0,
                   help="bytes of write backlog before a slow client is dropped "
                        "(aiokatcp default: 2 * 16 MiB)")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args()
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
