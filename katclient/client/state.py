"""The inspecting client's state machine, as data (STYLE.md habit 2).

Source: DESIGN.md section 1 and protocols/katcp.md 2.2: exactly five valid states,
tuples of ``(connected, synced, model_changed, data_synced)``.  The transitions the
client makes are listed in :data:`TRANSITIONS` as ``(state, event) -> state``; the
client asks :func:`next_state` and never builds a state by hand, so an invalid state
cannot occur.  The documentation's diagram is drawn from the same table.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple

__all__ = [
    "InspectingClientStateType",
    "Event",
    "DISCONNECTED",
    "CONNECTED",
    "DATA_SYNCED_CHANGED",
    "DATA_SYNCED_UNCHANGED",
    "SYNCED",
    "VALID_STATES",
    "TRANSITIONS",
    "next_state",
]


class InspectingClientStateType(NamedTuple):
    """One of the five states (katcp.md 2.2), printed like ``[connected !synced ...]``."""

    connected: bool
    synced: bool
    model_changed: bool
    data_synced: bool

    def __str__(self) -> str:
        return "[" + " ".join(("" if v else "!") + k for k, v in zip(self._fields, self)) + "]"


DISCONNECTED: Final = InspectingClientStateType(False, False, False, False)
CONNECTED: Final = InspectingClientStateType(True, False, False, False)
DATA_SYNCED_CHANGED: Final = InspectingClientStateType(True, False, True, True)
DATA_SYNCED_UNCHANGED: Final = InspectingClientStateType(True, False, False, True)
SYNCED: Final = InspectingClientStateType(True, True, False, True)

VALID_STATES: Final = frozenset(
    {DISCONNECTED, CONNECTED, DATA_SYNCED_CHANGED, DATA_SYNCED_UNCHANGED, SYNCED}
)


class Event(enum.Enum):
    """What happens to the client."""

    CONNECT = "TCP connection up"
    INSPECTED_CHANGED = "inspection found a different model"
    INSPECTED_UNCHANGED = "inspection found the same model"
    SUBSCRIBED = "sampling set, initial readings in"
    INTERFACE_CHANGED = "#interface-changed received"
    SYNC_FAILED = "inspection or subscription failed"
    DISCONNECT = "connection lost or client stopped"


_AFTER_CONNECT = (CONNECTED, DATA_SYNCED_CHANGED, DATA_SYNCED_UNCHANGED, SYNCED)

#: ``(state, event) -> state``.  Every pair not listed is a bug in the caller.
TRANSITIONS: Final[dict[tuple[InspectingClientStateType, Event], InspectingClientStateType]] = {
    (DISCONNECTED, Event.CONNECT): CONNECTED,
    (CONNECTED, Event.INSPECTED_CHANGED): DATA_SYNCED_CHANGED,
    (CONNECTED, Event.INSPECTED_UNCHANGED): DATA_SYNCED_UNCHANGED,
    (CONNECTED, Event.SYNC_FAILED): CONNECTED,
    (DATA_SYNCED_CHANGED, Event.SUBSCRIBED): SYNCED,
    (DATA_SYNCED_UNCHANGED, Event.SUBSCRIBED): SYNCED,
    (DATA_SYNCED_CHANGED, Event.SYNC_FAILED): CONNECTED,
    (DATA_SYNCED_UNCHANGED, Event.SYNC_FAILED): CONNECTED,
    (DATA_SYNCED_CHANGED, Event.INTERFACE_CHANGED): CONNECTED,
    (DATA_SYNCED_UNCHANGED, Event.INTERFACE_CHANGED): CONNECTED,
    (SYNCED, Event.INTERFACE_CHANGED): CONNECTED,
    **{(s, Event.DISCONNECT): DISCONNECTED for s in _AFTER_CONNECT},
    (DISCONNECTED, Event.DISCONNECT): DISCONNECTED,
}


def next_state(state: InspectingClientStateType, event: Event) -> InspectingClientStateType:
    """The state after ``event`` in ``state``.

    :raises ValueError: for a pair that is not in :data:`TRANSITIONS`.
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise ValueError(f"no transition from {state} on {event.name}") from None
