"""The ``katclient`` command line: a thin layer over the public API (STYLE.md habit 15).

Commands::

    katclient inspect [TARGET] [--timeout S] [--json] [--watch SECONDS]
    katclient request TARGET NAME [ARG...] [--timeout S]
    katclient demo [--sensors N] [--json] [--watch SECONDS]
    katclient bridge TARGET [--listen HOST:PORT]

TARGET is ``HOST:PORT`` or ``katcp://HOST:PORT`` for a KATCP device, or
``scrutiny://``, ``opticon://``, ``scan://`` for a virtual device run in-process
(:mod:`katclient.targets`).  ``inspect`` with no TARGET, and ``demo``, start the fake
KATCP device in-process and inspect it.

Exit codes: 0 success; 1 the device answered ``fail``/``invalid``; 2 connection,
sync or timeout errors and bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import json
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, TextIO

from katclient.client.connection import Connection
from katclient.client.inspecting import InspectingClientAsync
from katclient.protocol import (
    Address,
    KatclientError,
    Reading,
    format_message,
)
from katclient.targets import create_virtual_device, open_target, split_target

__all__ = ["main", "inspect_json", "format_tables"]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_ERROR = 2


class CliError(Exception):
    """A failure the CLI reports in one line with exit code 2."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, enum.Enum):  # before int: Lru and Status are IntEnums
        return value.name.lower()
    if isinstance(value, bool) or value is None or isinstance(value, (int, float, str)):
        return value
    if isinstance(value, Address):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def inspect_json(client: InspectingClientAsync) -> dict[str, Any]:
    """The ``--json`` document of ``katclient inspect`` for a synced client.

    Shape: ``{"state", "protocol", "requests": [{"name", "description", "timeout_hint"}],
    "sensors": [{"name", "type", "units", "description", "params", "status", "value",
    "timestamp"}]}`` with timestamps in seconds.
    """
    requests = [
        {"name": r.name, "description": r.description, "timeout_hint": r.timeout_hint}
        for _, r in sorted(client.requests.items())
    ]
    sensors = []
    for name, s in sorted(client.sensors.items()):
        ts, status, value = s.reading
        sensors.append(
            {
                "name": name,
                "type": s.type.name,
                "units": s.units,
                "description": s.description,
                "params": [_jsonable(p) for p in s.params],
                "status": status.name.lower(),
                "value": _jsonable(value),
                "timestamp": ts,
            }
        )
    return {
        "state": "synced" if client.synced else str(client.state),
        "protocol": str(client.protocol_flags) if client.protocol_flags else None,
        "requests": requests,
        "sensors": sensors,
    }


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers).rstrip(), fmt.format(*("-" * w for w in widths)).rstrip()]
    out.extend(fmt.format(*row).rstrip() for row in rows)
    return out


def _value_text(value: Any) -> str:
    v = _jsonable(value)
    return v if isinstance(v, str) else json.dumps(v)


def format_tables(client: InspectingClientAsync) -> str:
    """Aligned tables of the requests and sensors of a synced client."""
    req_rows = [
        (
            r.name,
            "" if r.timeout_hint is None else f"{r.timeout_hint:g}",
            (r.description.splitlines() or [""])[0],
        )
        for _, r in sorted(client.requests.items())
    ]
    sensor_rows = [
        (name, s.type.name, s.units, s.status.name.lower(), _value_text(s.value))
        for name, s in sorted(client.sensors.items())
    ]
    lines = [f"# {client.host}:{client.port} protocol {client.protocol_flags}", ""]
    lines.append(f"Requests ({len(req_rows)})")
    lines += _table(req_rows, ("name", "timeout", "help"))
    lines += ["", f"Sensors ({len(sensor_rows)})"]
    lines += _table(sensor_rows, ("name", "type", "units", "status", "value"))
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def _demo_device(sensors: int) -> AsyncIterator[tuple[str, int]]:
    # The CLI is an entry point: it may use fake_servers (DESIGN.md section 2).
    from fake_servers.katcp_device import FakeKatcpDevice

    device = FakeKatcpDevice(host="127.0.0.1", port=0, sensors=sensors, requests=5, update_rate=2.0)
    await device.start()
    try:
        yield device.address
    finally:
        await device.stop()


async def _inspect(address: tuple[str, int], timeout: float, as_json: bool, watch: float | None, out: TextIO) -> int:
    client = InspectingClientAsync(address[0], address[1], auto_reconnect=False)
    await client.connect()
    try:
        try:
            await client.until_synced(timeout=timeout)
        except KatclientError as exc:
            reason = client.last_error or exc
            raise CliError(f"could not connect to and sync with {address[0]}:{address[1]}: {reason}") from exc
        if as_json:
            json.dump(inspect_json(client), out, indent=None if watch else 1)
            out.write("\n")
        else:
            out.write(format_tables(client) + "\n")
        out.flush()
        if watch:
            await _watch(client, watch, as_json, out)
        return EXIT_OK
    finally:
        await client.aclose()


