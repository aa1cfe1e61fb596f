"""One client trial in a fresh process: ``python -m bench.worker SPEC_JSON``.

The orchestrator (:mod:`bench.workloads`) starts one worker per measurement, so each
client starts from an empty heap and nothing one trial left behind (garbage, a
10,000-sensor mirror, warmed caches) favours the next.  The worker prints one JSON
object on its last stdout line.

SPEC keys: ``task`` (``ingest``, ``sync``, ``requests``, ``memory``), ``client``
(``katclient`` or ``aiokatcp``), ``host``, ``port``, ``n`` (sensors on the device), plus
``rounds`` (ingest), ``count`` and ``inflight`` (requests), and optionally ``profile``: a
path where the cProfile statistics of the timed section are written, and ``profile_timer``:
``cpu`` (default; attributes CPU time, so waiting in ``epoll`` does not dominate) or
``wall``.

Both clients are driven the way a user would mirror a device:

* katclient: :class:`katclient.InspectingClientAsync` (default sampling ``auto`` for all
  sensors); its mirrored sensors are ``client.sensors``.
* aiokatcp: ``aiokatcp.Client`` plus ``aiokatcp.SensorWatcher`` (which subscribes every
  sensor with ``auto``); its mirrored sensors are ``watcher.sensors``.

Every mirrored sensor gets the same counting observer ``observer(sensor, reading)``, so
"delivered" means the update reached user code through the mirror.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import json
import logging
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["run_spec", "main", "SYNC_TIMEOUT"]

#: Seconds any one sync may take before the trial fails (10k sensors take ~1 s).
SYNC_TIMEOUT = 60.0
#: Seconds one blast or request batch may take before the trial fails.
STEP_TIMEOUT = 120.0


class _Counter:
    """The observer attached to every mirrored sensor: counts deliveries."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, sensor: Any, reading: Any) -> None:
        self.count += 1


class _Side:
    """What a trial needs from a client library."""

    name = ""
    sensors: Mapping[str, Any]

    async def connect(self, host: str, port: int, mirror: bool) -> None:
        """Connect and, with ``mirror``, wait until every sensor is mirrored with its value."""
        raise NotImplementedError

    async def request(self, name: str, *args: Any) -> list[bytes]:
        """Send a request; return the reply's arguments after ``ok`` (raise on failure).

        Called the way a user would: katclient with its default timeout (it always arms
        one), aiokatcp without (it has none).  Callers bound the whole step instead.
        """
        raise NotImplementedError

    def value_status(self, sensor: Any) -> tuple[float, str]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class KatclientSide(_Side):
    name = "katclient"

    async def connect(self, host: str, port: int, mirror: bool) -> None:
        from katclient import InspectingClientAsync

        self.client = InspectingClientAsync(
            host, port, auto_reconnect=False, default_sampling=("auto",) if mirror else None
        )
        await self.client.connect()
        await self.client.until_synced(SYNC_TIMEOUT)
        self.sensors = self.client.sensors

    async def request(self, name: str, *args: Any) -> list[bytes]:
        if name.startswith("bench-"):  # these may take long
            reply, _ = await self.client.request_ok(name, *args, timeout=STEP_TIMEOUT)
        else:  # as a user calls it: the client's default timeout
            reply, _ = await self.client.request_ok(name, *args)
        return list(reply.arguments[1:])

    def value_status(self, sensor: Any) -> tuple[float, str]:
        return sensor.value, sensor.status.name.lower()

    async def close(self) -> None:
        await self.client.aclose()


class AiokatcpSide(_Side):
    name = "aiokatcp"

    async def connect(self, host: str, port: int, mirror: bool) -> None:
        from aiokatcp.client import Client, SensorWatcher

        self.client = await Client.connect(host, port, auto_reconnect=False)
        self.sensors = {}
        if mirror:
            self.watcher = SensorWatcher(self.client)
            self.client.add_sensor_watcher(self.watcher)
            await asyncio.wait_for(self.watcher.synced.wait(), SYNC_TIMEOUT)
            self.sensors = self.watcher.sensors

    async def request(self, name: str, *args: Any) -> list[bytes]:
        reply, _ = await self.client.request(name, *args)
        return list(reply)

    def value_status(self, sensor: Any) -> tuple[float, str]:
        return sensor.value, sensor.status.name.lower()

    async def close(self) -> None:
        self.client.close()
        await self.client.wait_closed()


SIDES: dict[str, Callable[[], _Side]] = {"katclient": KatclientSide, "aiokatcp": AiokatcpSide}


class _Timed:
    """Wall and CPU time (and optionally a cProfile) around a section."""

    def __init__(self, profile_path: str | None, timer: str = "cpu") -> None:
        self.profile_path = profile_path
        self.profiler: cProfile.Profile | None = None
        if profile_path:
            self.profiler = cProfile.Profile(time.process_time) if timer == "cpu" else cProfile.Profile()
        self.wall = self.cpu = 0.0

    def __enter__(self) -> _Timed:
        gc.collect()
        self.r0 = resource.getrusage(resource.RUSAGE_SELF)
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        if self.profiler is not None:
            self.profiler.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.profiler is not None:
            self.profiler.disable()
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        self.user = r1.ru_utime - self.r0.ru_utime
        self.sys = r1.ru_stime - self.r0.ru_stime
        self.faults = r1.ru_minflt - self.r0.ru_minflt
        if self.profiler is not None and self.profile_path:
            self.profiler.dump_stats(self.profile_path)


