"""The five side-by-side benchmarks.  Each returns a list of :class:`~bench.stats.Metric`.

One rule everywhere: a single load at a time (the machine has 2 cores).  Servers run in
their own processes and sit idle between trials; each trial is one client in a fresh
worker process (:mod:`bench.worker`) or the raw reader (:mod:`bench.reader`).  Within a
workload the two libraries alternate (katclient first on even repeats, aiokatcp first
on odd ones) against the very same server process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.procs import ServerProcess, run_module
from bench.stats import CLIENTS, Metric, Target

__all__ = ["Plan", "PLANS", "WORKLOADS", "ingest", "sync", "requests", "memory", "server"]

Log = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """Sizes of one run.

    :ivar repeats: trials per client per metric.
    :ivar ingest: ``(sensors, rounds)`` pairs; each blast sends ``sensors * rounds`` updates.
    :ivar sync_sizes: sensor counts for the sync benchmark.
    :ivar sequential: ``?watchdog`` requests per sequential trial.
    :ivar inflight_requests: ``?watchdog`` requests per in-flight trial.
    :ivar inflight: requests kept in flight.
    :ivar memory_sensors: sensors mirrored in the memory benchmark.
    :ivar server_sensors: sensors on the servers of the server benchmark.
    :ivar server_rounds: rounds of ``?bench-updates`` (each updates every sensor once).
    """

    repeats: int
    ingest: tuple[tuple[int, int], ...]
    sync_sizes: tuple[int, ...]
    sequential: int
    inflight_requests: int
    inflight: int
    memory_sensors: int
    server_sensors: int
    server_rounds: int


PLANS: dict[str, Plan] = {
    "full": Plan(
        repeats=5,
        ingest=((1000, 200), (10_000, 20)),
        sync_sizes=(1000, 10_000),
        sequential=10_000,
        inflight_requests=40_000,
        inflight=100,
        memory_sensors=10_000,
        server_sensors=10_000,
        server_rounds=30,
    ),
    "quick": Plan(
        repeats=3,
        ingest=((1000, 60), (10_000, 6)),
        sync_sizes=(10_000,),
        sequential=3000,
        inflight_requests=15_000,
        inflight=100,
        memory_sensors=10_000,
        server_sensors=10_000,
        server_rounds=8,
    ),
    # For the smoke test: every code path, seconds in total.
    "tiny": Plan(
        repeats=1,
        ingest=((40, 2),),
        sync_sizes=(40,),
        sequential=20,
        inflight_requests=200,
        inflight=10,
        memory_sensors=40,
        server_sensors=40,
        server_rounds=2,
    ),
}

# The speed targets of DESIGN.md section 5 / issue 8, on the ratio katclient/aiokatcp.
INGEST_TARGET = Target(">=", 6.0)
SYNC_CPU_TARGET = Target("<=", 0.25)  # at 10,000 sensors
SEQUENTIAL_TARGET = Target(">=", 1.2)
INFLIGHT_TARGET = Target(">=", 1.5)
MEMORY_TARGET = Target("<=", 1 / 3)
SERVER_RATE_TARGET = Target(">=", 3.0)
SERVER_LIST_TARGET = Target("<=", 0.4)


def _order(i: int) -> tuple[str, ...]:
    return CLIENTS if i % 2 == 0 else CLIENTS[::-1]


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    return run_module("bench.worker", spec)


def ingest(plan: Plan, log: Log) -> list[Metric]:
    """Updates/s delivered into the mirror (and client CPU per update) from the blaster."""
    metrics: list[Metric] = []
    for n, rounds in plan.ingest:
        rate = Metric(f"ingest {n} sensors x {rounds} rounds", "updates/s", INGEST_TARGET)
        cpu = Metric(f"ingest {n} sensors: client CPU", "us/update")
        with ServerProcess("bench.blaster", ["--sensors", str(n)]) as srv:
            for i in range(plan.repeats):
                for client in _order(i):
                    r = _worker({"task": "ingest", "client": client, "host": srv.host, "port": srv.port,
                                 "n": n, "rounds": rounds})
                    rate.add(client, r["updates"] / r["wall"])
                    cpu.add(client, r["cpu"] / r["updates"] * 1e6)
                    log(f"ingest n={n} {client}: {r['updates'] / r['wall']:.0f} updates/s")
        metrics += [rate, cpu]
    return metrics


#: (server module, protocol with bulk sampling, protocol without) per server library.
SYNC_SERVERS = {
    "aiokatcp": ("bench.aiokatcp_server", "5.1-MIB", "5.0-MI"),
    "katclient": ("bench.katclient_server", "5.1-BIMT", "5.0-IM"),
}


def sync(plan: Plan, log: Log) -> list[Metric]:
    """Time and client CPU from connect to synced with values, per server, bulk or not, size."""
    metrics: list[Metric] = []
    for server_lib, (module, bulk_proto, single_proto) in SYNC_SERVERS.items():
        for bulk, proto in ((True, bulk_proto), (False, single_proto)):
            for n in plan.sync_sizes:
                label = f"sync {n} ({server_lib} server, {'bulk' if bulk else 'no bulk'})"
                wall = Metric(label, "s")
                cpu = Metric(label + ": client CPU", "s", SYNC_CPU_TARGET if n >= 10_000 else None)
                with ServerProcess(module, ["--sensors", str(n), "--protocol", proto]) as srv:
                    for i in range(plan.repeats):
                        for client in _order(i):
                            r = _worker({"task": "sync", "client": client, "host": srv.host,
                                         "port": srv.port, "n": n})
                            wall.add(client, r["wall"])
                            cpu.add(client, r["cpu"])
                            log(f"{label} {client}: {r['wall']:.3f} s, CPU {r['cpu']:.3f} s")
                metrics += [wall, cpu]
    return metrics


def requests(plan: Plan, log: Log) -> list[Metric]:
    """Sequential and in-flight ``?watchdog`` rates against the blaster."""
    seq = Metric("?watchdog sequential", "requests/s", SEQUENTIAL_TARGET)
    seq_cpu = Metric("?watchdog sequential: client CPU", "us/request")
    par = Metric(f"?watchdog {plan.inflight} in flight", "requests/s", INFLIGHT_TARGET)
    par_cpu = Metric(f"?watchdog {plan.inflight} in flight: client CPU", "us/request")
    with ServerProcess("bench.blaster", ["--sensors", "10"]) as srv:
        for i in range(plan.repeats):
            for client in _order(i):
                for metric, cpu_metric, count, inflight in (
                    (seq, seq_cpu, plan.sequential, 1),
                    (par, par_cpu, plan.inflight_requests, plan.inflight),
                ):
                    r = _worker({"task": "requests", "client": client, "host": srv.host, "port": srv.port,
                                 "n": 10, "count": count, "inflight": inflight})
                    metric.add(client, r["requests"] / r["wall"])
                    cpu_metric.add(client, r["cpu"] / r["requests"] * 1e6)
                    log(f"requests x{inflight} {client}: {r['requests'] / r['wall']:.0f}/s")
    return [seq, seq_cpu, par, par_cpu]


def memory(plan: Plan, log: Log) -> list[Metric]:
    """RSS growth per mirrored sensor, each client in a fresh process."""
    n = plan.memory_sensors
    per = Metric(f"memory per mirrored sensor ({n} sensors)", "bytes", MEMORY_TARGET)
    with ServerProcess("bench.blaster", ["--sensors", str(n)]) as srv:
        for i in range(plan.repeats):
            for client in _order(i):
                r = _worker({"task": "memory", "client": client, "host": srv.host, "port": srv.port, "n": n})
                per.add(client, r["bytes_per_sensor"])
                log(f"memory {client}: {r['bytes_per_sensor']:.0f} bytes/sensor")
    return [per]


def server(plan: Plan, log: Log) -> list[Metric]:
    """Updates/s each library's server writes to a raw reader, and its ``?sensor-list`` time."""
    n, rounds = plan.server_sensors, plan.server_rounds
    rate = Metric(f"server writes ({n} sensors x {rounds} rounds)", "updates/s", SERVER_RATE_TARGET)
    cpu = Metric("server CPU", "us/update")
    listing = Metric(f"server ?sensor-list ({n} sensors)", "s", SERVER_LIST_TARGET)
    servers = {
        lib: ServerProcess(module, ["--sensors", str(n), "--protocol", bulk_proto])
        for lib, (module, bulk_proto, _) in SYNC_SERVERS.items()
    }
    try:
        for srv in servers.values():
            srv.start()
        for i in range(plan.repeats):
            for lib in _order(i):
                srv = servers[lib]
                r = run_module("bench.reader", {"host": srv.host, "port": srv.port, "n": n, "rounds": rounds})
                rate.add(lib, r["updates"] / r["wall"])
                cpu.add(lib, r["server_cpu"] / r["server_updates"] * 1e6)
                listing.add(lib, r["list_wall"])
                log(f"server {lib}: {r['updates'] / r['wall']:.0f} updates/s, ?sensor-list {r['list_wall']:.3f} s")
    finally:
        for srv in servers.values():
            srv.stop()
    return [rate, cpu, listing]


WORKLOADS: dict[str, Callable[[Plan, Log], list[Metric]]] = {
    "ingest": ingest,
    "sync": sync,
    "requests": requests,
    "memory": memory,
    "server": server,
}
