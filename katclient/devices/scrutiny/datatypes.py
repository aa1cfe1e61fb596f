"""Scrutiny data type names (``dtype``) and what they imply: kind, width, value range.

Source: protocols/scrutiny.md section 1.6.  A ``dtype`` is a kind prefix and a width in bits:
``sint8..sint256``, ``uint8..uint256``, ``float8..float256``, ``cfloat8..cfloat256``,
``bool8..bool256`` and ``ptr8..ptr256``.  Integers arrive as JSON integers, floats as JSON floats
(possibly ``NaN``), booleans as ``true``/``false``; enums are not applied on the wire.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from katclient.devices.scrutiny.errors import ScrutinyProtocolError

__all__ = ["DataKind", "DataType"]

_DTYPE_RE = re.compile(r"^(sint|uint|float|cfloat|bool|ptr)(8|16|32|64|128|256)$")


class DataKind(enum.Enum):
    """The kind part of a ``dtype`` string."""

    SINT = "sint"
    UINT = "uint"
    FLOAT = "float"
    CFLOAT = "cfloat"
    BOOL = "bool"
    PTR = "ptr"


@dataclass(frozen=True, slots=True)
class DataType:
    """A parsed ``dtype``.

    :param kind: the kind (signed/unsigned integer, float, bool, pointer...).
    :param bits: the storage width in bits (8 to 256).
    """

    kind: DataKind
    bits: int

    @classmethod
    def parse(cls, dtype: str) -> DataType:
        """Parse a ``dtype`` string such as ``"sint32"``.

        :raises ScrutinyProtocolError: when the name is not one scrutiny.md 1.6 lists.
        """
        match = _DTYPE_RE.match(dtype) if isinstance(dtype, str) else None
        if match is None:
            raise ScrutinyProtocolError(f"unknown dtype {dtype!r}")
        return cls(DataKind(match.group(1)), int(match.group(2)))

    @property
    def name(self) -> str:
        """The wire name, e.g. ``"float32"``."""
        return f"{self.kind.value}{self.bits}"

    @property
    def is_integer(self) -> bool:
        """True for ``sint``, ``uint`` and ``ptr`` (values arrive as JSON integers)."""
        return self.kind in (DataKind.SINT, DataKind.UINT, DataKind.PTR)

    @property
    def is_signed(self) -> bool:
        """True for ``sint`` (two's complement)."""
        return self.kind is DataKind.SINT

    @property
    def is_float(self) -> bool:
        """True for ``float`` and ``cfloat``."""
        return self.kind in (DataKind.FLOAT, DataKind.CFLOAT)

    @property
    def is_bool(self) -> bool:
        """True for ``bool``."""
        return self.kind is DataKind.BOOL

    @property
    def size_bytes(self) -> int:
        """Storage size in bytes."""
        return self.bits // 8

    def int_range(self, bits: int | None = None) -> tuple[int, int]:
        """The inclusive value range of an integer type.

        :param bits: the effective width, for bitfields (``bitsize``); defaults to :attr:`bits`.
        :returns: ``(minimum, maximum)``.
        :raises ValueError: when this is not an integer type.
        """
        if not self.is_integer:
            raise ValueError(f"{self.name} is not an integer type")
        width = self.bits if bits is None else bits
        if self.is_signed:
            return -(1 << (width - 1)), (1 << (width - 1)) - 1
        return 0, (1 << width) - 1
