"""``python -m bench ingest|sync|requests|memory|server|all [--quick] [--json]`` and
``python -m bench profile ...``.

Runs katclient and aiokatcp side by side on the same workloads and prints, per metric,
each library's median with its min-max over the repeats, the ratio katclient/aiokatcp
and the target on that ratio (DESIGN.md section 5, issue 8).  Progress goes to stderr.
With ``--json`` the result document goes to stdout and the table to stderr.

Exit status: 0 when every measurement ran (targets missed or not), 1 when a benchmark
process failed, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import sys
import tempfile
import time
from typing import Any

from bench.procs import BenchError, ServerProcess, run_module
from bench.stats import Metric, format_table
from bench.workloads import PLANS, SYNC_SERVERS, WORKLOADS

__all__ = ["main"]

ORDER = ("ingest", "sync", "requests", "memory", "server")


def _versions() -> dict[str, Any]:
    import tornado
    from aiokatcp._version import __version__ as aiokatcp_version

    import katclient

    return {
        "python": platform.python_version(),
        "katclient": katclient.__version__,
        "aiokatcp": aiokatcp_version,
        "tornado": tornado.version,
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _log(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    plan_name = "tiny" if args.tiny else "quick" if args.quick else "full"
    plan = PLANS[plan_name]
    if args.repeats:
        plan = type(plan)(**{**plan.__dict__, "repeats": args.repeats})
    names = ORDER if args.workload == "all" else (args.workload,)
    env = _versions()
    command = " ".join(["python -m bench", *sys.argv[1:]]) if sys.argv[0].endswith("__main__.py") else None
    started = time.perf_counter()
    metrics: list[Metric] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name == "memory":
            try:
                import psutil  # noqa: F401
            except ImportError:
                skipped[name] = "psutil is not installed (pip install .[bench])"
                print(f"[memory] skipped: {skipped[name]}", file=sys.stderr, flush=True)
                continue
        print(f"[{name}] ({plan_name}, {plan.repeats} repeats)", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            metrics += WORKLOADS[name](plan, _log)
        except BenchError as exc:
            print(f"[{name}] FAILED: {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"[{name}] done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    table = format_table(metrics)
    head = (
        f"katclient {env['katclient']} vs aiokatcp {env['aiokatcp']} (Python {env['python']}, "
        f"tornado {env['tornado']}, {env['cpus']} CPUs, load {env['loadavg_at_start']:.2f} at start); "
        f"plan {plan_name}, {plan.repeats} repeats, {elapsed:.0f} s"
    )
    if args.json:
        print(head + "\n\n" + table, file=sys.stderr)
        doc = {"plan": plan_name, "plan_sizes": plan.__dict__, "environment": env, "command": command,
               "elapsed_s": elapsed, "skipped": skipped, "metrics": [m.as_dict() for m in metrics]}
        print(json.dumps(doc, indent=1))
    else:
        print(head + "\n\n" + table)
        missed = [m.name for m in metrics if m.met is False]
        if missed:
            print(f"\ntargets not met: {'; '.join(missed)}")
    return 0


def _print_profile(path: str, top: int, sort: str) -> None:
    stats = pstats.Stats(path, stream=sys.stdout)
    stats.strip_dirs().sort_stats(sort).print_stats(top)


def _profile(args: argparse.Namespace) -> int:
    """Profile one side: a client trial (cProfile of the timed section) or a server."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "profile.out")
        n = args.sensors
        try:
            if args.task == "server":
                module, proto, _ = SYNC_SERVERS[args.client]
                srv = ServerProcess(module, ["--sensors", str(n), "--protocol", proto],
                                    python_args=["-m", "cProfile", "-o", path, "-m"])
                with srv:
                    r = run_module("bench.reader", {"host": srv.host, "port": srv.port, "n": n,
                                                    "rounds": args.rounds})
            else:
                server_module, server_args = "bench.blaster", ["--sensors", str(n)]
                if args.task == "sync" and args.server != "blaster":
                    server_module, proto, single = SYNC_SERVERS[args.server]
                    server_args += ["--protocol", single if args.no_bulk else proto]
                with ServerProcess(server_module, server_args) as srv:
                    spec = {"task": args.task, "client": args.client, "host": srv.host, "port": srv.port,
                            "n": n, "rounds": args.rounds, "count": args.count, "inflight": args.inflight,
                            "profile": path, "profile_timer": args.timer}
                    r = run_module("bench.worker", spec)
        except BenchError as exc:
            print(f"profile failed: {exc}", file=sys.stderr)
            return 1
        print(f"{args.client} {args.task}: {json.dumps(r)}")
        _print_profile(path, args.top, args.sort)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="workload", required=True)
    for name in (*ORDER, "all"):
        p = sub.add_parser(name, help=f"run the {name} benchmark" if name != "all" else "run every benchmark")
        p.add_argument("--quick", action="store_true", help="smaller sizes, 3 repeats (under two minutes)")
        p.add_argument("--tiny", action="store_true", help="smallest sizes, 1 repeat (smoke test)")
        p.add_argument("--repeats", type=int, default=0, help="override the plan's repeats")
        p.add_argument("--json", action="store_true", help="print a JSON document (table goes to stderr)")
    p = sub.add_parser("profile", help="cProfile one side of one workload and print the top entries")
    p.add_argument("task", choices=("ingest", "sync", "requests", "memory", "server"))
    p.add_argument("--client", choices=("katclient", "aiokatcp"), default="katclient",
                   help="library to profile (for 'server', the server's library)")
    p.add_argument("--server", choices=("blaster", "aiokatcp", "katclient"), default="blaster",
                   help="server for 'sync' (default: the blaster)")
    p.add_argument("--no-bulk", action="store_true", help="for 'sync': server without bulk sampling")
    p.add_argument("--sensors", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--inflight", type=int, default=1)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--sort", default="tottime", help="pstats sort key (tottime, cumulative...)")
    p.add_argument("--timer", choices=("cpu", "wall"), default="cpu",
                   help="client profiles: attribute CPU time (default) or wall time")
    args = parser.parse_args(argv)
    if args.workload == "profile":
        return _profile(args)
    return _run(args)
