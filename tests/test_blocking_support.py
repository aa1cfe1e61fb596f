"""Test device for the blocking-client tests: an aiokatcp ``DeviceServer`` in a thread of its own.

Not a test module (it holds no tests); the ``test_blocking_`` prefix keeps it among the
files of the blocking-client tests.  It is also a script that serves the device until
SIGINT/SIGTERM and prints ``listening on HOST:PORT`` (fake_servers/_common.py)::

    python -m tests.test_blocking_support --port 0 --tick 0.05

aiokatcp (a test dependency) is an independent KATCP implementation, so these tests
also check the facade against a peer katclient did not write.  The device announces
``5.1-BIMT`` and answers ``?request-timeout-hint`` itself (aiokatcp 2.3 has no hints) so
that the long-running ``?slow`` request carries a hint.
"""

# No ``from __future__ import annotations``: aiokatcp decodes request arguments from the
# handlers' annotations, which must be real types.
import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any, Final, Optional

import aiokatcp

from fake_servers._common import base_parser, serve_until_signalled

__all__ = ["BlockingTestDevice", "DeviceThread", "SLOW_HINT", "open_sockets"]

#: ``?request-timeout-hint`` of ``?slow``, seconds.
SLOW_HINT: Final = 30.0
#: Seconds to wait for the device thread to start or stop.
THREAD_TIMEOUT: Final = 10.0


class BlockingTestDevice(aiokatcp.DeviceServer):
    VERSION = "blocking-test-1.0"
    BUILD_STATE = "blocking-test-1.0.0"

    def __init__(self, host: str, port: int, tick: float = 0.0) -> None:
        super().__init__(host, port)
        nominal = aiokatcp.Sensor.Status.NOMINAL
        self.sensors.add(aiokatcp.Sensor(int, "counter", "A counter the requests change", "", 0, nominal))
        self.sensors.add(aiokatcp.Sensor(float, "temperature", "Fake temperature", "degC", 20.5, nominal))
        self.sensors.add(aiokatcp.Sensor(int, "ticks", "Ticks of the --tick timer", "", 0, nominal))
        #: Set (from the device loop) when a ``?slow`` request starts.
        self.slow_started = threading.Event()
        self._tick = tick

    async def start(self) -> None:
        await super().start()
        if self._tick > 0:
            self.add_service_task(asyncio.get_running_loop().create_task(self._ticker()))

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            self.sensors["ticks"].value += 1

    def send_version_info(self, ctx: aiokatcp.RequestContext, *, send_reply: bool = True) -> None:
        ctx.informs(
            [
                ("katcp-protocol", "5.1-BIMT"),
                ("katcp-library", f"aiokatcp-{aiokatcp.minor_version()}", f"aiokatcp-{aiokatcp.__version__}"),
                ("katcp-device", self.VERSION, self.BUILD_STATE),
            ],
            send_reply=send_reply,
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sockets[0].getsockname()[:2]
        return host, port

    async def request_request_timeout_hint(self, ctx: aiokatcp.RequestContext, name: Optional[str] = None) -> None:  # noqa: UP045 (aiokatcp needs typing.Optional)
        """Return the timeout hints of the requests that have one (KATCP v5.1)."""
        hints = [("slow", SLOW_HINT)]
        ctx.informs([h for h in hints if name is None or h[0] == name])

    async def request_bump(self, ctx: aiokatcp.RequestContext, n: int = 1) -> int:
        """Bump the counter by N."""
        self.sensors["counter"].value += n
        return self.sensors["counter"].value

    async def request_set_counter(self, ctx: aiokatcp.RequestContext, value: int) -> None:
        """Set the counter to VALUE."""
        self.sensors["counter"].value = value

    async def request_pulse(self, ctx: aiokatcp.RequestContext, value: int) -> None:
        """Set the counter to VALUE and at once back to 0 (two readings)."""
        self.sensors["counter"].value = value
        self.sensors["counter"].value = 0

    async def request_boom(self, ctx: aiokatcp.RequestContext) -> None:
        """Always fail."""
        raise aiokatcp.FailReply("it broke on purpose")

    async def request_slow(self, ctx: aiokatcp.RequestContext, seconds: float) -> float:
        """Reply after SECONDS seconds."""
        self.slow_started.set()
        await asyncio.sleep(seconds)
        return seconds

    async def request_things(self, ctx: aiokatcp.RequestContext, n: int) -> None:
        """Send N informs, then reply with their count."""
        ctx.informs([(f"thing-{i}",) for i in range(n)])

    async def request_add_sensor(self, ctx: aiokatcp.RequestContext, name: str) -> None:
        """Add an integer sensor NAME and send #interface-changed."""
        self.sensors.add(aiokatcp.Sensor(int, name, f"Extra sensor {name}", "", 1, aiokatcp.Sensor.Status.NOMINAL))
        self.mass_inform("interface-changed", "sensor-list")


class DeviceThread:
    """Run a :class:`BlockingTestDevice` in a thread with its own event loop.

    :param port: TCP port (0 picks one; give the old port to restart "the same" device).
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", tick: float = 0.0) -> None:
        self.host = host
        self.port = port
        self._tick = tick
        self.device: BlockingTestDevice | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="blocking-test-device", daemon=True)
        self._error: BaseException | None = None
        self._crash = False

    def start(self) -> tuple[str, int]:
        self._thread.start()
        if not self._ready.wait(THREAD_TIMEOUT) or self.device is None:
            raise RuntimeError(f"test device did not start: {self._error}")
        return self.host, self.port

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        device = BlockingTestDevice(self.host, self.port, self._tick)
        await device.start()
        self.host, self.port = device.address
        self.device = device
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            if self._crash:
                # Drop every connection without a goodbye, like a process that died.
                for conn in list(device._connections):
                    conn.abort()
            await device.stop()

    def call(self, fn: Callable[[BlockingTestDevice], Any]) -> Any:
        """Run ``fn(device)`` in the device's loop and return its result."""
        assert self._loop is not None and self.device is not None
        device = self.device

        async def run() -> Any:
            return fn(device)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(THREAD_TIMEOUT)

    def stop(self, crash: bool = False) -> None:
        """Stop the device; with ``crash``, abort its connections first (no replies, no ``#disconnect``)."""
        self._crash = crash
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(THREAD_TIMEOUT)
        assert not self._thread.is_alive(), "test device thread did not stop"

    def __enter__(self) -> "DeviceThread":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def open_sockets() -> int:
    """Number of sockets this process has open (Linux ``/proc``), or -1 when unknown."""
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        return -1
    count = 0
    for fd in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, fd)).startswith("socket:"):
                count += 1
        except OSError:  # closed between listdir and readlink
            continue
    return count


def main() -> None:
    parser = base_parser("aiokatcp test device of the blocking-client tests")
    parser.add_argument("--tick", type=float, default=0.0, help="seconds between 'ticks' increments (0: off)")
    args = parser.parse_args()
    holder: dict[str, BlockingTestDevice] = {}

    async def start() -> tuple[str, int]:
        device = BlockingTestDevice(args.host, args.port, args.tick)
        await device.start()
        holder["device"] = device
        return device.address

    async def stop() -> None:
        await holder["device"].stop()

    serve_until_signalled(start, stop, args.log_level)


if __name__ == "__main__":
    main()