def _check_values(side: _Side, n: int, expect: Callable[[str], float]) -> None:
    if len(side.sensors) != n:
        raise RuntimeError(f"{side.name}: mirrored {len(side.sensors)} sensors, expected {n}")
    for name, sensor in side.sensors.items():
        value, status = side.value_status(sensor)
        if status != "nominal" or value != expect(name):
            raise RuntimeError(f"{side.name}: sensor {name} holds {value!r} {status}, expected {expect(name)!r}")


def _initial(name: str) -> float:
    return int(name.rsplit(".", 1)[1]) * 0.5


async def _ingest(side: _Side, spec: dict[str, Any]) -> dict[str, Any]:
    from bench.blaster import blast_value

    n, rounds = spec["n"], spec["rounds"]
    await side.connect(spec["host"], spec["port"], mirror=True)
    _check_values(side, n, _initial)
    counter = _Counter()
    for sensor in side.sensors.values():
        sensor.attach(counter)
    await side.request("bench-prepare", rounds)
    await side.request("bench-blast", 1)  # warm-up: first delivery through every mirror
    counter.count = 0
    with _Timed(spec.get("profile"), spec.get("profile_timer", "cpu")) as t:
        await asyncio.wait_for(side.request("bench-blast", rounds), STEP_TIMEOUT)
    delivered = counter.count
    expected = rounds * n
    if delivered != expected:
        raise RuntimeError(f"{side.name}: {delivered} updates delivered to observers, expected {expected}")
    last = blast_value(rounds - 1)
    _check_values(side, n, lambda name: last)
    await side.close()
    return {"updates": delivered, "wall": t.wall, "cpu": t.cpu}


async def _sync(side: _Side, spec: dict[str, Any]) -> dict[str, Any]:
    with _Timed(spec.get("profile"), spec.get("profile_timer", "cpu")) as t:
        await side.connect(spec["host"], spec["port"], mirror=True)
    _check_values(side, spec["n"], _initial)
    await side.close()
    return {"wall": t.wall, "cpu": t.cpu, "user": t.user, "sys": t.sys, "faults": t.faults}


async def _requests(side: _Side, spec: dict[str, Any]) -> dict[str, Any]:
    count, inflight = spec["count"], spec["inflight"]
    await side.connect(spec["host"], spec["port"], mirror=False)
    for _ in range(100):  # warm-up
        await side.request("watchdog")

    async def lane(k: int) -> None:
        for _ in range(k):
            await side.request("watchdog")

    per_lane = [count // inflight + (1 if i < count % inflight else 0) for i in range(inflight)]
    with _Timed(spec.get("profile"), spec.get("profile_timer", "cpu")) as t:
        if inflight == 1:
            await asyncio.wait_for(lane(count), STEP_TIMEOUT)
        else:
            await asyncio.wait_for(asyncio.gather(*(lane(k) for k in per_lane)), STEP_TIMEOUT)
    await side.close()
    return {"requests": count, "wall": t.wall, "cpu": t.cpu}


async def _memory(side: _Side, spec: dict[str, Any]) -> dict[str, Any]:
    import psutil

    proc = psutil.Process()
    gc.collect()
    rss0 = proc.memory_info().rss
    await side.connect(spec["host"], spec["port"], mirror=True)
    _check_values(side, spec["n"], _initial)
    gc.collect()
    rss1 = proc.memory_info().rss
    await side.close()
    return {"rss_before": rss0, "rss_after": rss1, "bytes_per_sensor": (rss1 - rss0) / spec["n"]}


TASKS = {"ingest": _ingest, "sync": _sync, "requests": _requests, "memory": _memory}


def _preload(client: str) -> None:
    """Import everything a trial uses before it starts (imports are not what is measured)."""
    import bench.blaster  # noqa: F401

    if client == "katclient":
        import tornado.platform.asyncio  # noqa: F401  (imported lazily by the first IOLoop)
        import tornado.tcpclient  # noqa: F401

        import katclient  # noqa: F401
        import katclient.client.inspecting  # noqa: F401
    else:
        import aiokatcp  # noqa: F401


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one trial described by ``spec`` in this process and return its result."""
    _preload(spec["client"])
    side = SIDES[spec["client"]]()
    task = TASKS[spec["task"]]
    return asyncio.run(task(side, spec))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    override = os.environ.get("BENCH_KATCLIENT_PATH")
    if override:  # before the repository root, which ``python -m`` put first (see bench.procs)
        sys.path.insert(0, override)
    logging.basicConfig(level=logging.WARNING)
    spec = json.loads(args[0])
    result = run_spec(spec)
    if spec["client"] == "katclient":
        import katclient

        result["katclient_path"] = katclient.__file__
        if override and not katclient.__file__.startswith(os.path.abspath(override)):
            raise RuntimeError(f"BENCH_KATCLIENT_PATH={override} holds no katclient/ (got {katclient.__file__})")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
