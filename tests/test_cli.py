"""The katclient CLI against the fake device (v5 and v4) and aiokatcp's server, as a user runs it."""

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AIOKATCP_SERVER = Path(__file__).resolve().parent / "peers" / "aiokatcp_device.py"


@contextmanager
def running(*cmd: str) -> Iterator[str]:
    """Run a server subprocess and yield the ``HOST:PORT`` from its ``listening on`` line."""
    proc = subprocess.Popen([sys.executable, *cmd], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on " in line, line
        yield line.split("listening on ", 1)[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def katclient(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "katclient.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.fixture(scope="module")
def fake_10k() -> Iterator[str]:
    with running("-m", "fake_servers.katcp_device", "--port", "0", "--sensors", "10000", "--update-rate", "0.5") as a:
        yield a


def test_inspect_json_10000_sensors_all_with_real_values(fake_10k: str) -> None:
    result = katclient("inspect", fake_10k, "--json", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["state"] == "synced" and doc["protocol"] == "5.1-BIMT"
    assert len(doc["sensors"]) == 10000
    assert all(s["status"] != "unknown" and s["timestamp"] > 1e9 for s in doc["sensors"])
    assert {s["type"] for s in doc["sensors"]} == {
        "integer", "float", "boolean", "lru", "discrete", "timestamp", "address", "string"
    }
    slow = [r for r in doc["requests"] if r["name"] == "slow-echo"]
    assert slow and slow[0]["timeout_hint"] > 0
    assert set(doc["sensors"][0]) == {
        "name", "type", "units", "description", "params", "status", "value", "timestamp"
    }


def test_request_exit_codes(fake_10k: str) -> None:
    ok = katclient("request", fake_10k, "echo", "hello world", "2")
    assert ok.returncode == 0 and ok.stdout.strip().endswith("!echo[2] ok hello\\_world 2"), ok.stdout
    fail = katclient("request", f"katcp://{fake_10k}", "fail-always")
    assert fail.returncode == 1 and "fail" in fail.stdout
    invalid = katclient("request", fake_10k, "no-such-request")
    assert invalid.returncode == 1 and "invalid" in invalid.stdout
    timeout = katclient("request", fake_10k, "slow-echo", "5", "x", "--timeout", "0.2")
    assert timeout.returncode == 2 and "timed out" in timeout.stderr
    informs = katclient("request", fake_10k, "sensor-value", "sensor.00001")
    assert informs.returncode == 0 and informs.stdout.startswith("#sensor-value")


def test_unreachable_target_exits_2() -> None:
    result = katclient("inspect", "127.0.0.1:1", "--timeout", "1")
    assert result.returncode == 2 and "could not connect" in result.stderr
    result = katclient("request", "127.0.0.1:1", "watchdog")
    assert result.returncode == 2 and "could not connect" in result.stderr
    result = katclient("inspect", "bogus://x:1")
    assert result.returncode == 2 and "unknown target scheme" in result.stderr


def test_inspect_and_request_v4_fake_device() -> None:
    with running("-m", "fake_servers.katcp_device", "--port", "0", "--sensors", "16", "--protocol", "4.0") as a:
        result = katclient("inspect", a, "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["protocol"] == "4.0"
        ts = [s for s in doc["sensors"] if s["type"] == "timestamp"]
        assert ts and all(1e9 < s["timestamp"] < 1e10 for s in doc["sensors"])  # ms converted
        assert katclient("request", a, "watchdog").returncode == 0


def test_inspect_and_request_aiokatcp_server() -> None:
    with running(str(AIOKATCP_SERVER), "--port", "0", "--sensors", "50") as a:
        result = katclient("inspect", a, "--json")
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert len(doc["sensors"]) == 50 and all(s["status"] == "nominal" for s in doc["sensors"])
        table = katclient("inspect", a)
        assert table.returncode == 0 and "Sensors (50)" in table.stdout and "sensor.00049" in table.stdout
        assert katclient("request", a, "watchdog").stdout.strip() == "!watchdog[1] ok"


def test_demo_runs_on_a_fresh_install() -> None:
    result = katclient("demo")
    assert result.returncode == 0, result.stderr
    assert "Requests (" in result.stdout and "sensor.00000" in result.stdout


def test_inspect_watch_streams_updates(fake_10k: str) -> None:
    with running("-m", "fake_servers.katcp_device", "--port", "0", "--sensors", "4", "--update-rate", "20") as a:
        result = katclient("inspect", a, "--json", "--watch", "1")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        json.loads(lines[0])
        updates = [json.loads(line) for line in lines[1:]]
        assert updates and {"name", "timestamp", "status", "value"} <= set(updates[0])


def test_main_in_process_with_output_stream(capsys: pytest.CaptureFixture[str]) -> None:
    from katclient.cli import main

    assert main(["request", "127.0.0.1:1", "watchdog"]) == 2
    assert "could not connect" in capsys.readouterr().err


def test_device_options_reach_virtual_devices_and_are_checked(scan_server) -> None:
    result = katclient("inspect", scan_server.target, "--json", "-o", "poll_period=0.2")
    assert result.returncode == 0, result.stderr
    assert any(s["name"] == "server.connected" and s["value"] is True for s in json.loads(result.stdout)["sensors"])
    bad = katclient("inspect", scan_server.target, "-o", "poll_period=fast")
    assert bad.returncode == 2 and "poll_period" in bad.stderr
    katcp = katclient("request", "127.0.0.1:1", "watchdog", "-o", "x=1")
    assert katcp.returncode == 2 and "takes no options" in katcp.stderr
    malformed = katclient("request", scan_server.target, "server-info", "-o", "novalue")
    assert malformed.returncode == 2 and "KEY=VALUE" in malformed.stderr
