"""Exponential random backoff, as katcp-python's ``ExponentialRandomBackoff`` documents it.

Source: protocols/katcp.md section 2.7.  The delay is drawn uniformly from
``[(1 - randomicity) * base, base)`` and capped at ``delay_max``; :meth:`failed`
multiplies ``base`` by ``exp_fac`` (capped at ``delay_max``) and :meth:`success`
resets it to ``delay_initial``.  Unlike katcp-python, every katclient loop that
retries (TCP reconnects, failed syncs, foreign-protocol reconnects) calls
:meth:`success` after a success, so the base really resets (katcp.md 2.9 item 1).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from katclient.protocol.errors import InvalidUsage

__all__ = ["ExponentialRandomBackoff"]


class ExponentialRandomBackoff:
    """Randomised exponential backoff.

    :param delay_initial: first base delay, in seconds (>= 0).
    :param delay_max: largest delay ever returned, in seconds (>= ``delay_initial``).
    :param exp_fac: factor applied to the base on each failure (> 1).
    :param randomicity: fraction of the base that is random, in [0, 1]; 0 gives a fixed delay.
    :param rand: source of uniform floats in [0, 1) (injectable for tests).
    :raises InvalidUsage: when a parameter is out of range.
    """

    __slots__ = ("delay_initial", "delay_max", "exp_fac", "randomicity", "_rand", "_base", "delay")

    def __init__(
        self,
        delay_initial: float = 1.0,
        delay_max: float = 90.0,
        exp_fac: float = 3.0,
        randomicity: float = 0.95,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not 0 <= delay_initial <= delay_max:
            raise InvalidUsage(f"need 0 <= delay_initial <= delay_max, got {delay_initial}, {delay_max}")
        if not 0 <= randomicity <= 1:
            raise InvalidUsage(f"randomicity must be in [0, 1], got {randomicity}")
        if not exp_fac > 1:
            raise InvalidUsage(f"exp_fac must be > 1, got {exp_fac}")
        self.delay_initial = float(delay_initial)
        self.delay_max = float(delay_max)
        self.exp_fac = float(exp_fac)
        self.randomicity = float(randomicity)
        self._rand = rand
        self._base = self.delay_initial
        #: The current delay in seconds, redrawn after each :meth:`failed` / :meth:`success`.
        self.delay = 0.0
        self._update()

    @property
    def base(self) -> float:
        """The current base delay in seconds (upper bound of the next draw)."""
        return self._base

    def _update(self) -> None:
        r = self.randomicity
        self.delay = min(((1.0 - r) + r * self._rand()) * self._base, self.delay_max)

    def failed(self) -> None:
        """Record a failure: grow the base by ``exp_fac`` (capped) and redraw :attr:`delay`."""
        self._base = min(self._base * self.exp_fac, self.delay_max)
        self._update()

    def success(self) -> None:
        """Record a success: reset the base to ``delay_initial`` and redraw :attr:`delay`."""
        self._base = self.delay_initial
        self._update()
