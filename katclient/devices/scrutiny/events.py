"""Events of the Scrutiny client, and the pure status comparison that produces most of them.

Source: protocols/scrutiny.md section 1.5 ("There is no per-watchable 'gone' message"): the server
never says that watchable ids died; a client learns it by comparing ``device_session_id`` and
``loaded_sfd_firmware_id`` between successive statuses, as the SDK does (section 2, Events).  The
event classes mirror the SDK's ``ScrutinyClient.Events`` (seed 001) in katclient's naming.
"""

from __future__ import annotations

from dataclasses import dataclass

from katclient.devices.scrutiny.model import DataloggerState, ServerStatus

__all__ = [
    "ServerConnected",
    "ServerDisconnected",
    "DeviceReady",
    "DeviceGone",
    "SFDLoaded",
    "SFDUnloaded",
    "DataloggerStateChanged",
    "StatusUpdated",
    "DataloggingListChanged",
    "SubscriptionsRestored",
    "ScrutinyEvent",
    "status_events",
]


@dataclass(frozen=True, slots=True)
class ServerConnected:
    """The connection is up and the ``welcome`` arrived; ``server_time_zero`` in epoch seconds."""

    host: str
    port: int
    server_time_zero: float


@dataclass(frozen=True, slots=True)
class ServerDisconnected:
    """The connection was lost or closed; ``reason`` says why."""

    host: str
    port: int
    reason: str


@dataclass(frozen=True, slots=True)
class DeviceReady:
    """A device session started (handshake done); RPV ids of earlier sessions are dead."""

    session_id: str


@dataclass(frozen=True, slots=True)
class DeviceGone:
    """The device session ``session_id`` ended; its RPV ids are dead."""

    session_id: str


@dataclass(frozen=True, slots=True)
class SFDLoaded:
    """The SFD ``firmware_id`` was loaded: its vars and aliases exist, with new ids."""

    firmware_id: str


@dataclass(frozen=True, slots=True)
class SFDUnloaded:
    """The SFD ``firmware_id`` was unloaded: its vars and aliases are gone."""

    firmware_id: str


@dataclass(frozen=True, slots=True)
class DataloggerStateChanged:
    """The datalogger's state, or its completion ratio while busy, changed."""

    state: DataloggerState
    completion_ratio: float | None


@dataclass(frozen=True, slots=True)
class StatusUpdated:
    """A server status arrived (pushed or polled, at least every status interval)."""

    status: ServerStatus


@dataclass(frozen=True, slots=True)
class DataloggingListChanged:
    """Stored acquisitions changed: ``action`` is ``new``, ``update``, ``delete`` or ``delete_all``."""

    action: str
    reference_id: str | None


@dataclass(frozen=True, slots=True)
class SubscriptionsRestored:
    """The client re-subscribed after a reconnect or a device/SFD change.

    :param restored: paths subscribed again (with new server ids).
    :param missing: wanted paths that do not exist now; they are retried on the next change.
    """

    restored: tuple[str, ...]
    missing: tuple[str, ...]


#: Any event the client emits to its event callbacks.
ScrutinyEvent = (
    ServerConnected
    | ServerDisconnected
    | DeviceReady
    | DeviceGone
    | SFDLoaded
    | SFDUnloaded
    | DataloggerStateChanged
    | StatusUpdated
    | DataloggingListChanged
    | SubscriptionsRestored
)


def status_events(
    previous: ServerStatus | None, current: ServerStatus | None
) -> list[DeviceReady | DeviceGone | SFDLoaded | SFDUnloaded | DataloggerStateChanged]:
    """The events implied by going from status ``previous`` to ``current``.

    ``None`` means "no status known" (before the first status, or after a disconnect).  Order:
    device gone/ready, then SFD unloaded/loaded, then datalogger change, as the SDK fires them.

    :param previous: the last status seen, or ``None``.
    :param current: the new status, or ``None``.
    :returns: the events, possibly empty.
    """
    events: list[DeviceReady | DeviceGone | SFDLoaded | SFDUnloaded | DataloggerStateChanged] = []
    old_session = previous.device_session_id if previous is not None else None
    new_session = current.device_session_id if current is not None else None
    if old_session != new_session:
        if old_session is not None:
            events.append(DeviceGone(old_session))
        if new_session is not None:
            events.append(DeviceReady(new_session))
    old_sfd = previous.sfd_firmware_id if previous is not None else None
    new_sfd = current.sfd_firmware_id if current is not None else None
    if old_sfd != new_sfd:
        if old_sfd is not None:
            events.append(SFDUnloaded(old_sfd))
        if new_sfd is not None:
            events.append(SFDLoaded(new_sfd))
    if previous is not None and current is not None and previous.datalogging != current.datalogging:
        events.append(DataloggerStateChanged(current.datalogging.state, current.datalogging.completion_ratio))
    return events
