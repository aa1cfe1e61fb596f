"""The benchmark's aiokatcp device: ``aiokatcp.DeviceServer`` with N float sensors.

Our own copy of the peer server idea (shared/peers/aiokatcp_server.py), reduced to what
the benchmarks need.  It mirrors :mod:`bench.katclient_server` exactly (same sensor
names, descriptions, units, initial values and the same ``?bench-updates``), so the two
servers can be compared and either can feed either client.

``?bench-updates ROUNDS``
    Set every sensor ROUNDS times (one timestamp per round); after each round wait until
    every client connection has drained (aiokatcp drops a client whose backlog passes
    ``max_backlog``, so the server must not run ahead).  Replies ``ok <updates> <wall
    seconds> <cpu seconds>`` (``time.process_time`` of the server process).

Run ``python -m bench.aiokatcp_server --sensors N [--protocol 5.1-MIB|5.0-MI]``: prints
``listening on HOST:PORT`` and serves until SIGINT/SIGTERM.  ``5.0-MI`` hides bulk
sensor sampling from clients.
"""

import argparse
import asyncio
import signal
import time

from aiokatcp._version import __version__ as AIOKATCP_VERSION
from aiokatcp.connection import FailReply
from aiokatcp.sensor import Sensor
from aiokatcp.server import DeviceServer, RequestContext

__all__ = ["BenchAiokatcpServer", "build_server", "main"]


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


class BenchAiokatcpServer(DeviceServer):
    VERSION = "bench-aiokatcp-1.0"
    BUILD_STATE = f"bench-aiokatcp-{AIOKATCP_VERSION}"
    PROTOCOL = "5.1-MIB"

    def __init__(self, host: str, port: int, n_sensors: int, protocol: str) -> None:
        super().__init__(host, port)
        self.protocol_text = protocol
        self._counter = 0
        nominal = Sensor.Status.NOMINAL
        for i in range(n_sensors):
            self.sensors.add(
                Sensor(float, f"sensor.{i:05d}", f"Test float sensor number {i}", "V",
                       default=i * 0.5, initial_status=nominal)
            )

    def send_version_info(self, ctx: RequestContext, *, send_reply: bool = True) -> None:
        # As aiokatcp's own, but with the advertised protocol configurable (5.0-MI hides bulk).
        ctx.informs(
            [
                ("katcp-protocol", self.protocol_text),
                ("katcp-library", f"aiokatcp-{_minor(AIOKATCP_VERSION)}", f"aiokatcp-{AIOKATCP_VERSION}"),
                ("katcp-device", self.VERSION, self.BUILD_STATE),
            ],
            send_reply=send_reply,
        )

    async def request_bench_updates(self, ctx: RequestContext, rounds: int) -> tuple[int, float, float]:
        """Set every sensor ROUNDS times, draining clients between rounds.

        Replies ok with the number of updates, the wall seconds and the CPU seconds.
        """
        if rounds < 0:
            raise FailReply("rounds must be non-negative")
        t0, c0 = time.perf_counter(), time.process_time()
        sensors = list(self.sensors.values())
        total = 0
        for _ in range(rounds):
            self._counter += 1
            value = self._counter * 0.25
            now = time.time()
            for s in sensors:
                s.set_value(value, timestamp=now)
            total += len(sensors)
            for conn in list(self._connections):
                await conn.drain()
            await asyncio.sleep(0)
        return total, time.perf_counter() - t0, time.process_time() - c0


async def _amain(args: argparse.Namespace) -> None:
    server = BenchAiokatcpServer(args.host, args.port, args.sensors, args.protocol)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.halt)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", flush=True)
    await server.join()


def build_server(host: str, port: int, sensors: int, protocol: str = "5.1-MIB") -> BenchAiokatcpServer:
    """The server object, for use inside a running loop (``await server.start()``)."""
    return BenchAiokatcpServer(host, port, sensors, protocol)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="aiokatcp benchmark device")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--sensors", type=int, default=1000)
    p.add_argument("--protocol", default="5.1-MIB", help="advertised protocol; 5.0-MI hides bulk sampling")
    args = p.parse_args(argv)
    try:
        asyncio.run(_amain(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