async def _watch(client: InspectingClientAsync, seconds: float, as_json: bool, out: TextIO) -> None:
    def observer(sensor: Any, reading: Reading) -> None:
        ts, status, value = reading
        if as_json:
            doc = {"name": sensor.name, "timestamp": ts, "status": status.name.lower(), "value": _jsonable(value)}
            out.write(json.dumps(doc) + "\n")
        else:
            out.write(f"{ts:.6f} {sensor.name} {status.name.lower()} {_value_text(value)}\n")

    for sensor in client.sensors.values():
        sensor.attach(observer)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and client.running:
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            out.flush()
    finally:
        for sensor in client.sensors.values():
            sensor.detach(observer)


async def _request(
    address: tuple[str, int], name: str, args: Sequence[str], timeout: float | None, out: TextIO
) -> int:
    from tornado.tcpclient import TCPClient

    try:
        stream = await TCPClient().connect(address[0], address[1], timeout=10.0)
    except Exception as exc:
        raise CliError(f"could not connect to {address[0]}:{address[1]}: {exc}") from exc
    closed = asyncio.Event()
    conn = Connection(stream, lambda msg: None, lambda exc: closed.set(), address=address)
    try:
        try:
            await asyncio.wait_for(conn.protocol_known.wait(), InspectingClientAsync.negotiation_timeout)
        except asyncio.TimeoutError:
            from katclient.protocol import V4

            conn.assume_protocol(V4)
        if timeout is None:
            timeout = await _timeout_hint(conn, name)
        try:
            reply, informs = await conn.request(name, *args, timeout=timeout)
        except KatclientError as exc:
            raise CliError(str(exc)) from exc
        for msg in [*informs, reply]:
            out.write(format_message(msg).decode("utf-8", "backslashreplace"))
        out.flush()
        return EXIT_OK if reply.reply_ok() else EXIT_FAIL
    finally:
        conn.close()


async def _timeout_hint(conn: Connection, name: str) -> float:
    default = 5.0
    if conn.protocol is None or not conn.protocol.request_timeout_hints:
        return default
    try:
        reply, informs = await conn.request("request-timeout-hint", name, timeout=default)
    except KatclientError:
        return default
    for inform in informs:
        args = inform.arguments
        if len(args) >= 2:
            try:
                hint = float(args[1])
            except ValueError:
                continue
            if hint > 0:
                return hint + 1.0
    return default


async def _bridge(target: str, listen: str, out: TextIO, options: dict[str, Any]) -> int:
    scheme, host, port = split_target(target)
    if scheme == "katcp":
        raise CliError("bridge serves a virtual device; a katcp:// target already speaks KATCP")
    lhost, _, lport = listen.rpartition(":")
    device = create_virtual_device(
        scheme, host, port, listen_host=lhost or "127.0.0.1", listen_port=int(lport or 0), **options
    )
    await device.start()
    bhost, bport = device.address
    out.write(f"listening on {bhost}:{bport}\n")
    out.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await device.stop()
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="katclient", description="KATCP inspecting client suite")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="connect, sync and print a device's requests and sensors")
    p.add_argument("target", nargs="?", help="HOST:PORT, katcp://, scrutiny://, opticon:// or scan:// (default: demo)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds to reach synced (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="then stream sensor updates for SECONDS")
    p.add_argument("--sensors", type=int, default=20, help="sensors of the embedded demo device")
    _option_argument(p)

    p = sub.add_parser("request", help="send one request and print the informs and the reply")
    p.add_argument("target")
    p.add_argument("name")
    p.add_argument("args", nargs="*")
    p.add_argument("--timeout", type=float, default=None, help="seconds (default: the device's hint, else 5)")
    _option_argument(p)

    p = sub.add_parser("demo", help="start the fake KATCP device in-process and inspect it")
    p.add_argument("--sensors", type=int, default=20)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", type=float, metavar="SECONDS")

    p = sub.add_parser("bridge", help="serve a virtual device over KATCP")
    p.add_argument("target")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (default: %(default)s)")
    p.add_argument("--enable-eval", action="store_true", help="PyOpticon: allow dashboard-eval/dashboard-exec")
    _option_argument(p)
    return parser


def _option_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a virtual device option, e.g. -o poll_period=0.2 or -o config=fields.json (repeatable)",
    )


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in getattr(args, "option", []):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"bad option {item!r}: expected KEY=VALUE")
        options[key.strip().replace("-", "_")] = value
    return options


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    if args.command in ("inspect", "demo"):
        target = getattr(args, "target", None)
        ctx = _demo_device(args.sensors) if target is None else open_target(target, **_options(args))
        async with ctx as address:
            return await _inspect(address, args.timeout, args.json, args.watch, out)
    if args.command == "request":
        async with open_target(args.target, **_options(args)) as address:
            return await _request(address, args.name, args.args, args.timeout, out)
    if args.command == "bridge":
        options = _options(args)
        if args.enable_eval:
            options["enable_eval"] = True
        return await _bridge(args.target, args.listen, out, options)
    raise CliError(f"unknown command {args.command}")  # pragma: no cover - argparse prevents it


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 fail/invalid reply, 2 errors)."""
    args = _parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stream = out or sys.stdout
    try:
        return asyncio.run(_run(args, stream))
    except (CliError, KatclientError) as exc:
        print(f"katclient: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


