"""A minimal, fast KATCP device on plain asyncio: the update source of the ingest benchmark.

It is not katclient's server nor aiokatcp's, so neither client is favoured, and it does
almost no work per update (it writes prebuilt bytes), so the client under test is the
bottleneck.  It speaks just enough KATCP v5 (protocols/katcp.md 1.1-1.8) for both
inspecting clients to sync:

``#version-connect``             on connect (``katcp-protocol`` from ``--protocol``)
``?help``                        a few ``#help`` informs
``?sensor-list [NAME]``          float sensors ``sensor.NNNNN`` (description with spaces, units ``V``)
``?sensor-sampling NAMES STRAT`` any strategy is accepted and treated as ``auto``: the current
                                 reading is sent at once; ``NAMES`` may be comma-separated
                                 when the protocol has flag ``B``
``?sensor-value [NAME]``         the current readings
``?watchdog``                    ``!watchdog ok``
``?bench-prepare ROUNDS``        build (and cache) the buffer for ``?bench-blast ROUNDS``
``?bench-blast ROUNDS``          write ROUNDS x N ``#sensor-status`` lines (every sensor once per
                                 round, round r carrying value ``r + 0.5``), then reply
                                 ``ok <updates>``; since the reply comes after every update on
                                 the same stream, a client that got the reply has read them all
``?halt``                        replies and exits

Run ``python -m bench.blaster --sensors N [--protocol 5.1-MIB]``; it prints ``listening on
HOST:PORT`` and serves until SIGINT/SIGTERM or ``?halt``.  Readings are only *sent* by
``?bench-blast``: the blaster's stored reading of each sensor never changes, so every
client syncs to the same values.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Final

__all__ = ["Blaster", "sensor_name", "blast_value", "main"]

#: Longest request line accepted (a bulk ``?sensor-sampling`` of 100k names is ~1.3 MB).
MAX_LINE: Final = 4 * 1024 * 1024
#: Largest prebuilt ``?bench-blast`` buffer (bytes, estimated at 48 per line): bounds memory.
MAX_BUFFER_BYTES: Final = 256 * 1024 * 1024
#: Base timestamp of the blasted readings (seconds); round r adds r milliseconds.
BASE_TIMESTAMP: Final = 1_700_000_000.0


def sensor_name(i: int) -> str:
    """Name of the ``i``-th sensor, e.g. ``sensor.00042``."""
    return f"sensor.{i:05d}"


def initial_value(i: int) -> float:
    """The (never changing) stored reading of sensor ``i``."""
    return i * 0.5


def blast_value(round_index: int) -> float:
    """Value every sensor carries in round ``round_index`` of a blast."""
    return round_index + 0.5


def _escape(text: str) -> bytes:
    return (
        text.encode()
        .replace(b"\\", b"\\\\")
        .replace(b" ", b"\\_")
        .replace(b"\n", b"\\n")
        .replace(b"\t", b"\\t")
        or b"\\@"
    )


class Blaster:
    """The device model and its cached wire data.

    :param sensors: number of float sensors.
    :param protocol: the advertised ``katcp-protocol`` (``5.1-MIB`` with bulk sampling,
        ``5.0-MI`` without).
    """

    def __init__(self, sensors: int, protocol: str = "5.1-MIB") -> None:
        self.n = sensors
        self.protocol = protocol
        self.bulk = "B" in protocol.partition("-")[2]
        self.names = [sensor_name(i).encode() for i in range(sensors)]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.list_tails = [
            b"%s %s V float\n" % (name, _escape(f"Test float sensor number {i}"))
            for i, name in enumerate(self.names)
        ]
        self.initial_ts = b"%.6f" % (BASE_TIMESTAMP - 1.0)
        self.value_tails = [
            b"%s 1 %s nominal %r\n" % (self.initial_ts, name, initial_value(i)) for i, name in enumerate(self.names)
        ]
        self._blasts: dict[int, bytes] = {}
        self.halted = asyncio.Event()

    def blast_buffer(self, rounds: int) -> bytes:
        """The ``#sensor-status`` lines of ``rounds`` rounds (cached)."""
        buf = self._blasts.get(rounds)
        if buf is None:
            parts = []
            for r in range(rounds):
                prefix = b"#sensor-status %.6f 1 " % (BASE_TIMESTAMP + r * 0.001)
                suffix = b" nominal %r\n" % blast_value(r)
                parts.append(prefix + (suffix + prefix).join(self.names) + suffix)
            buf = b"".join(parts)
            self._blasts.clear()  # keep only one size
            self._blasts[rounds] = buf
        return buf


