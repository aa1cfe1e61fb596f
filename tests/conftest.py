"""Shared test configuration."""

import os
import subprocess
from pathlib import Path

import pytest

PEERS = Path(__file__).resolve().parent / "peers"


@pytest.fixture(scope="session")
def scrutiny_peer_python() -> str:
    """Python of a venv with the real Scrutiny server and SDK (scrutinydebugger 0.16.0).

    ``SCRUTINY_SDK_PYTHON`` names one explicitly; otherwise ``tests/peers/scrutiny_server.sh
    install`` creates it under ``~/.cache/katclient-peers`` on first use (from PyPI).
    """
    explicit = os.environ.get("SCRUTINY_SDK_PYTHON")
    if explicit:
        return explicit
    out = subprocess.run(
        ["bash", str(PEERS / "scrutiny_server.sh"), "install"], capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise RuntimeError(f"could not install the Scrutiny peer: {out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]
