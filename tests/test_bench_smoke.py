"""Smoke test of the benchmark CLI (bench/): every workload runs end to end on a tiny size.

No timing is asserted: only that each side produced samples and the CLI printed a
ratio per metric.  The memory benchmark needs psutil (``pip install .[bench]``) and is
reported as skipped without it.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=90
    )


def test_all_workloads_tiny_json() -> None:
    done = _run("all", "--tiny", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert doc["plan"] == "tiny"
    names = [m["name"] for m in doc["metrics"]]
    for prefix in ("ingest", "sync", "?watchdog sequential", "?watchdog 10 in flight", "server writes",
                   "server ?sensor-list"):
        assert any(n.startswith(prefix) for n in names), (prefix, names)
    if "memory" not in doc["skipped"]:
        assert any(n.startswith("memory") for n in names)
    for metric in doc["metrics"]:
        assert all(len(v) == 1 for v in metric["samples"].values()), metric
        assert math.isfinite(metric["ratio"]) and metric["ratio"] > 0, metric
    # The human-readable table goes to stderr with --json.
    assert "ratio katc/aiok" in done.stderr


def test_ingest_table_prints_ratio() -> None:
    done = _run("ingest", "--tiny")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ingest 40 sensors x 2 rounds")]
    assert len(rows) == 1, done.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == "updates/s"
    assert float(cells[4]) > 0  # the ratio column
    assert cells[5] == ">= 6"


def test_bad_usage_exits_2() -> None:
    done = _run("nonsense")
    assert done.returncode == 2
