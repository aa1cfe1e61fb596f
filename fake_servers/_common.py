"""Shared command-line plumbing for the fake servers (STYLE.md habit 11).

Every fake is run the same way: ``python -m fake_servers.NAME [--host H] [--port P]
[other options]``.  It prints exactly one line ``listening on HOST:PORT`` on stdout
(flushed) once it accepts connections, then serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

__all__ = ["base_parser", "announce", "serve_until_signalled"]


def base_parser(description: str, default_port: int = 0) -> argparse.ArgumentParser:
    """An argument parser with the options every fake shares.

    :param description: the fake's one-line description for ``--help``.
    :param default_port: port used when ``--port`` is not given (0 picks a free one).
    :returns: a parser with ``--host`` (default ``127.0.0.1``), ``--port`` and ``--log-level``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=default_port, help="TCP port; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--log-level", default="WARNING", help="Python logging level for the fake (default: %(default)s)"
    )
    return parser


def announce(host: str, port: int) -> None:
    """Print the ready line ``listening on HOST:PORT`` and flush stdout."""
    print(f"listening on {host}:{port}", flush=True)


def serve_until_signalled(
    start: Callable[[], Awaitable[tuple[str, int]]],
    stop: Callable[[], Awaitable[None]] | None = None,
    log_level: str = "WARNING",
) -> None:
    """Run a fake in a fresh event loop until SIGINT or SIGTERM.

    :param start: coroutine function that starts serving and returns the bound ``(host, port)``.
    :param stop: optional coroutine function called once a signal arrived.
    :param log_level: level name for :func:`logging.basicConfig`.
    """
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def main() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        host, port = await start()
        announce(host, port)
        await done.wait()
        if stop is not None:
            await stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # pragma: no cover - signal handler normally catches it
        pass
    sys.stdout.flush()
