"""The virtual-device framework: a KATCP DeviceServer backed by a foreign protocol.

Source: DESIGN.md sections 1 and 4.  A virtual device is a
:class:`~katclient.server.DeviceServer` whose sensors and requests mirror another
system (Scrutiny, PyOpticon, the scan server).  It runs in-process (the CLI's
``katclient inspect scrutiny://...`` starts one on an ephemeral loopback port) or as
a standalone gateway (``katclient bridge``) that any KATCP client can use.

What every virtual device shares, and so lives here:

* the life cycle: :meth:`VirtualDevice.start` starts the KATCP listener *and* a
  backend task (:meth:`VirtualDevice.run_backend`) that connects to the foreign system,
  keeps the model current and reconnects with an
  :class:`~katclient.client.backoff.ExponentialRandomBackoff`; :meth:`stop` ends both;
* name mapping (:class:`NameMap`): foreign names become KATCP sensor names (lower
  case, ``.`` between levels, ``-`` inside words); the original is kept, collisions
  get a suffix, and requests accept either form;
* model updates in one batch (:meth:`VirtualDevice.replace_sensors`) so that a new
  backend model costs one ``#interface-changed``, and :meth:`mark_unreachable` for a
  backend that went away (values kept, status ``unreachable``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import typing
from collections.abc import Iterable
from typing import Any, ClassVar, Final

from katclient.client.backoff import ExponentialRandomBackoff
from katclient.protocol import InvalidUsage, Reading, Status
from katclient.server import DeviceServer, Sensor

__all__ = ["VirtualDevice", "NameMap", "katcp_name"]

logger = logging.getLogger(__name__)

#: Seconds :meth:`VirtualDevice.on_stop` waits for the backend task after cancelling it.
BACKEND_STOP_TIMEOUT: Final = 5.0

_BAD_CHARS: Final = re.compile(r"[^a-z0-9.-]+")
_DOTS: Final = re.compile(r"\.{2,}")
_DASHES: Final = re.compile(r"-{2,}")


def katcp_name(foreign: str, separator: str = "/") -> str:
    """Turn a foreign name into a KATCP-style sensor name (DESIGN.md section 4).

    ``/Path/To/My Var`` with separator ``/`` gives ``path.to.my-var``; camelCase is kept
    as lower case; anything outside ``[a-z0-9.-]`` becomes ``-``; the result starts
    with a letter (``x`` is prefixed otherwise).

    :param foreign: the original name.
    :param separator: the foreign hierarchy separator, mapped to ``.``.
    """
    text = foreign.strip().strip(separator) if separator else foreign.strip()
    if separator:
        text = text.replace(separator, ".")
    text = _BAD_CHARS.sub("-", text.lower())
    text = _DOTS.sub(".", _DASHES.sub("-", text))
    text = ".".join(part.strip("-") or "x" for part in text.split("."))
    text = text.strip(".-")
    if not text or not text[0].isalpha():
        text = "x" + text if text else "x"
    return text


class NameMap:
    """A two-way map between foreign names and unique KATCP names.

    Collisions get ``-2``, ``-3``... suffixes in insertion order, so the mapping is
    stable for a given model.  :meth:`resolve` accepts either form.
    """

    __slots__ = ("_separator", "_to_katcp", "_to_foreign", "_reserved")

    def __init__(self, separator: str = "/", reserved: Iterable[str] = ()) -> None:
        self._separator = separator
        self._to_katcp: dict[str, str] = {}
        self._to_foreign: dict[str, str] = {}
        self._reserved = set(reserved)

    def add(self, foreign: str) -> str:
        """Map ``foreign`` (idempotent) and return its KATCP name."""
        existing = self._to_katcp.get(foreign)
        if existing is not None:
            return existing
        base = katcp_name(foreign, self._separator)
        name, n = base, 1
        while name in self._to_foreign or name in self._reserved:
            n += 1
            name = f"{base}-{n}"
        self._to_katcp[foreign] = name
        self._to_foreign[name] = foreign
        return name

    def discard(self, foreign: str) -> None:
        name = self._to_katcp.pop(foreign, None)
        if name is not None:
            del self._to_foreign[name]

    def clear(self) -> None:
        self._to_katcp.clear()
        self._to_foreign.clear()

    def katcp(self, foreign: str) -> str:
        """The KATCP name of ``foreign``.  :raises KeyError: when not mapped."""
        return self._to_katcp[foreign]

    def foreign(self, name: str) -> str:
        """The foreign name of KATCP name ``name``.  :raises KeyError: when not mapped."""
        return self._to_foreign[name]

    def resolve(self, name: str) -> str:
        """The foreign name for ``name`` given in either form.

        :raises InvalidUsage: when ``name`` is neither a mapped KATCP nor foreign name.
        """
        if name in self._to_katcp:
            return name
        try:
            return self._to_foreign[name]
        except KeyError:
            raise InvalidUsage(f"Unknown name {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._to_katcp or name in self._to_foreign

    def __len__(self) -> int:
        return len(self._to_katcp)

    def items(self) -> list[tuple[str, str]]:
        """``(foreign, katcp)`` pairs in insertion order."""
        return list(self._to_katcp.items())


class VirtualDevice(DeviceServer):
    """Base class of the virtual devices: a DeviceServer plus a backend task.

    Subclasses implement :meth:`run_backend` (one connection's life: connect, build the
    model, follow it until the connection ends — return or raise) and
    :meth:`close_backend`; the base class repeats :meth:`run_backend` with a backoff
    until :meth:`stop`.

    :param backend_host: the foreign system's host.
    :param backend_port: the foreign system's port.
    :param listen_host: KATCP listen address (loopback by default, DESIGN.md 5).
    :param listen_port: KATCP port; 0 picks a free one.
    :param reconnect_delay: backoff between backend connection attempts.
    :param startup_wait: seconds :meth:`start` waits for the first backend attempt to end (the
        model current, or the attempt failed), so that clients connecting right after start see
        the backend's model; 0 does not wait.
    :param server_options: passed to :class:`~katclient.server.DeviceServer`.
    """

    #: Target scheme, e.g. ``"scrutiny"`` (see :mod:`katclient.targets`).
    SCHEME: ClassVar[str] = ""
    #: The foreign system's default port.
    DEFAULT_PORT: ClassVar[int] = 0
    #: Names of the device's own status sensors (``server.connected``...), which
    #: :meth:`mark_unreachable` leaves alone: they describe the link, not the backend.
    STATUS_SENSORS: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        backend_host: str,
        backend_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        reconnect_delay: ExponentialRandomBackoff | None = None,
        startup_wait: float = 0.0,
        **server_options: Any,
    ) -> None:
        if not startup_wait >= 0:
            raise InvalidUsage(f"startup_wait must be >= 0 seconds, got {startup_wait!r}")
        super().__init__(listen_host, listen_port, **server_options)
        self.startup_wait = float(startup_wait)
        self.backend_host = backend_host
        self.backend_port = int(backend_port)
        self.reconnect_delay = reconnect_delay or ExponentialRandomBackoff(0.5, 10.0, 2.0, 0.5)
        self._backend_task: asyncio.Task[None] | None = None
        self._backend_stop: asyncio.Event | None = None
        #: Set while the backend is connected and the model is current.
        self.backend_ready: asyncio.Event = asyncio.Event()
        #: Set once the first :meth:`run_backend` ended (however it ended).
        self._first_attempt_ended = asyncio.Event()
        self.last_backend_error: BaseException | None = None

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` began: backend loops should end at their next check."""
        return self._backend_stop is not None and self._backend_stop.is_set()

    @classmethod
    def from_target(
        cls, host: str, port: int, *, listen_host: str = "127.0.0.1", listen_port: int = 0, **options: Any
    ) -> VirtualDevice:
        """Build the device for a TARGET's host and port (used by :mod:`katclient.targets`).

        String option values (from ``katclient ... -o KEY=VALUE``) are converted to the
        ``int``, ``float`` or ``bool`` their constructor parameter is annotated with.

        :raises InvalidUsage: for an unknown option or a value that does not convert.
        """
        return cls(host, port, listen_host=listen_host, listen_port=listen_port, **_typed_options(cls, options))

    # -- life cycle ----------------------------------------------------------------------
    async def start(self) -> tuple[str, int]:
        """Listen for KATCP clients, start following the backend, and wait up to
        :attr:`startup_wait` seconds for the first backend attempt to end.

        :returns: the KATCP ``(host, port)``.
        """
        address = await super().start()
        self._backend_stop = asyncio.Event()
        self._backend_task = asyncio.get_running_loop().create_task(self._backend_loop())
        if self.startup_wait > 0:
            await self._wait_first_attempt(self.startup_wait)
        return address

    async def _wait_first_attempt(self, timeout: float) -> None:
        waiters = {
            asyncio.ensure_future(self.backend_ready.wait()),
            asyncio.ensure_future(self._first_attempt_ended.wait()),
        }
        try:
            done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if not done:
            logger.info(
                "%s: %s:%s not ready within %g s; still trying",
                type(self).__name__, self.backend_host, self.backend_port, timeout,
            )

    async def on_stop(self) -> None:
        """End the backend task and connection (called by :meth:`DeviceServer.stop`)."""
        if self._backend_stop is not None:
            self._backend_stop.set()
        task = self._backend_task
        if task is not None and not task.done():
            task.cancel()
            # asyncio.wait neither raises nor swallows our own cancellation; before Python
            # 3.12 a wait_for inside the task can swallow the cancel, so bound the wait.
            await asyncio.wait({task}, timeout=BACKEND_STOP_TIMEOUT)
            if not task.done():
                logger.warning("%s: backend task did not end within %g s", type(self).__name__, BACKEND_STOP_TIMEOUT)
        self._backend_task = None
        await self.close_backend()

    async def _backend_loop(self) -> None:
        assert self._backend_stop is not None
        while not self._backend_stop.is_set():
            try:
                await self.run_backend()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_backend_error = exc
                logger.warning(
                    "%s: backend %s:%s failed: %s", type(self).__name__, self.backend_host, self.backend_port, exc
                )
            else:
                self.reconnect_delay.success()
            self._first_attempt_ended.set()
            self.backend_ready.clear()
            self.mark_unreachable()
            try:
                await self.close_backend()
            except Exception:
                logger.exception("%s: error closing the backend", type(self).__name__)
            stop_waiter = asyncio.ensure_future(self._backend_stop.wait())
            try:
                await asyncio.wait({stop_waiter}, timeout=self.reconnect_delay.delay)
            finally:
                stop_waiter.cancel()
            self.reconnect_delay.failed()

    async def run_backend(self) -> None:
        """One backend connection: connect, build the model, follow it; return when it ends.

        Raise to report a failure (it is logged and retried with :attr:`reconnect_delay`).
        Subclasses call ``self.backend_ready.set()`` once the model is current.
        """
        raise NotImplementedError

    async def close_backend(self) -> None:
        """Close the backend connection (idempotent).  Default: nothing."""

    async def wait_backend_ready(self, timeout: float | None = None) -> None:
        """Wait until the backend is connected and the model current.

        :raises asyncio.TimeoutError: after ``timeout`` seconds.
        """
        await asyncio.wait_for(self.backend_ready.wait(), timeout)

    # -- model helpers ---------------------------------------------------------------------
    def replace_sensors(self, wanted: Iterable[Sensor], keep: Iterable[str] = ()) -> None:
        """Make the backend-mirrored sensors exactly ``wanted`` in one batch.

        Sensors with the same name, type, params, units and description are kept (clients'
        strategies survive) and take the wanted sensor's reading unless that is still
        ``unknown``; changed ones are replaced; missing ones removed, except the names in
        ``keep`` (the device's own status sensors).  All
        changes fall in one loop iteration, so clients get one ``#interface-changed``.
        """
        wanted_by_name = {s.name: s for s in wanted}
        protected = set(keep)
        for name in [n for n in self.sensors if n not in wanted_by_name and n not in protected]:
            self.remove_sensor(name)
        for name, sensor in wanted_by_name.items():
            old = self.sensors.get(name)
            if old is not None and _same_shape(old, sensor):
                if sensor.status is not Status.UNKNOWN:
                    old.set_reading(sensor.reading)
                continue
            self.add_sensor(sensor)

    def mark_unreachable(self, names: Iterable[str] | None = None) -> None:
        """Keep each sensor's value with status ``unreachable`` (a backend went away).

        :param names: the sensors to mark; default: all but :attr:`STATUS_SENSORS`.
        """
        if names is None:
            names = [n for n in self.sensors if n not in self.STATUS_SENSORS]
        for sensor in [self.sensors[n] for n in names if n in self.sensors]:
            if sensor.status is not Status.UNREACHABLE:
                reading = sensor.reading
                sensor.set_reading(Reading(self.clock(), Status.UNREACHABLE, reading.value))


def _typed_options(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    init = vars(cls).get("__init__") or next(vars(c)["__init__"] for c in cls.__mro__ if "__init__" in vars(c))
    hints = typing.get_type_hints(init)
    params = inspect.signature(init).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key not in params and not takes_any:
            raise InvalidUsage(f"{cls.__name__} has no option {key!r}")
        hint = str(hints.get(key, ""))
        if isinstance(value, str):
            try:
                if "bool" in hint:
                    if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(value)
                    value = value.lower() in ("1", "true", "yes")
                elif "float" in hint:
                    value = float(value)
                elif "int" in hint:
                    value = int(value)
            except ValueError:
                raise InvalidUsage(f"option {key}={value!r}: expected {hint}") from None
        out[key] = value
    return out


def _same_shape(a: Sensor, b: Sensor) -> bool:
    return (
        a.type is b.type
        and a.params == b.params
        and a.units == b.units
        and a.description == b.description
    )
