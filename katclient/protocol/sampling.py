"""Sampling strategies: names, parameters and their validation (sans-I/O).

Sources: KATCP v5 spec section 3.5.3 (``?sensor-sampling``) and protocols/katcp.md
1.7 (the seven strategies; v4 allows none/auto/period/event/differential and takes
the ``period`` parameter in milliseconds, v5 in seconds).  katcp-python rejects
``differential 5.0`` for an integer sensor and answers bad parameters with a
traceback (katcp.md 1.7); here every problem is a one-line reason.

Inside katclient every time parameter is float seconds; only the wire form
depends on the protocol version.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from typing import Final, NamedTuple

from katclient.protocol.errors import InvalidUsage
from katclient.protocol.sensors import SensorType

__all__ = ["Strategy", "Sampling", "parse_sampling", "V4_STRATEGIES"]


class Strategy(enum.Enum):
    """The seven sampling strategies, valued by their wire names."""

    NONE = "none"
    AUTO = "auto"
    PERIOD = "period"
    EVENT = "event"
    DIFFERENTIAL = "differential"
    EVENT_RATE = "event-rate"
    DIFFERENTIAL_RATE = "differential-rate"


#: Strategies a v4 device accepts (katcp.md 1.4).
V4_STRATEGIES: Final = frozenset(
    {Strategy.NONE, Strategy.AUTO, Strategy.PERIOD, Strategy.EVENT, Strategy.DIFFERENTIAL}
)

_PARAM_NAMES: Final = {
    Strategy.NONE: (),
    Strategy.AUTO: (),
    Strategy.EVENT: (),
    Strategy.PERIOD: ("period",),
    Strategy.DIFFERENTIAL: ("difference",),
    Strategy.EVENT_RATE: ("shortest period", "longest period"),
    Strategy.DIFFERENTIAL_RATE: ("difference", "shortest period", "longest period"),
}


class Sampling(NamedTuple):
    """A validated strategy with its parameters in katclient units.

    :ivar strategy: the :class:`Strategy`.
    :ivar params: floats: ``period`` seconds; ``differential`` the dead-band;
        ``event-rate`` (shortest, longest) seconds; ``differential-rate``
        (difference, shortest, longest).
    """

    strategy: Strategy
    params: tuple[float, ...] = ()

    def wire_arguments(self, major: int = 5) -> tuple[bytes, ...]:
        """The strategy and parameters as ``?sensor-sampling`` arguments for protocol ``major``."""
        args = [self.strategy.value.encode("ascii")]
        if self.strategy is Strategy.PERIOD and major < 5:
            args.append(b"%d" % round(self.params[0] * 1000.0))
        else:
            args.extend(_fmt(p) for p in self.params)
        return tuple(args)


def _fmt(x: float) -> bytes:
    if x == int(x) and abs(x) < 1e15:
        return b"%d" % int(x)
    return repr(x).encode("ascii")


def parse_sampling(
    strategy: bytes | str | Strategy,
    params: Sequence[bytes | str | float] = (),
    sensor_type: SensorType | None = None,
    major: int = 5,
) -> Sampling:
    """Validate a strategy and its parameters.

    :param strategy: wire name or :class:`Strategy`.
    :param params: the parameters, as wire bytes or numbers.
    :param sensor_type: the sensor's type, to reject differential strategies on
        non-numeric sensors (``None`` skips that check).
    :param major: KATCP major version: v4 takes ``period`` in milliseconds and
        allows only :data:`V4_STRATEGIES`.
    :returns: a :class:`Sampling` with parameters in seconds.
    :raises InvalidUsage: with a one-line reason for an unknown strategy, a wrong
        number of parameters, a non-numeric, negative or non-finite parameter, a zero
        period, shortest > longest, or a differential strategy on a non-numeric sensor.
    """
    if isinstance(strategy, Strategy):
        strat = strategy
    else:
        name = strategy.decode("ascii", "replace") if isinstance(strategy, bytes) else strategy
        try:
            strat = Strategy(name)
        except ValueError:
            raise InvalidUsage(f"Unknown strategy {name!r}") from None
    if major < 5 and strat not in V4_STRATEGIES:
        raise InvalidUsage(f"Strategy {strat.value} needs KATCP v5")
    names = _PARAM_NAMES[strat]
    if len(params) != len(names):
        want = ", ".join(names) if names else "no parameters"
        raise InvalidUsage(
            f"Strategy {strat.value} takes {len(names)} parameter(s) ({want}), got {len(params)}"
        )
    values: list[float] = []
    for pname, raw in zip(names, params):
        try:
            v = float(raw)
        except (TypeError, ValueError):
            raise InvalidUsage(f"Bad {pname} {raw!r} for strategy {strat.value}: not a number") from None
        if not math.isfinite(v) or v < 0:
            raise InvalidUsage(f"Bad {pname} {raw!r} for strategy {strat.value}: must be finite and >= 0")
        values.append(v)
    if strat is Strategy.PERIOD:
        if major < 5:
            values[0] *= 0.001
        if values[0] <= 0:
            raise InvalidUsage("Period must be > 0")
    elif strat in (Strategy.EVENT_RATE, Strategy.DIFFERENTIAL_RATE):
        if values[-2] > values[-1]:
            raise InvalidUsage(
                f"Shortest period {values[-2]:g} s is longer than longest period {values[-1]:g} s"
            )
    if (
        strat in (Strategy.DIFFERENTIAL, Strategy.DIFFERENTIAL_RATE)
        and sensor_type is not None
        and not sensor_type.numeric
    ):
        raise InvalidUsage(f"Strategy {strat.value} needs a numeric sensor, not {sensor_type.name}")
    return Sampling(strat, tuple(values))
