"""The manual in ``doc/`` builds without a single warning, and what it claims is checked.

* ``sphinx-build -W -b html`` succeeds (the same command as ``tox -e docs``, into a temporary
  directory), and the state diagram in the output is drawn from the client's transition table;
* every Python name in the seed-API table (``doc/seed-map.rst``) imports, and every KATCP
  ``?request`` it names exists on the device it belongs to;
* every module of the package has its API reference page.

The build needs Sphinx.  Without it the build tests are skipped on a developer's machine, but in
CI (``CI=true``) they run and fail, so the manual cannot rot unnoticed.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import katclient
from katclient.client import state as state_module
from katclient.client.state import TRANSITIONS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "doc"
#: Seconds allowed for a full build (about 30 s on a 2-core machine).
BUILD_TIMEOUT = 600

HAVE_SPHINX = importlib.util.find_spec("sphinx") is not None
needs_sphinx = pytest.mark.skipif(
    not HAVE_SPHINX and os.environ.get("CI") != "true",
    reason="Sphinx is not installed (pip install sphinx); CI=true runs this anyway",
)


@pytest.fixture(scope="module")
def html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the manual once for this module; fail with Sphinx's own output if it warns."""
    out = tmp_path_factory.mktemp("html")
    doctrees = tmp_path_factory.mktemp("doctrees")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(doctrees),
         str(DOC), str(out)],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    output = f"{proc.stdout[-5000:]}\n{proc.stderr[-10000:]}"
    assert proc.returncode == 0, f"sphinx-build -W failed ({proc.returncode}):\n{output}"
    return out


@needs_sphinx
def test_the_manual_builds_without_warnings(html: Path) -> None:
    pages = {p.relative_to(html).as_posix() for p in html.rglob("*.html")}
    for page in ("index.html", "getting-started.html", "state-machine.html", "seed-map.html", "cli.html",
                 "tutorials/testing.html", "protocols/katcp.html", "api/client.html"):
        assert page in pages


@needs_sphinx
def test_the_state_diagram_is_drawn_from_the_transition_table(html: Path) -> None:
    page = (html / "state-machine.html").read_text(encoding="utf-8")
    svg = page[page.index("<svg") : page.index("</svg>")]
    names = {value: name for name, value in vars(state_module).items()
             if name.isupper() and isinstance(value, state_module.InspectingClientStateType)}
    for (state, event), target in TRANSITIONS.items():
        assert f">{event.name}<" in svg
        assert f">{names[state]}<" in svg and f">{names[target]}<" in svg
    # one arrow per (state, next state) pair, each with a tooltip naming its events
    pairs = {(names[s], names[t]) for (s, _), t in TRANSITIONS.items()}
    assert svg.count('marker-end="url(#ksd-arrow)"') - 1 == len(pairs)  # minus the entry arrow


@needs_sphinx
def test_the_ten_line_example_is_in_the_testing_tutorial(html: Path) -> None:
    source = (ROOT / "tests" / "test_doc_examples.py").read_text(encoding="utf-8")
    example = source.split("# doc-example: scan-test\n", 1)[1].split("# end-doc-example", 1)[0]
    body = [line for line in example.splitlines() if line.strip()]
    assert len(body) <= 14  # imports, marker, def and ten lines of test at most
    page = (html / "tutorials" / "testing.html").read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", page)
    import html as html_lib

    text = html_lib.unescape(text)
    for line in body:
        assert line.strip() in text


# -- the seed table --------------------------------------------------------------------------------

_ROLE = re.compile(r":py:(?:meth|class|func|attr|data|mod|obj):`([^`]+)`")
_REQUEST = re.compile(r"``\?([a-z][a-z0-9-]*)(?=[\s`\[])")


def _resolve(target: str) -> Any:
    """Import ``a.b.C.attr``; an instance attribute counts when ``__init__`` assigns it."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for j, attr in enumerate(parts[i:], start=i):
            if hasattr(obj, attr):
                obj = getattr(obj, attr)
            elif inspect.isclass(obj) and j == len(parts) - 1 and f"self.{attr} =" in inspect.getsource(obj):
                return obj
            else:
                raise AssertionError(f"{target}: {'.'.join(parts[:j])} has no attribute {attr!r}")
        return obj
    raise AssertionError(f"{target}: no module to import")


def test_every_python_name_in_the_seed_table_exists() -> None:
    text = (DOC / "seed-map.rst").read_text(encoding="utf-8")
    targets = set()
    for role in _ROLE.findall(text):
        target = role.split("<", 1)[1].rstrip(">") if "<" in role else role
        targets.add(target.lstrip("~"))
    assert len(targets) > 100
    for target in sorted(targets):
        _resolve(target)


async def test_every_katcp_request_in_the_seed_table_exists() -> None:
    from katclient.devices.opticon.device import OpticonDevice
    from katclient.devices.scan.device import ScanDevice
    from katclient.devices.scrutiny.device import ScrutinyDevice
    from katclient.server import DeviceServer

    known: set[str] = set(DeviceServer("127.0.0.1", 0).request_names)
    for device in (
        ScrutinyDevice.from_target("127.0.0.1", 8765),
        OpticonDevice.from_target("127.0.0.1", 12345, enable_eval=True),
        ScanDevice.from_target("127.0.0.1", 4810),
    ):
        known.update(device.request_names)
    named = set(_REQUEST.findall((DOC / "seed-map.rst").read_text(encoding="utf-8")))
    assert {"scan-submit", "watchable-write", "field-set", "sensor-list"} <= named
    assert named - known == set()


# -- API reference coverage ------------------------------------------------------------------------


def test_every_module_has_an_api_page() -> None:
    documented = set()
    for page in (DOC / "api").glob("*.rst"):
        documented.update(re.findall(r"^\.\. api-module:: (\S+)", page.read_text(encoding="utf-8"), re.M))
    found = pkgutil.walk_packages(katclient.__path__, "katclient.")
    modules = {"katclient"} | {m.name for m in found if m.name.rsplit(".", 1)[-1] != "__main__"}
    missing = sorted(modules - documented)
    assert not missing, f"add these modules to a page in doc/api/ (.. api-module:: NAME): {missing}"
