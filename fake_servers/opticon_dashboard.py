"""A fake PyOpticon dashboard: pyopticon 0.2.1's socket protocol without Tk (protocols/pyopticon.md).

Wire-faithful where a client can tell (section numbers refer to /work/shared/protocols/pyopticon.md):

* one ``recv(1024)`` per request and ``json.loads`` on whatever arrived; malformed JSON, a missing ``cmd``,
  two requests in one recv, an over-long request or the peer closing drop the connection (1.1);
* replies are raw UTF-8 without a terminator, sent whole however long; an empty value sends zero bytes;
  Close gets no reply (1.1, 1.2);
* the same checks in the same order as the real command loop, so the same ``Error: ...`` texts: a missing
  ``printout`` gives ``Error: 'printout'``, a non-str value logged with ``printout`` gives the
  concatenation error, unknown widgets and fields give the KeyError text (1.2, 1.3);
* an unknown ``cmd`` re-sends the previous reply of that port (the real loop keeps it in a variable that
  outlives connections); with no previous reply, or a previous Eval result that is not a str, the
  connection drops (1.2);
* Eval/Exec run Python in a namespace holding ``get_dashboard()`` and ``do_threadsafe(f)``, with the real
  Exec rewriting (1.2), so the documented introspection expression works (1.6);
* one client per port: while a client is served the listener stays open but unaccepted, so another
  client completes its TCP handshake and gets no service; when the served client leaves, the listener is
  replaced and the waiting clients are reset (1.4).  Several ports serve several clients;
* Set and Confirm answer ``Success`` before they take effect: a Set is applied ``set_delay`` seconds later
  on the event loop (Tk's ``root.after(0)``), a Confirm runs the widget's ``on_confirm`` ``confirm_delay``
  seconds later (the widget worker thread polls its queue every 50 ms) (1.5, 1.7).  A Set on an unknown
  field of an existing widget answers ``Success`` and fails later, in the log only (1.3).

Deliberate differences: it binds ``--host`` (default 127.0.0.1) rather than all interfaces; console
output goes to :mod:`logging`; Eval/Exec run on the event loop rather than on a per-port thread; the
widgets are simulated instruments, always "polling", with no serial ports.

Instruments (all values are strings, as Tk StringVars hold them; section 1.6):

* ``Heater``: ``Setpoint Entry``, ``Mode Selection`` (Off/On) -> Confirm -> ``Device Setpoint``,
  ``Device Mode``; ``Temperature`` approaches the setpoint (On) or ambient 25 C (Off) exponentially;
* ``Valve``: ``Position Selection`` (Closed/Open) -> Confirm -> ``Actual Position`` shows ``Moving``, then
  the new position after the travel time;
* ``MFC``: a mass flow controller shaped like pyopticon's AalborgDPCWidget: ``Gas Selection``,
  ``Mode Selection`` (Closed/Setpoint/Open), ``Setpoint Entry`` -> Confirm -> ``Device Gas``,
  ``Device Mode``, ``Device Setpoint``; ``Actual Flow`` approaches the target flow.

``speed`` is simulated seconds per real second (time constants are in simulated seconds), and
``poll_interval`` the real seconds between instrument updates, so tests can make instruments settle in a
fraction of a second.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fake_servers._common import base_parser, serve_until_signalled

__all__ = [
    "FakeStringVar",
    "FakeWidget",
    "MinimalFakeWidget",
    "HeaterWidget",
    "ValveWidget",
    "FlowControllerWidget",
    "SimulatedDashboard",
    "FakeOpticonDashboard",
    "main",
]

logger = logging.getLogger(__name__)

#: The real dashboard reads each request with one ``recv(1024)`` (section 1.1).
RECV_BYTES = 1024
#: The real dashboard's ``listen(5)`` (section 1.1): clients beyond the one served wait in this backlog.
LISTEN_BACKLOG = 5
#: Requests remembered in :attr:`FakeOpticonDashboard.commands` for tests to inspect; bounded so a long
#: run keeps constant memory.
COMMAND_LOG_LENGTH = 1000
#: Ambient temperature in degrees Celsius, where the heater settles when off.
AMBIENT_C = 25.0
#: Text of the real dashboard's refusal of inline exec functions (section 1.2).
_EXEC_INLINE_REFUSAL = (
    "Ignoring do_exec() call: Not allowed to define exec functions inline (e.g. do_exec(lambda x: ...)); "
    "please define the function elsewhere (l = lambda x: ..., or def l():...), then do_exec(l)."
)


class FakeStringVar:
    """Stands in for a Tk ``StringVar``: whatever is stored reads back as a string (section 1.6)."""

    __slots__ = ("_value",)

    def __init__(self, value: object = "") -> None:
        self._value = ""
        self.set(value)

    def get(self) -> str:
        """The value, always a str."""
        return self._value

    def set(self, value: object) -> None:
        """Store *value*; like Tcl, booleans become ``'1'``/``'0'`` and everything else its ``str()``."""
        if isinstance(value, bool):
            self._value = "1" if value else "0"
        else:
            self._value = str(value)


_FIELD_TYPES = ("text output", "text input", "dropdown", "button")


class FakeWidget:
    """Stands in for pyopticon's ``GenericWidget``: a nickname, fields in :attr:`attributes`, Confirm.

    Subclasses override :meth:`on_confirm` (apply the input fields to the "device") and :meth:`on_update`
    (advance the simulation by *dt* simulated seconds and refresh the readouts).
    """

    def __init__(self, dashboard: SimulatedDashboard, name: str, nickname: str | None) -> None:
        self.parent_dashboard = dashboard
        self.name = name
        self.nickname = nickname
        #: Field name -> value holder; the socket's Get and Set use these (section 1.6).
        self.attributes: dict[str, FakeStringVar] = {}
        self.default_values: dict[str, str | None] = {}
        self.field_options: dict[str, list[str]] = {}

    def add_field(
        self,
        field_type: str,
        name: str,
        label: str = "",
        default_value: str | None = None,
        options: Sequence[str] | None = None,
    ) -> FakeStringVar:
        """Add a field as ``GenericWidget.add_field`` does (section 1.6).

        :raises ValueError: unknown *field_type*, or a dropdown without *options*.
        """
        if field_type not in _FIELD_TYPES:
            raise ValueError(f"Valid field types are {_FIELD_TYPES}")
        if field_type == "dropdown":
            if not options:
                raise ValueError("Missing required 'options' argument with dropdown items")
            self.field_options[name] = list(options)
        var = FakeStringVar("" if default_value is None else default_value)
        if field_type == "text output":
            self.default_values[name] = default_value
        if name in self.attributes:
            logger.warning("Warning: duplicate attribute %r in %s", name, self.name)
        self.attributes[name] = var
        return var

    def get_field(self, which_field: str) -> str:
        """Current value of a field.

        :raises KeyError: no such field (the socket reply is then ``Error: '<field>'``).
        """
        return self.attributes[which_field].get()

    def set_field(self, which_field: str, new_value: object, hush_warning: bool = False) -> None:
        """Schedule a field update on the event loop, like ``root.after(0, ...)`` (section 1.5).  An
        unknown field fails then, in the log only (section 1.3)."""

        def apply() -> None:
            self.attributes[which_field].set(new_value)

        self.parent_dashboard.after(self.parent_dashboard.set_delay, apply)

    def do_threadsafe(self, to_do: Callable[[], object]) -> None:
        """Run *to_do* on the event loop soon (the real one uses Tk's ``after(0)``)."""
        self.parent_dashboard.after(0.0, to_do)

    def confirm(self) -> None:
        """Queue ``on_confirm``, which runs a moment later (section 1.7)."""
        self.parent_dashboard.after(self.parent_dashboard.confirm_delay, self._on_confirm, "on_confirm")

    def _on_confirm(self) -> None:
        self.on_confirm()

    def on_confirm(self) -> None:
        """Apply the input fields to the device.  Does nothing unless overridden."""

    def on_update(self, dt: float) -> None:
        """Advance the simulation by *dt* simulated seconds.  Does nothing unless overridden."""

    def _set_output(self, field: str, value: str) -> None:
        # The real widgets update readouts from their worker thread through do_threadsafe; the fake's
        # simulation already runs on the event loop, so it sets them directly.
        self.attributes[field].set(value)

    def _selection(self, field: str) -> str:
        value = self.get_field(field)
        if value not in self.field_options[field]:
            raise ValueError(f"{self.name}: {value!r} is not one of {self.field_options[field]}")
        return value


class MinimalFakeWidget:
    """Stands in for a ``MinimalWidget`` (e.g. a title): no fields, no ``get_field``, no ``confirm``."""

    def __init__(self, dashboard: SimulatedDashboard, name: str, nickname: str | None = None) -> None:
        self.parent_dashboard = dashboard
        self.name = name
        if nickname is not None:
            self.nickname = nickname

    def on_update(self, dt: float) -> None:
        """Nothing to simulate."""


class HeaterWidget(FakeWidget):
    """A temperature controller whose ``Temperature`` approaches the confirmed setpoint (mode On) or ambient
    (mode Off) with time constant :attr:`TAU_S` simulated seconds."""

    TAU_S = 20.0

    def __init__(self, dashboard: SimulatedDashboard, name: str = "Heater", nickname: str = "Heater") -> None:
        super().__init__(dashboard, name, nickname)
        self.add_field("text input", "Setpoint Entry", "Setpoint (C)", "25.0")
        self.add_field("dropdown", "Mode Selection", "Mode", "Off", options=["Off", "On"])
        self.add_field("text output", "Device Setpoint", "Device Setpoint (C)", "No Reading")
        self.add_field("text output", "Device Mode", "Device Mode", "No Reading")
        self.add_field("text output", "Temperature", "Temperature (C)", "No Reading")
        self.temperature = AMBIENT_C
        self.setpoint = AMBIENT_C
        self.heating = False

    def on_confirm(self) -> None:
        setpoint = float(self.get_field("Setpoint Entry"))
        mode = self._selection("Mode Selection")
        self.setpoint, self.heating = setpoint, mode == "On"
        self._set_output("Device Setpoint", f"{setpoint:.1f}")
        self._set_output("Device Mode", mode)

    def on_update(self, dt: float) -> None:
        target = self.setpoint if self.heating else AMBIENT_C
        self.temperature = target + (self.temperature - target) * math.exp(-dt / self.TAU_S)
        self._set_output("Temperature", f"{self.temperature:.2f}")


class ValveWidget(FakeWidget):
    """An open/closed valve: after Confirm, ``Actual Position`` reads ``Moving`` for :attr:`TRAVEL_S`
    simulated seconds, then the selected position."""

    TRAVEL_S = 2.0
    POSITIONS = ("Closed", "Open")

    def __init__(self, dashboard: SimulatedDashboard, name: str = "Valve", nickname: str = "Valve") -> None:
        super().__init__(dashboard, name, nickname)
        self.add_field("dropdown", "Position Selection", "Position", "Closed", options=list(self.POSITIONS))
        self.add_field("text output", "Actual Position", "Actual Position", "No Reading")
        self.position = "Closed"
        self.target = "Closed"
        self.travel_left = 0.0

    def on_confirm(self) -> None:
        target = self._selection("Position Selection")
        if target != self.position:
            self.target, self.travel_left = target, self.TRAVEL_S

    def on_update(self, dt: float) -> None:
        if self.target != self.position:
            self.travel_left -= dt
            if self.travel_left <= 0:
                self.position = self.target
        self._set_output("Actual Position", self.position if self.target == self.position else "Moving")


class FlowControllerWidget(FakeWidget):
    """A mass flow controller shaped like pyopticon's AalborgDPCWidget (section 1.6): ``Actual Flow``
    approaches 0 (Closed), the confirmed setpoint (Setpoint) or :attr:`MAX_FLOW` (Open) with time constant
    :attr:`TAU_S` simulated seconds."""

    TAU_S = 1.0
    MAX_FLOW = 100.0
    GASES = ("N2", "Ar", "He", "H2", "CO2")
    MODES = ("Closed", "Setpoint", "Open")

    def __init__(self, dashboard: SimulatedDashboard, name: str = "Mass Flow", nickname: str = "MFC") -> None:
        super().__init__(dashboard, name, nickname)
        self.add_field("dropdown", "Gas Selection", "Gas", "N2", options=list(self.GASES))
        self.add_field("dropdown", "Mode Selection", "Mode", "Closed", options=list(self.MODES))
        self.add_field("text input", "Setpoint Entry", "Setpoint (sccm)", "0.0")
        self.add_field("text output", "Device Gas", "Device Gas", "None")
        self.add_field("text output", "Device Mode", "Device Mode", "None")
        self.add_field("text output", "Device Setpoint", "Device Setpoint", "None")
        self.add_field("text output", "Actual Flow", "Actual Flow (sccm)", "None")
        self.flow = 0.0
        self.mode = "Closed"
        self.setpoint = 0.0

    def on_confirm(self) -> None:
        gas = self._selection("Gas Selection")
        mode = self._selection("Mode Selection")
        setpoint = float(self.get_field("Setpoint Entry"))
        if not 0.0 <= setpoint <= self.MAX_FLOW:
            raise ValueError(f"{self.name}: setpoint {setpoint} outside 0..{self.MAX_FLOW}")
        self.mode, self.setpoint = mode, setpoint
        self._set_output("Device Gas", gas)
        self._set_output("Device Mode", mode)
        self._set_output("Device Setpoint", f"{setpoint:.2f}")

    def on_update(self, dt: float) -> None:
        target = {"Closed": 0.0, "Setpoint": self.setpoint, "Open": self.MAX_FLOW}[self.mode]
        self.flow = target + (self.flow - target) * math.exp(-dt / self.TAU_S)
        self._set_output("Actual Flow", f"{self.flow:.2f}")


class SimulatedDashboard:
    """What ``get_dashboard()`` returns in Eval/Exec: the parts of ``PyOpticonDashboard`` the socket
    commands and the documented introspection use (``widgets_by_nickname``, ``get_field``, ...).

    :param set_delay: seconds between a Set's ``Success`` and the value being stored.
    :param confirm_delay: seconds between a Confirm's ``Success`` and the widget's ``on_confirm``.
    """

    def __init__(self, set_delay: float = 0.0, confirm_delay: float = 0.05) -> None:
        self.set_delay = set_delay
        self.confirm_delay = confirm_delay
        self.all_widgets: list[FakeWidget | MinimalFakeWidget] = []
        self.widgets_by_nickname: dict[str, Any] = {}
        self.serial_connected = False
        self.offline_mode = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, tuple[asyncio.TimerHandle, Callable[[], object], str]] = {}
        self._next_id = 0
        #: Called after each scheduled callback ran (the server uses it to wake its waiters).
        self.on_change: Callable[[], None] | None = None

    def add_widget(self, widget: FakeWidget | MinimalFakeWidget, row: int = 0, column: int = 0) -> None:
        """Register *widget*; a nickname makes it addressable (a duplicate wins with a warning, 1.6)."""
        self.all_widgets.append(widget)
        nickname = getattr(widget, "nickname", None)
        if nickname is not None:
            if nickname in self.widgets_by_nickname:
                logger.warning("Warning: adding a widget with a duplicate nickname %r", nickname)
            self.widgets_by_nickname[nickname] = widget

    def get_field(self, target_widget_nickname: str, target_field: str) -> str:
        """``PyOpticonDashboard.get_field``: KeyError for an unknown widget or field."""
        return str(self.widgets_by_nickname[target_widget_nickname].get_field(target_field))

    def set_field(
        self, target_widget_nickname: str, target_field: str, new_value: object, confirm: bool = True
    ) -> None:
        """``PyOpticonDashboard.set_field``: schedules the update, then optionally confirms."""
        widget = self.widgets_by_nickname[target_widget_nickname]
        widget.set_field(target_field, new_value)
        if confirm:
            widget.confirm()

    def get_widget_by_nickname(self, nickname: str) -> Any:
        """The widget with that nickname (KeyError if none)."""
        return self.widgets_by_nickname[nickname]

    def get_widgets_by_nickname(self) -> dict[str, Any]:
        """Nickname -> widget."""
        return self.widgets_by_nickname

    def check_offline_mode(self) -> bool:
        """Always true: the fake has no serial ports."""
        return self.offline_mode

    def check_serial_connected(self) -> bool:
        """Always false: the fake has no serial ports."""
        return self.serial_connected

    def exc_handler(self, exc: BaseException, source: str = "system") -> None:
        """Log an exception the way the dashboard reports it on its console."""
        logger.warning("Exception in %s: %s", source, exc)

    def after(self, delay: float, fn: Callable[[], object], source: str = "internal PyOpticon code") -> int:
        """Run *fn* on the event loop after *delay* seconds (Tk's ``root.after``); exceptions are logged.

        :returns: an id (the real one returns Tk's after-id).
        :raises RuntimeError: no event loop is running.
        """
        loop = self._loop or asyncio.get_running_loop()
        self._next_id += 1
        ident = self._next_id
        handle = loop.call_later(max(delay, 0.0), self._run_pending, ident)
        self._pending[ident] = (handle, fn, source)
        return ident

    def _run_pending(self, ident: int) -> None:
        entry = self._pending.pop(ident, None)
        if entry is None:
            return
        _, fn, source = entry
        try:
            fn()
        except Exception as exc:  # the real dashboard reports and carries on
            self.exc_handler(exc, source)
        if self.on_change is not None:
            self.on_change()

    @property
    def pending(self) -> int:
        """Scheduled Set applications, confirms and ``do_threadsafe`` calls not yet run."""
        return len(self._pending)

    def apply_pending(self) -> None:
        """Run every scheduled callback now, in due order (a test hook)."""
        for ident, (handle, _, _) in sorted(self._pending.items(), key=lambda item: item[1][0].when()):
            handle.cancel()
            self._run_pending(ident)

    def _cancel_pending(self) -> None:
        for handle, _, _ in self._pending.values():
            handle.cancel()
        self._pending.clear()

    def update(self, dt: float) -> None:
        """Advance every widget by *dt* simulated seconds (exceptions are logged, as in on_update)."""
        for widget in self.all_widgets:
            try:
                widget.on_update(dt)
            except Exception as exc:
                self.exc_handler(exc, "on_update")


