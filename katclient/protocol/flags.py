"""KATCP protocol version and flags (sans-I/O).

Source: KATCP v5 spec section 3.2 (``#version-connect katcp-protocol``) and
protocols/katcp.md 1.3 and 1.4: the version string is ``major.minor[-FLAGS]`` with
flags ``M`` (multiple clients), ``I`` (message ids, needs major >= 5), ``T`` (request
timeout hints, needs >= 5.1) and ``B`` (bulk ``?sensor-sampling``, needs >= 5.1).
A v4 device announces itself with ``#version``/``#build-state`` and is taken as
``4.0`` with no flags.
"""

from __future__ import annotations

import re
from typing import Final

from katclient.protocol.errors import ProtocolError

__all__ = ["ProtocolFlags", "V4", "V5_0_IM", "V5_1_BIMT"]

_VERSION_RE: Final = re.compile(r"(\d+)\.(\d+)(?:-([A-Za-z]*))?\Z")


class ProtocolFlags:
    """A negotiated KATCP protocol: version and flags.  Immutable and hashable.

    :param major: major version (4 or 5).
    :param minor: minor version.
    :param flags: flag letters, e.g. ``"IM"`` or ``{"B", "I", "M", "T"}``.
    """

    __slots__ = ("major", "minor", "flags")

    major: int
    minor: int
    flags: frozenset[str]

    def __init__(self, major: int, minor: int, flags: str | frozenset[str] | set[str] = "") -> None:
        object.__setattr__(self, "major", int(major))
        object.__setattr__(self, "minor", int(minor))
        object.__setattr__(self, "flags", frozenset(flags))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ProtocolFlags is immutable")

    @classmethod
    def parse(cls, version: str | bytes) -> ProtocolFlags:
        """Parse ``"5.0-IM"``, ``"5.1-BIMT"``, ``"4.0"``.

        :raises ProtocolError: when the string is not ``major.minor[-FLAGS]``.
        """
        if isinstance(version, bytes):
            version = version.decode("ascii", "replace")
        m = _VERSION_RE.match(version.strip())
        if m is None:
            raise ProtocolError(f"bad KATCP protocol version {version!r}")
        return cls(int(m.group(1)), int(m.group(2)), (m.group(3) or "").upper())

    # -- capabilities (each also checks the version that introduced it) -------------
    @property
    def multi_client(self) -> bool:
        """Flag ``M``: the device serves several clients at once."""
        return "M" in self.flags

    @property
    def message_ids(self) -> bool:
        """Flag ``I`` on a v5+ device: requests may carry message ids (katcp.md 1.2)."""
        return "I" in self.flags and self.major >= 5

    @property
    def request_timeout_hints(self) -> bool:
        """Flag ``T`` on a v5.1+ device: ``?request-timeout-hint`` exists (katcp.md 1.3)."""
        return "T" in self.flags and (self.major, self.minor) >= (5, 1)

    @property
    def bulk_set_sensor_sampling(self) -> bool:
        """Flag ``B`` on a v5.1+ device: ``?sensor-sampling a,b,c strategy`` (katcp.md 1.7)."""
        return "B" in self.flags and (self.major, self.minor) >= (5, 1)

    @property
    def timestamps_in_ms(self) -> bool:
        """True for v4: timestamps and the ``period`` parameter are integer milliseconds (katcp.md 1.4)."""
        return self.major < 5

    def __str__(self) -> str:
        base = f"{self.major}.{self.minor}"
        return f"{base}-{''.join(sorted(self.flags))}" if self.flags else base

    def __repr__(self) -> str:
        return f"ProtocolFlags({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProtocolFlags):
            return NotImplemented
        return (self.major, self.minor, self.flags) == (other.major, other.minor, other.flags)

    def __hash__(self) -> int:
        return hash((self.major, self.minor, self.flags))


#: KATCP v4 (no flags).
V4: Final = ProtocolFlags(4, 0)
#: katcp-python's default server protocol.
V5_0_IM: Final = ProtocolFlags(5, 0, "IM")
#: Everything katclient's server supports.
V5_1_BIMT: Final = ProtocolFlags(5, 1, "BIMT")
