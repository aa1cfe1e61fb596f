"""The Done-when of the console facade, end to end in fresh interpreters.

A device runs as its own process and prints ``listening on HOST:PORT``: aiokatcp's
(``python -m tests.test_blocking_support --port 0``) and katclient's own fake
(``python -m fake_servers.katcp_device --port 0``).  A plain ``python -c`` script connects to it,
waits for a sensor to reach a value, runs a request, reads events and exits with no
thread left; the same again with an asyncio loop running in the calling thread, and
inside IPython (a top-level ``await`` cell, as in a Jupyter kernel).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
WAIT = 60.0  # seconds for a child process (interpreter start-up included)

# What every script does: connect, wait for a sensor value, run requests, read events,
# disconnect, and check that no katclient thread is left.  One body per device.
AIOKATCP_BODY = """
target = os.environ["KATCLIENT_TARGET"]
client = BlockingClient("script", timeout=20.0, enabled_events=Events.LISTEN_CONNECTED | Events.LISTEN_SYNCED)
with client.connect(target):
    reading = client.sensors["ticks"].wait(lambda r: r.value >= 3, timeout=20.0)
    client.requests["set-counter"](40)
    reply, _ = client.requests["bump"](2)
    assert reply.arguments == (b"ok", b"42"), reply
    assert client.sensors["counter"].wait(42, timeout=20.0).value == 42
    events = [client.read_event(timeout=20.0) for _ in range(2)]
    assert [type(e).__name__ for e in events] == ["ConnectedEvent", "SyncedEvent"], events
    assert client.get_status().synced
left = [t.name for t in threading.enumerate() if t.name.startswith("katclient")]
assert not left, left
print("RESULT ok", reading.value >= 3)
"""

# katclient's own fake device (fake_servers.katcp_device): sensor.00000 counts up with
# every update; ?slow-echo carries a timeout hint; ?fail-always fails.
FAKE_DEVICE_BODY = """
from katclient.errors import OperationFailure
target = os.environ["KATCLIENT_TARGET"]
flags = Events.LISTEN_CONNECTED | Events.LISTEN_SYNCED | Events.LISTEN_REQUEST_COMPLETED
client = BlockingClient("script", timeout=20.0, enabled_events=flags)
with client.connect(target):
    reading = client.sensors["sensor.00000"].wait(lambda r: r.value >= 3, timeout=20.0)
    slow = client.requests["slow-echo"]
    assert slow.timeout_hint and slow.timeout_hint > 20.0, slow
    pending = slow.call_async(0.05, "hello")
    reply, _ = pending.wait_for_completion(20.0)
    assert reply.arguments == (b"ok", b"hello") and pending.is_success, reply
    try:
        client.requests["fail-always"]()
    except OperationFailure as exc:
        assert exc.reason, exc
    else:
        raise AssertionError("?fail-always did not fail")
    events = [client.read_event(timeout=20.0) for _ in range(3)]
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["ConnectedEvent", "SyncedEvent", "RequestCompletedEvent"], events
left = [t.name for t in threading.enumerate() if t.name.startswith("katclient")]
assert not left, left
print("RESULT ok", reading.value >= 3)
"""

HEADER = """
import asyncio, os, threading
from katclient.client.blocking import BlockingClient, Events
"""


def plain(body: str) -> str:
    return HEADER + body + """
others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
assert not others, others
"""


def in_running_loop(body: str) -> str:
    return HEADER + """
async def main():
    assert asyncio.get_running_loop().is_running()
""" + textwrap.indent(body, "    ") + """
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    assert not others, others

asyncio.run(main())
"""


# IPython runs a cell with a top-level ``await`` as a coroutine on its own asyncio runner.
IPYTHON_CELL = HEADER + "await asyncio.sleep(0)\nassert asyncio.get_running_loop().is_running()\n" + AIOKATCP_BODY

DEVICES = {
    "aiokatcp": ([sys.executable, "-m", "tests.test_blocking_support", "--port", "0", "--tick", "0.02"], AIOKATCP_BODY),
    "katclient": (
        [sys.executable, "-m", "fake_servers.katcp_device", "--port", "0", "--sensors", "8", "--update-rate", "20"],
        FAKE_DEVICE_BODY,
    ),
}


def start_device(command: list[str]) -> Iterator[str]:
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on "), (line, proc.stderr.read() if proc.poll() is not None else "")
        yield line.split()[-1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(WAIT)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
    assert proc.returncode == 0


@pytest.fixture(scope="module", params=sorted(DEVICES))
def device(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """``(HOST:PORT, script body)`` of a device process."""
    command, body = DEVICES[request.param]
    for target in start_device(command):
        yield target, body


@pytest.fixture(scope="module")
def aiokatcp_target() -> Iterator[str]:
    yield from start_device(DEVICES["aiokatcp"][0])


def run(args: list[str], target: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KATCLIENT_TARGET=target, IPYTHONDIR=str(tmp_path / "ipython"))
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=WAIT)


@pytest.mark.parametrize("wrap", [plain, in_running_loop], ids=["plain", "running-loop"])
def test_script_connects_waits_requests_reads_events_and_exits_clean(
    device: tuple[str, str], tmp_path: Path, wrap: Any
) -> None:
    target, body = device
    result = run([sys.executable, "-X", "dev", "-W", "error", "-c", wrap(body)], f"katcp://{target}", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "RESULT ok True" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(importlib.util.find_spec("IPython") is None, reason="IPython is not installed")
def test_ipython_top_level_await_cell(aiokatcp_target: str, tmp_path: Path) -> None:
    result = run(
        [sys.executable, "-m", "IPython", "--quick", "--no-banner", "--colors=NoColor", "-c", IPYTHON_CELL],
        aiokatcp_target,
        tmp_path,
    )
    assert "RESULT ok True" in result.stdout, result.stdout + result.stderr
