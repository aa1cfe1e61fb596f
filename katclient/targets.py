"""TARGET strings: where a KATCP endpoint is, or which virtual device to start.

``HOST:PORT`` and ``katcp://HOST:PORT`` name a KATCP device.  ``scrutiny://``,
``opticon://`` and ``scan://`` name a foreign system; :func:`open_target` then runs
its virtual KATCP device in-process on an ephemeral loopback port (DESIGN.md
section 1) and yields that address, so the same client code works for all four.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import Any, Final, NamedTuple

from katclient.client.inspecting import parse_target
from katclient.protocol import InvalidUsage

__all__ = ["VirtualDeviceSpec", "VIRTUAL_DEVICES", "split_target", "open_target", "create_virtual_device"]


class VirtualDeviceSpec(NamedTuple):
    """Where a virtual device class lives and the foreign system's default port."""

    module: str
    class_name: str
    default_port: int


#: Scheme -> virtual device.  Each class is a :class:`~katclient.server.DeviceServer`
#: subclass with ``from_target(host, port, *, listen_host, listen_port, **options)``.
VIRTUAL_DEVICES: Final[dict[str, VirtualDeviceSpec]] = {
    "scrutiny": VirtualDeviceSpec("katclient.devices.scrutiny.device", "ScrutinyDevice", 8765),
    "opticon": VirtualDeviceSpec("katclient.devices.opticon.device", "OpticonDevice", 12345),
    "scan": VirtualDeviceSpec("katclient.devices.scan.device", "ScanDevice", 4810),
}


def split_target(target: str) -> tuple[str, str, int]:
    """Split a TARGET into ``(scheme, host, port)``; ``HOST:PORT`` has scheme ``katcp``.

    :raises InvalidUsage: for an unknown scheme or a malformed address.
    """
    scheme = "katcp"
    rest = target
    if "://" in target:
        scheme, rest = target.split("://", 1)
    if scheme == "katcp":
        host, port = parse_target(rest)
        return scheme, host, port
    spec = VIRTUAL_DEVICES.get(scheme)
    if spec is None:
        known = ", ".join(["katcp", *VIRTUAL_DEVICES])
        raise InvalidUsage(f"unknown target scheme {scheme!r} (known: {known})")
    host, port = parse_target(rest, spec.default_port)
    return scheme, host, port


def create_virtual_device(
    scheme: str, host: str, port: int, listen_host: str = "127.0.0.1", listen_port: int = 0, **options: Any
) -> Any:
    """Build (not start) the virtual device for ``scheme`` talking to ``host:port``.

    :raises InvalidUsage: unknown scheme, or the virtual device is not available.
    """
    spec = VIRTUAL_DEVICES.get(scheme)
    if spec is None:
        raise InvalidUsage(f"no virtual device for scheme {scheme!r}")
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise InvalidUsage(f"virtual device {scheme!r} is not available: {exc}") from exc
    cls = getattr(module, spec.class_name)
    return cls.from_target(host, port, listen_host=listen_host, listen_port=listen_port, **options)


@contextlib.asynccontextmanager
async def open_target(target: str, **options: Any) -> AsyncIterator[tuple[str, int]]:
    """Yield the ``(host, port)`` of a KATCP endpoint for ``target``.

    For a virtual-device scheme the device is started in-process on an ephemeral
    loopback port and stopped on exit.

    :raises InvalidUsage: for a malformed or unknown target.
    """
    scheme, host, port = split_target(target)
    if scheme == "katcp":
        if options:
            raise InvalidUsage(f"a katcp:// target takes no options (got {', '.join(options)})")
        yield host, port
        return
    device = create_virtual_device(scheme, host, port, **options)
    await device.start()
    try:
        yield device.address
    finally:
        await device.stop()