class _Conn(asyncio.Protocol):
    def __init__(self, device: Blaster) -> None:
        self.device = device
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.transport.write(
            b"#version-connect katcp-protocol %s\n"
            b"#version-connect katcp-library bench-blaster-1.0 1.0\n"
            b"#version-connect katcp-device bench-blaster-1.0 bench-blaster-1.0\n" % self.device.protocol.encode()
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data
        lines = buf.split(b"\n")
        self.buffer = lines.pop()
        if len(self.buffer) > MAX_LINE:
            self._close()
            return
        for line in lines:
            line = line.rstrip(b"\r")
            if line.startswith(b"?"):
                self._request(line)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _request(self, line: bytes) -> None:
        assert self.transport is not None
        words = line[1:].split()
        if not words:
            return
        head, args = words[0], words[1:]
        name, _, mid = head.partition(b"[")
        tag = name + (b"[" + mid if mid else b"")  # "name" or "name[mid]"
        dev = self.device
        write = self.transport.write
        if name == b"watchdog":
            write(b"!%s ok\n" % tag)
        elif name == b"help":
            reqs = (b"help", b"watchdog", b"sensor-list", b"sensor-sampling", b"sensor-value", b"bench-blast")
            body = b"".join(b"#%s %s Benchmark\\_request.\n" % (tag, r) for r in reqs)
            write(body + b"!%s ok %d\n" % (tag, len(reqs)))
        elif name in (b"sensor-list", b"sensor-value"):
            tails = dev.list_tails if name == b"sensor-list" else dev.value_tails
            if args:
                i = dev.index.get(args[0])
                if i is None:
                    write(b"!%s fail Unknown\\_sensor.\n" % tag)
                    return
                chosen = [tails[i]]
            else:
                chosen = tails
            prefix = b"#%s " % tag
            write(prefix + prefix.join(chosen) + b"!%s ok %d\n" % (tag, len(chosen)))
        elif name == b"sensor-sampling":
            self._sampling(tag, args)
        elif name == b"bench-prepare":
            rounds = int(args[0])
            if rounds * dev.n * 48 > MAX_BUFFER_BYTES:
                write(b"!%s fail too\\_many\\_rounds\n" % tag)
                return
            write(b"!%s ok %d\n" % (tag, len(dev.blast_buffer(rounds))))
        elif name == b"bench-blast":
            rounds = int(args[0])
            if rounds * dev.n * 48 > MAX_BUFFER_BYTES:
                write(b"!%s fail too\\_many\\_rounds\n" % tag)
                return
            write(dev.blast_buffer(rounds))
            write(b"!%s ok %d\n" % (tag, rounds * dev.n))
        elif name == b"halt":
            write(b"!%s ok\n" % tag)
            dev.halted.set()
        else:
            write(b"!%s invalid Unknown\\_request.\n" % tag)

    def _sampling(self, tag: bytes, args: list[bytes]) -> None:
        assert self.transport is not None
        dev = self.device
        if not args:
            self.transport.write(b"!%s fail No\\_sensor\\_name.\n" % tag)
            return
        names = args[0].split(b",") if dev.bulk else [args[0]]
        idx = [dev.index.get(n) for n in names]
        if None in idx:
            self.transport.write(b"!%s fail Unknown\\_sensor\\_name.\n" % tag)
            return
        if len(args) == 1:
            self.transport.write(b"!%s ok %s auto\n" % (tag, args[0]))
            return
        if args[1] != b"none":
            tails = dev.value_tails
            body = b"#sensor-status " + b"#sensor-status ".join([tails[i] for i in idx])  # type: ignore[index]
            self.transport.write(body)
        self.transport.write(b"!%s ok %s\n" % (tag, b" ".join(args)))


async def serve(host: str, port: int, sensors: int, protocol: str) -> None:
    """Serve until halted or signalled; prints ``listening on HOST:PORT`` when ready."""
    device = Blaster(sensors, protocol)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Conn(device), host, port)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, device.halted.set)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    await device.halted.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Raw asyncio KATCP update blaster (benchmark server)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--sensors", type=int, default=1000)
    p.add_argument("--protocol", default="5.1-MIB", help="advertised protocol; 5.0-MI hides bulk sampling")
    args = p.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port, args.sensors, args.protocol))
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()


if __name__ == "__main__":
    main()
