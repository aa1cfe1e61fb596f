"""Subprocesses of the benchmarks: servers that announce ``listening on HOST:PORT``, and
one-shot workers that print a JSON result on their last line.

Every child runs ``sys.executable -m MODULE`` from the repository root (so ``bench``,
``katclient`` and ``fake_servers`` import without installing), with bounded waits: a
child that does not become ready, or does not finish, in time is killed and reported.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

__all__ = ["ROOT", "BenchError", "ServerProcess", "run_module"]

#: The repository root: the directory that holds ``bench/``.
ROOT: Final = Path(__file__).resolve().parent.parent
#: Seconds a server may take to print its ready line (10,000 aiokatcp sensors take ~1 s).
READY_TIMEOUT: Final = 60.0
#: Seconds a stopping server may take before it is killed.
STOP_TIMEOUT: Final = 10.0
#: Default seconds one worker may run.
WORKER_TIMEOUT: Final = 300.0

_READY_RE: Final = re.compile(r"listening on (\S+):(\d+)")


class BenchError(RuntimeError):
    """A benchmark child failed (did not start, crashed, or broke a check)."""


#: Environment variable: a directory holding a patched ``katclient/`` (e.g. a scratch copy)
#: that the client workers import instead of the repository's, to A/B a change
#: (``BENCH_KATCLIENT_PATH=/tmp/proto python -m bench sync``).  Servers are not affected.
OVERRIDE_ENV: Final = "BENCH_KATCLIENT_PATH"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return env


class ServerProcess:
    """A benchmark server in its own process; a context manager.

    :param module: module to run with ``python -m``.
    :param args: its command-line arguments.
    :param python_args: interpreter options before ``-m`` (e.g. ``-m cProfile -o F``).
    :ivar host: the bound host (after start).
    :ivar port: the bound port (after start).
    :ivar pid: the child's process id.
    :raises BenchError: when it exits or stays silent for :data:`READY_TIMEOUT` seconds.
    """

    def __init__(self, module: str, args: list[str], python_args: list[str] | None = None) -> None:
        self.module = module
        self.cmd = [sys.executable, *(python_args or ["-m"]), module, *args]
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = ""
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, cwd=ROOT, env=_env())
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + READY_TIMEOUT
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise BenchError(f"{self.module} not ready after {READY_TIMEOUT:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.stop()
                    raise BenchError(f"{self.module} exited before it was ready: {' '.join(self.cmd)}")
                buf += chunk
        m = _READY_RE.search(buf.decode(errors="replace"))
        if m is None:
            self.stop()
            raise BenchError(f"{self.module}: unexpected first line {buf!r}")
        self.host, self.port = m.group(1), int(m.group(2))
        return self

    def stop(self) -> None:
        """SIGTERM, wait up to :data:`STOP_TIMEOUT` seconds, then SIGKILL.  Idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        self.proc = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_module(module: str, spec: dict[str, Any], timeout: float = WORKER_TIMEOUT) -> dict[str, Any]:
    """Run ``python -m module SPEC_JSON`` and return the JSON object it printed last.

    :raises BenchError: on a non-zero exit, a timeout or no JSON output.
    """
    cmd = [sys.executable, "-m", module, json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, cwd=ROOT, env=_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{module} {spec} did not finish in {timeout:g} s") from None
    out = done.stdout.decode(errors="replace").strip().splitlines()
    if done.returncode != 0 or not out:
        err = done.stderr.decode(errors="replace").strip()
        raise BenchError(f"{module} {spec} failed (exit {done.returncode}):\n{err[-3000:]}")
    result: dict[str, Any] = json.loads(out[-1])
    return result
