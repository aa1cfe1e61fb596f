"""Metrics of a side-by-side run: samples per client, medians, ranges, ratios and targets."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Metric", "Target", "format_table", "CLIENTS"]

#: The two sides, in the order the table shows them (the ratio is the first over the second).
CLIENTS = ("katclient", "aiokatcp")


@dataclass(frozen=True)
class Target:
    """A goal on the ratio katclient/aiokatcp: ``>= value`` or ``<= value``."""

    op: str
    value: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:.3g}"


@dataclass
class Metric:
    """One measured quantity, sampled for both clients.

    :ivar name: e.g. ``"ingest 1000 sensors"``.
    :ivar unit: e.g. ``"updates/s"``, ``"s"``, ``"us/update"``.
    :ivar target: the goal on the ratio, if any.
    """

    name: str
    unit: str
    target: Target | None = None
    samples: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CLIENTS})

    def add(self, client: str, value: float) -> None:
        self.samples[client].append(value)

    def median(self, client: str) -> float:
        return statistics.median(self.samples[client]) if self.samples[client] else float("nan")

    @property
    def ratio(self) -> float:
        a = self.median(CLIENTS[1])
        return self.median(CLIENTS[0]) / a if a else float("nan")

    @property
    def met(self) -> bool | None:
        if self.target is None or not all(self.samples.values()):
            return None
        return self.target.met(self.ratio)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "samples": self.samples,
            "median": {c: self.median(c) for c in CLIENTS},
            "min": {c: min(v) if v else None for c, v in self.samples.items()},
            "max": {c: max(v) if v else None for c, v in self.samples.items()},
            "ratio": self.ratio,
            "target": str(self.target) if self.target else None,
            "met": self.met,
        }


def _num(x: float) -> str:
    if x != x:  # nan
        return "-"
    ax = abs(x)
    if ax >= 1e5:
        return f"{x / 1000:.0f}k"
    if ax >= 1000:
        return f"{x / 1000:.1f}k"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _cell(metric: Metric, client: str) -> str:
    v = metric.samples[client]
    if not v:
        return "-"
    return f"{_num(metric.median(client))} [{_num(min(v))}-{_num(max(v))}]"


def format_table(metrics: list[Metric]) -> str:
    """A Markdown table: metric, unit, each client's median [min-max], ratio, target, verdict."""
    header = ["metric", "unit", f"{CLIENTS[0]} median [min-max]", f"{CLIENTS[1]} median [min-max]",
              f"ratio {CLIENTS[0][:4]}/{CLIENTS[1][:4]}", "target", "met"]
    rows = [header]
    for m in metrics:
        met = {True: "yes", False: "NO", None: ""}[m.met]
        ratio = "-" if m.ratio != m.ratio else f"{m.ratio:.2f}"
        rows.append([m.name, m.unit, _cell(m, CLIENTS[0]), _cell(m, CLIENTS[1]), ratio,
                     str(m.target or ""), met])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
