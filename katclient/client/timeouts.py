"""One way to say "timeout" everywhere (STYLE.md habit 14).

A timeout argument is float seconds, ``None`` (wait for ever) or :data:`DEFAULT`
(use the default that applies: a request's timeout hint, else the client's).
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["DEFAULT", "Timeout"]


class _Default(enum.Enum):
    DEFAULT = "default"

    def __repr__(self) -> str:
        return "DEFAULT"


#: Sentinel for "use the default timeout".
DEFAULT: Final = _Default.DEFAULT

#: A timeout argument: float seconds, ``None`` (wait for ever) or :data:`DEFAULT`.
Timeout = float | None | _Default
