"""katclient.protocol imports no socket, event loop or Tornado (STYLE.md habit 1)."""

import subprocess
import sys

SCRIPT = r"""
import builtins, sys
BLOCKED = ("socket", "_socket", "asyncio", "selectors", "tornado", "ssl")
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name.split(".")[0] in BLOCKED:
        raise ImportError(f"sans-I/O layer imported {name}")
    return real_import(name, *args, **kwargs)
for mod in list(sys.modules):
    if mod.split(".")[0] in BLOCKED:
        del sys.modules[mod]
builtins.__import__ = guarded
import katclient.protocol as p
from katclient.protocol import Message, Parser, format_message
assert Parser().feed(format_message(Message.request("watchdog", mid=1))) == [Message.request("watchdog", mid=1)]
print("ok", len(p.__all__))
"""


def test_protocol_imports_without_sockets_event_loops_or_tornado() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")


def test_top_level_names_resolve_lazily() -> None:
    import katclient

    assert sorted(katclient._EXPORTS) == sorted(n for n in katclient.__all__ if n != "__version__")
    for name in katclient.__all__:
        assert getattr(katclient, name) is not None
    assert katclient.InspectingClientAsync.__module__ == "katclient.client.inspecting"