def default_widgets(dashboard: SimulatedDashboard) -> None:
    """Add the standard instruments: a title (not addressable), ``Heater``, ``Valve`` and ``MFC``."""
    dashboard.add_widget(MinimalFakeWidget(dashboard, "Title"), 0, 1)
    dashboard.add_widget(HeaterWidget(dashboard), 1, 1)
    dashboard.add_widget(ValveWidget(dashboard), 2, 1)
    dashboard.add_widget(FlowControllerWidget(dashboard), 3, 1)


class _DropConnection(Exception):
    """The real command loop's outer handler: log "left hanging", close, re-listen (section 1.1)."""


class FakeOpticonDashboard:
    """A fake dashboard serving the socket protocol on one or more ports.

    :param host: address to bind (default loopback).
    :param port: first port; 0 picks a free one.
    :param extra_ports: more ports, one more simultaneous client each (section 1.4).
    :param speed: simulated seconds per real second for the instruments.
    :param poll_interval: real seconds between instrument updates (the dashboard's polling interval).
    :param set_delay: seconds before a Set takes effect (0: on the next loop iteration, like ``after(0)``).
    :param confirm_delay: seconds before a Confirm runs ``on_confirm``.
    :param widgets: add the default instruments (:func:`default_widgets`).
    :param minimal_nickname: also register a field-less MinimalWidget under this nickname (it makes the
        documented introspection expression fail, as on a real dashboard, section 1.6).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        extra_ports: Sequence[int] = (),
        speed: float = 1.0,
        poll_interval: float = 1.0,
        set_delay: float = 0.0,
        confirm_delay: float = 0.05,
        widgets: bool = True,
        minimal_nickname: str | None = None,
    ) -> None:
        if speed <= 0 or poll_interval <= 0:
            raise ValueError("speed and poll_interval must be > 0")
        self.host = host
        self._requested_ports = [port, *extra_ports]
        self.speed = speed
        self.poll_interval = poll_interval
        self.dashboard = SimulatedDashboard(set_delay, confirm_delay)
        if widgets:
            default_widgets(self.dashboard)
        if minimal_nickname is not None:
            self.dashboard.add_widget(MinimalFakeWidget(self.dashboard, minimal_nickname, minimal_nickname))
        self.ports: list[int] = []
        #: Requests received (each recv with data), over all ports.
        self.requests_received = 0
        #: Connections accepted, over all ports.
        self.connections_accepted = 0
        #: Connections ended by a Close request.
        self.closes = 0
        #: Connections dropped ("left hanging; resetting").
        self.drops = 0
        #: The last requests as ``(port, decoded JSON object)``, oldest first.
        self.commands: collections.deque[tuple[int, Any]] = collections.deque(maxlen=COMMAND_LOG_LENGTH)
        self._listeners: list[socket.socket] = []
        self._active: list[socket.socket | None] = []
        self._previous: list[object] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self._force_disconnect = False
        self.dashboard.on_change = self._notify

    # -------------------------------------------------------------------------------------------------
    # Life cycle

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` of the first port (after :meth:`start`)."""
        return self.host, self.ports[0]

    @property
    def sockets_connected(self) -> int:
        """Clients being served now (the socket widget's "Sockets connected: N")."""
        return sum(conn is not None for conn in self._active)

    async def start(self) -> tuple[str, int]:
        """Bind every port and start serving and simulating.

        :returns: ``(host, port)`` of the first port.
        :raises OSError: a port cannot be bound.
        """
        loop = asyncio.get_running_loop()
        self.dashboard._loop = loop
        try:
            for port in self._requested_ports:
                listener = self._listen(port)
                self._listeners.append(listener)
                self.ports.append(listener.getsockname()[1])
        except OSError:
            for listener in self._listeners:
                listener.close()
            self._listeners.clear()
            raise
        self._active = [None] * len(self.ports)
        self._previous = [_NO_REPLY] * len(self.ports)
        self._tasks = [loop.create_task(self._serve_port(i)) for i in range(len(self.ports))]
        self._tasks.append(loop.create_task(self._simulate()))
        return self.address

    async def stop(self) -> None:
        """Stop serving: connected clients see the connection close; scheduled updates are dropped."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        self.dashboard._cancel_pending()
        self._notify()

    def force_disconnect(self) -> None:
        """The GUI's "Force Disconnect" button: drop every connected client (section 1.4)."""
        self._force_disconnect = True
        for conn in self._active:
            if conn is not None:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until *predicate()* is true, re-checked after every request, connection event and
        instrument update.

        :raises TimeoutError: not true within *timeout* seconds.
        """

        async def wait() -> None:
            while not predicate():
                event = self._changed
                await event.wait()

        await asyncio.wait_for(wait(), timeout)

    async def wait_requests(self, count: int, timeout: float = 5.0) -> None:
        """Wait until :attr:`requests_received` reaches *count* (and those requests were handled)."""
        await self.wait_until(lambda: self.requests_received >= count, timeout)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _listen(self, port: int) -> socket.socket:
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        listener = socket.socket(family, kind, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        return listener

    async def _simulate(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        self.dashboard.update(0.0)
        while True:
            await asyncio.sleep(self.poll_interval)
            now = loop.time()
            self.dashboard.update((now - last) * self.speed)
            last = now
            self._notify()

    # -------------------------------------------------------------------------------------------------
    # Serving

    async def _serve_port(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        port = self.ports[index]
        try:
            while True:
                conn, peer = await loop.sock_accept(self._listeners[index])
                conn.setblocking(False)
                logger.info("Connection to socket %s from: %s", port, peer)
                self._active[index] = conn
                self.connections_accepted += 1
                self._notify()
                try:
                    await self._serve_connection(index, conn)
                except _DropConnection as exc:
                    logger.info("Old socket %s appears to have been left hanging; resetting. (%s)", port, exc)
                    self.drops += 1
                finally:
                    self._active[index] = None
                    conn.close()
                    self._force_disconnect = self._force_disconnect and self.sockets_connected > 0
                    self._notify()
                # The real thread builds a fresh listener for the next client; the old one and any clients
                # waiting in its backlog are discarded, and those clients see ECONNRESET (section 1.4).
                self._listeners[index].close()
                try:
                    self._listeners[index] = self._listen(port)
                except OSError:
                    logger.warning("Socket %s could not be opened.", port)
                    return
        finally:
            conn_left = self._active[index]
            if conn_left is not None:
                conn_left.close()
                self._active[index] = None

    async def _serve_connection(self, index: int, conn: socket.socket) -> None:
        """Serve one client until Close (normal return) or an error (:class:`_DropConnection`)."""
        loop = asyncio.get_running_loop()
        port = self.ports[index]
        while True:
            try:
                data = await loop.sock_recv(conn, RECV_BYTES)
            except OSError as exc:
                raise _DropConnection(exc) from exc
            if not data and self._force_disconnect:
                logger.info("Socket %s closed normally.", port)
                return
            if data:
                self.requests_received += 1
            try:
                # One recv is one request: json.loads sees exactly what arrived (section 1.1).
                request = json.loads(data.decode())
                command = request["cmd"]
            except Exception as exc:  # '' (peer closed), bad JSON, two objects, no 'cmd', not a dict
                self._notify()
                raise _DropConnection(exc) from exc
            self.commands.append((port, request))
            if command == "Close":
                logger.info("Socket %s closed normally.", port)
                self.closes += 1
                self._notify()
                return
            try:
                reply = self._dispatch(port, command, request)
            except Exception as exc:
                reply = "Error: " + str(exc)
                self.dashboard.exc_handler(exc, "user-supplied socket command execution")
            except SystemExit as exc:  # e.g. Eval of exit(): the real port thread would end; drop instead
                self._notify()
                raise _DropConnection(f"SystemExit({exc})") from None
            if reply is _NO_REPLY:  # unknown cmd: no branch ran, the previous reply is sent again (1.2)
                reply = self._previous[index]
            self._previous[index] = reply
            self._notify()
            if reply is _NO_REPLY:
                raise _DropConnection("no reply to send yet (UnboundLocalError in the real dashboard)")
            if not isinstance(reply, str):
                raise _DropConnection(f"{type(reply).__name__!r} object has no attribute 'encode'")
            try:
                await loop.sock_sendall(conn, reply.encode())
            except OSError as exc:
                raise _DropConnection(exc) from exc

    def _namespace(self) -> dict[str, Any]:
        """The Eval/Exec globals: ``get_dashboard()`` and ``do_threadsafe(f)`` (section 1.2)."""
        dashboard = self.dashboard
        return {"get_dashboard": lambda: dashboard, "do_threadsafe": lambda f: dashboard.after(0.0, f)}

    def _dispatch(self, port: int, command: object, request: dict[str, Any]) -> object:
        """Run one command as the real loop's ``if`` chain does, checks in the same order (section 1.2).

        :returns: the reply object (a str unless an Eval returned something else), or ``_NO_REPLY`` for
            an unknown command.
        """
        heard = f"Received command on socket {port}: "
        if command == "Get":
            if request["printout"]:
                logger.info(heard + "Get " + request["field_name"] + " in " + request["widget_nickname"])
            return self.dashboard.get_field(request["widget_nickname"], request["field_name"])
        if command == "Set":
            if request["printout"]:
                logger.info(
                    heard
                    + "Set "
                    + request["field_name"]
                    + " in "
                    + request["widget_nickname"]
                    + " to "
                    + request["new_value"]
                )
            self.dashboard.set_field(
                request["widget_nickname"], request["field_name"], request["new_value"], False
            )
            return "Success"
        if command == "Confirm":
            if request["printout"]:
                logger.info(heard + "Confirm in " + request["widget_nickname"])
            self.dashboard.get_widget_by_nickname(request["widget_nickname"]).confirm()
            return "Success"
        if command == "Eval":
            if request["printout"]:
                logger.info(heard + "eval")
            return eval(request["code"], self._namespace())
        if command == "Exec":
            if request["printout"]:
                logger.info(heard + "exec")
            exec(_rewrite_exec(request["code"]), self._namespace())
            return "Success"
        return _NO_REPLY


_NO_REPLY: Any = object()


def _rewrite_exec(code: str) -> str:
    """The real dashboard's Exec rewriting (section 1.2): refuse ``do_exec``; a leading ``def`` line is
    renamed ``to_exec`` and called; else text from ``lambda`` on is bound to ``to_exec`` and called."""
    if "do_exec" in code:
        raise Exception(_EXEC_INLINE_REFUSAL)
    if code.startswith("def"):
        body = code[code.index("\n") + 1 :]
        return "def to_exec():\n" + body + "\nto_exec()"
    if "lambda" in code:
        return "to_exec = " + code[code.index("lambda") :] + "\nto_exec()"
    return code


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m fake_servers.opticon_dashboard [--port P] [--extra-port P] [--speed S] ...``."""
    parser = base_parser(
        "Fake PyOpticon dashboard (socket protocol, simulated instruments)", default_port=12345
    )
    parser.add_argument("--extra-port", type=int, action="append", default=[], help="another socket port")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between instrument updates")
    parser.add_argument("--set-delay", type=float, default=0.0, help="seconds before a Set takes effect")
    parser.add_argument("--confirm-delay", type=float, default=0.05, help="seconds before a Confirm acts")
    parser.add_argument(
        "--minimal-nickname", default=None, help="register a field-less widget under this name"
    )
    args = parser.parse_args(argv)
    fake = FakeOpticonDashboard(
        args.host,
        args.port,
        extra_ports=args.extra_port,
        speed=args.speed,
        poll_interval=args.poll_interval,
        set_delay=args.set_delay,
        confirm_delay=args.confirm_delay,
        minimal_nickname=args.minimal_nickname,
    )
    serve_until_signalled(fake.start, fake.stop, args.log_level)


if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in the tests
    main(sys.argv[1:])
