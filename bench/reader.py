"""The reading client of the server benchmark: a raw blocking socket that counts lines.

``python -m bench.reader SPEC_JSON`` (SPEC: ``host``, ``port``, ``n``, ``rounds``) connects
to a benchmark server (:mod:`bench.katclient_server` or :mod:`bench.aiokatcp_server`),
then, timing each step from the request sent to the reply read:

1. ``?sensor-list`` of all N sensors (the informs are counted, not parsed);
2. subscribes every sensor with one bulk ``?sensor-sampling a,b,... auto``;
3. ``?bench-updates 1`` (warm-up), then ``?bench-updates ROUNDS``, counting the
   ``#sensor-status`` lines that arrive before the reply.

It does no per-line Python work (``bytes.count`` over whole chunks), so it reads far
faster than either server writes.  It prints one JSON object: the counts, the wall
times and the server's own ``?bench-updates`` report (updates, wall and CPU seconds).
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any, Final

__all__ = ["LineCounter", "run", "main"]

#: Bytes per ``recv``.
RECV_SIZE: Final = 1024 * 1024
#: Seconds any single step may take (socket timeout).
STEP_TIMEOUT: Final = 120.0


class LineCounter:
    """Reads whole lines from a socket, counting those that start with a prefix."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rest = b""

    def until(self, reply_prefix: bytes, count_prefix: bytes) -> tuple[int, bytes]:
        """Read until a line starting with ``reply_prefix``.

        :returns: how many lines before it started with ``count_prefix``, and the reply line.
        :raises ConnectionError: when the server closes the connection first.
        """
        count = 0
        marker = b"\n" + reply_prefix
        counted = b"\n" + count_prefix
        data = self.rest
        self.rest = b""
        while True:
            end = data.rfind(b"\n") + 1
            complete, tail = b"\n" + data[:end], data[end:]  # leading \n: line 0 matches too
            pos = complete.find(marker)
            if pos >= 0:
                count += complete.count(counted, 0, pos + 1)
                line_end = complete.index(b"\n", pos + 1)
                self.rest = complete[line_end + 1 :] + tail
                return count, complete[pos + 1 : line_end]
            count += complete.count(counted)
            chunk = self.sock.recv(RECV_SIZE)
            if not chunk:
                raise ConnectionError("server closed the connection")
            data = tail + chunk


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """One reader session against the server in ``spec``; returns the measurements."""
    n, rounds = spec["n"], spec["rounds"]
    with socket.create_connection((spec["host"], spec["port"]), timeout=STEP_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = LineCounter(sock)
        reader.until(b"#version-connect katcp-device", b"")

        t0 = time.perf_counter()
        sock.sendall(b"?sensor-list[1]\n")
        listed, _ = reader.until(b"!sensor-list[1] ", b"#sensor-list[1] ")
        list_wall = time.perf_counter() - t0
        if listed != n:
            raise RuntimeError(f"?sensor-list gave {listed} sensors, expected {n}")

        names = b",".join(b"sensor.%05d" % i for i in range(n))
        sock.sendall(b"?sensor-sampling[2] %s auto\n" % names)
        initial, reply = reader.until(b"!sensor-sampling[2] ", b"#sensor-status ")
        if not reply.startswith(b"!sensor-sampling[2] ok") or initial != n:
            raise RuntimeError(f"subscription failed: {reply[:200]!r}, {initial} initial readings")

        sock.sendall(b"?bench-updates[3] 1\n")
        reader.until(b"!bench-updates[3] ", b"")

        t0 = time.perf_counter()
        sock.sendall(b"?bench-updates[4] %d\n" % rounds)
        updates, reply = reader.until(b"!bench-updates[4] ", b"#sensor-status ")
        wall = time.perf_counter() - t0
        fields = reply.split()
        if len(fields) < 5 or fields[1] != b"ok":
            raise RuntimeError(f"?bench-updates failed: {reply!r}")
        if updates != rounds * n:
            raise RuntimeError(f"read {updates} updates, expected {rounds * n}")
        return {
            "list_wall": list_wall,
            "updates": updates,
            "wall": wall,
            "server_updates": int(fields[2]),
            "server_wall": float(fields[3]),
            "server_cpu": float(fields[4]),
        }


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    print(json.dumps(run(json.loads(args[0]))), flush=True)


if __name__ == "__main__":
    main()
