"""The benchmark's katclient device: :class:`katclient.server.DeviceServer` with N float sensors.

The counterpart of :mod:`bench.aiokatcp_server` (same sensors, same ``?bench-updates``;
see there).  It is a plain ``DeviceServer`` rather than ``fake_servers.katcp_device``
because that fake cycles through eight sensor types, one of which (``lru``) aiokatcp's
client cannot mirror, and its sensors change on their own; with identical float
sensors on both servers, every client/server pairing does the same work.

Run ``python -m bench.katclient_server --sensors N [--protocol 5.1-BIMT|5.0-IM]``:
prints ``listening on HOST:PORT`` and serves until SIGINT/SIGTERM.  ``5.0-IM`` hides
bulk sensor sampling from clients.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fake_servers._common import base_parser, serve_until_signalled
from katclient.protocol import FailReply, Status
from katclient.server import DeviceServer, RequestContext, Sensor

__all__ = ["BenchKatclientServer", "main"]


class BenchKatclientServer(DeviceServer):
    """N float sensors ``sensor.NNNNN`` and ``?bench-updates``.

    :param sensors: number of sensors.
    :param kwargs: passed to :class:`~katclient.server.DeviceServer` (``protocol``...).
    """

    VERSION = "bench-katclient-1.0"

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, sensors: int = 1000, **kwargs: Any) -> None:
        super().__init__(host, port, **kwargs)
        self._counter = 0
        for i in range(sensors):
            self.add_sensor(
                Sensor(
                    "float",
                    f"sensor.{i:05d}",
                    f"Test float sensor number {i}",
                    "V",
                    default=i * 0.5,
                    initial_status=Status.NOMINAL,
                )
            )

    async def _drain(self) -> None:
        # Let each connection's once-per-iteration flush run, then wait until Tornado has
        # handed everything to the socket (the katclient analogue of aiokatcp's drain()).
        await asyncio.sleep(0)
        writes = [w for c in self.connections if (w := getattr(c, "_last_write", None)) is not None and not w.done()]
        if writes:
            await asyncio.wait(writes)

    async def request_bench_updates(self, ctx: RequestContext, rounds: int) -> tuple[int, float, float]:
        """Set every sensor ROUNDS times, draining clients between rounds.

        Replies ok with the number of updates, the wall seconds and the CPU seconds.
        """
        if rounds < 0:
            raise FailReply("rounds must be non-negative")
        t0, c0 = time.perf_counter(), time.process_time()
        sensors = list(self.sensors.values())
        nominal = Status.NOMINAL
        total = 0
        for _ in range(rounds):
            self._counter += 1
            value = self._counter * 0.25
            now = time.time()
            for s in sensors:
                s.set_value(value, nominal, now)
            total += len(sensors)
            await self._drain()
        return total, time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> None:
    parser = base_parser("katclient benchmark device")
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--protocol", default="5.1-BIMT", help="5.1-BIMT (default) or 5.0-IM (no bulk sampling)")
    args = parser.parse_args(argv)
    server = BenchKatclientServer(args.host, args.port, sensors=args.sensors, protocol=args.protocol)
    serve_until_signalled(server.start, server.stop, args.log_level)


if __name__ == "__main__":
    main()
