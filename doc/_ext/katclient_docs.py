"""Sphinx helpers for katclient's manual (plain Python: no Graphviz, no network).

Directives
----------
``.. state-diagram::``
    An SVG drawing of the inspecting client's state machine, computed at build time from
    :data:`katclient.client.state.TRANSITIONS` (STYLE.md habit 2: the diagram is drawn from the
    table the client runs on, so the two cannot disagree).
``.. state-table::``
    The same table as a reStructuredText table (also the text fallback for non-HTML builders).
``.. api-module:: dotted.name``
    ``automodule`` for the objects *defined* in that module (each object is documented once, at
    its home), followed by a list of the names the module re-exports from elsewhere, linked to
    their homes.  A module that does not exist yet gives a visible note instead of a failed build.

Events
------
``missing-reference``
    A reference to a re-exported name (``katclient.InspectingClientAsync``,
    ``katclient.protocol.Message``) resolves to the object's documented home.
``autodoc-process-docstring``
    Shows the docstrings of ``request_<name>`` handlers verbatim: they are ``?help`` text.
"""

from __future__ import annotations

import collections
import html
import importlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_refnode, nested_parse_with_titles

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# The state diagram: layout and SVG from a transition table
# ----------------------------------------------------------------------------------------------

#: Vertical distance between layer centres, and horizontal distance between nodes of one layer.
LAYER_DY = 150.0
NODE_DX = 440.0
NODE_W = 270.0
NODE_H = 50.0
FONT_SIZE = 12.0
#: Rough width of one character of the label font, used to size label backgrounds.
CHAR_W = 6.8
#: Candidate deviations of an edge from the straight line, in drawing units, tried in order (the
#: cheapest one that avoids nodes, labels and other edges wins).
BENDS = (0.0, 40.0, -40.0, 80.0, -80.0, 120.0, -120.0, 170.0, -170.0, 230.0, -230.0,
         300.0, -300.0, 380.0, -380.0, 460.0, -460.0)

Point = tuple[float, float]


def _layers(start: Any, edges: Iterable[tuple[Any, Any]]) -> dict[Any, int]:
    """Breadth-first depth of every state from ``start`` (unreachable states go last)."""
    succ: dict[Any, list[Any]] = collections.defaultdict(list)
    nodes_seen: list[Any] = [start]
    for a, b in edges:
        succ[a].append(b)
        for n in (a, b):
            if n not in nodes_seen:
                nodes_seen.append(n)
    depth = {start: 0}
    queue = collections.deque([start])
    while queue:
        n = queue.popleft()
        for m in succ[n]:
            if m not in depth:
                depth[m] = depth[n] + 1
                queue.append(m)
    last = max(depth.values()) + 1
    for n in nodes_seen:
        depth.setdefault(n, last)
    return depth


def _quad(p0: Point, c: Point, p1: Point, t: float) -> Point:
    u = 1.0 - t
    return (u * u * p0[0] + 2 * u * t * c[0] + t * t * p1[0], u * u * p0[1] + 2 * u * t * c[1] + t * t * p1[1])


def _box_exit(center: Point, toward: Point) -> Point:
    """Where the ray from a node's centre toward ``toward`` leaves the node's rectangle."""
    dx, dy = toward[0] - center[0], toward[1] - center[1]
    if dx == 0 and dy == 0:
        return center
    sx = (NODE_W / 2) / abs(dx) if dx else math.inf
    sy = (NODE_H / 2) / abs(dy) if dy else math.inf
    s = min(sx, sy)
    return (center[0] + dx * s, center[1] + dy * s)


def _inside(p: Point, center: Point, margin: float) -> bool:
    return abs(p[0] - center[0]) < NODE_W / 2 + margin and abs(p[1] - center[1]) < NODE_H / 2 + margin


def _label_size(lines: list[str]) -> tuple[float, float]:
    return (max(len(s) for s in lines) * CHAR_W + 8, len(lines) * (FONT_SIZE + 2) + 4)


def layout_state_diagram(
    start: Any, transitions: Mapping[tuple[Any, Any], Any]
) -> tuple[dict[Any, Point], list[dict[str, Any]]]:
    """Place states in layers by distance from ``start`` and route one curve per (from, to) pair.

    :param transitions: ``(state, event) -> state``.
    :returns: ``(positions, edges)``; each edge is a dict with ``src``, ``dst``, ``events`` (event
        names in table order), ``kind`` (``"loop"`` or ``"curve"``) and its geometry.
    """
    pairs: dict[tuple[Any, Any], list[str]] = {}
    for (state, event), target in transitions.items():
        pairs.setdefault((state, target), []).append(getattr(event, "name", str(event)))
    depth = _layers(start, [p for p in pairs if p[0] != p[1]])
    by_layer: dict[int, list[Any]] = collections.defaultdict(list)
    for state, d in sorted(depth.items(), key=lambda kv: kv[1]):
        by_layer[d].append(state)
    positions: dict[Any, Point] = {}
    for d, members in by_layer.items():
        for i, state in enumerate(members):
            positions[state] = ((i - (len(members) - 1) / 2) * NODE_DX, d * LAYER_DY)

    edges: list[dict[str, Any]] = []
    drawn: list[Point] = []  # sample points of curves already routed
    labels: list[tuple[float, float, float, float]] = []  # label boxes already placed
    # Route forward edges first (they are straight), then the rest, shortest first.
    order = sorted(
        (p for p in pairs if p[0] != p[1]),
        key=lambda p: (depth[p[1]] != depth[p[0]] + 1, abs(depth[p[1]] - depth[p[0]]), depth[p[0]]),
    )
    for src, dst in order:
        a, b = positions[src], positions[dst]
        mid = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
        length = math.hypot(b[0] - a[0], b[1] - a[1]) or 1.0
        normal = (-(b[1] - a[1]) / length, (b[0] - a[0]) / length)
        lines = pairs[(src, dst)]
        lw, lh = _label_size(lines)
        best: tuple[float, float] | None = None
        for bend in BENDS:
            ctrl = (mid[0] + normal[0] * 2 * bend, mid[1] + normal[1] * 2 * bend)
            samples = [_quad(a, ctrl, b, i / 40) for i in range(41)]
            cost = abs(bend) / 40.0
            for other, centre in positions.items():
                if other in (src, dst):
                    continue
                cost += 100.0 * sum(_inside(p, centre, 12.0) for p in samples)
            interior = [p for p in samples if not _inside(p, a, 6.0) and not _inside(p, b, 6.0)]
            for p in interior:
                if any(math.hypot(p[0] - q[0], p[1] - q[1]) < 14.0 for q in drawn):
                    cost += 3.0
            lx, ly = _quad(a, ctrl, b, 0.5)
            if abs(lx) < abs(mid[0]) - 1.0:
                cost += 2.0  # bows toward the middle of the drawing, where the forward edges run
            for bx, by, bw, bh in labels:
                if abs(lx - bx) < (lw + bw) / 2 and abs(ly - by) < (lh + bh) / 2:
                    cost += 30.0
            for centre in positions.values():
                if abs(lx - centre[0]) < (lw + NODE_W) / 2 and abs(ly - centre[1]) < (lh + NODE_H) / 2:
                    cost += 60.0
            if best is None or cost < best[0]:
                best = (cost, bend)
        assert best is not None
        bend = best[1]
        ctrl = (mid[0] + normal[0] * 2 * bend, mid[1] + normal[1] * 2 * bend)
        p0, p1 = _box_exit(a, ctrl), _box_exit(b, ctrl)
        label = _quad(a, ctrl, b, 0.5)
        drawn.extend(_quad(a, ctrl, b, i / 40) for i in range(41))
        labels.append((label[0], label[1], lw, lh))
        edges.append({"src": src, "dst": dst, "events": lines, "kind": "curve",
                      "p0": p0, "ctrl": ctrl, "p1": p1, "label": label})
    for (src, dst), lines in pairs.items():
        if src == dst:
            x, y = positions[src]
            side = x - NODE_W / 2
            lw, _ = _label_size(lines)
            edges.append({"src": src, "dst": dst, "events": lines, "kind": "loop",
                          "p0": (side, y - 12), "c1": (side - 60, y - 40), "c2": (side - 60, y + 40),
                          "p1": (side, y + 12), "label": (side - 50 - lw / 2, y)})
    return positions, edges


def _fmt(p: Point) -> str:
    return f"{p[0]:.1f},{p[1]:.1f}"


def render_state_svg(
    start: Any,
    transitions: Mapping[tuple[Any, Any], Any],
    state_names: Mapping[Any, str],
    describe: Any = None,
) -> str:
    """An SVG document (text) of the state machine ``transitions`` (``(state, event) -> state``).

    :param start: the initial state (drawn leftmost, with an entry arrow).
    :param state_names: a display name per state.
    :param describe: optional ``state -> str`` for a node's second line.
    """
    positions, edges = layout_state_diagram(start, transitions)
    xs: list[float] = []
    ys: list[float] = []
    for x, y in positions.values():
        xs += [x - NODE_W / 2, x + NODE_W / 2]
        ys += [y - NODE_H / 2, y + NODE_H / 2]
    for e in edges:
        pts = [e["p0"], e["p1"], e["label"]]
        if e["kind"] == "curve":
            pts += [_quad(e["p0"], e["ctrl"], e["p1"], i / 10) for i in range(11)]
        else:
            pts += [e["c1"], e["c2"]]
        lw, lh = _label_size(e["events"])
        for x, y in pts:
            xs += [x - lw / 2, x + lw / 2]
            ys += [y - lh / 2, y + lh / 2]
    sx, sy = positions[start]
    ys.append(sy - NODE_H / 2 - 45)
    pad = 16.0
    x0, y0 = min(xs) - pad, min(ys) - pad
    width, height = max(xs) - x0 + pad, max(ys) - y0 + pad
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="katclient-state-diagram" '
        f'viewBox="{x0:.0f} {y0:.0f} {width:.0f} {height:.0f}" width="100%" '
        f'role="img" aria-label="Inspecting client state machine" '
        f'font-family="sans-serif" font-size="{FONT_SIZE:g}">',
        "<defs><marker id=\"ksd-arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"8\" "
        "markerHeight=\"8\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" fill=\"#444\"/>"
        "</marker></defs>",
        f'<path d="M{sx:.1f},{sy - NODE_H / 2 - 40:.1f} L{sx:.1f},{sy - NODE_H / 2:.1f}" stroke="#444" '
        f'stroke-width="1.5" fill="none" marker-end="url(#ksd-arrow)"/>',
    ]
    for e in edges:
        if e["kind"] == "curve":
            d = f"M{_fmt(e['p0'])} Q{_fmt(e['ctrl'])} {_fmt(e['p1'])}"
        else:
            d = f"M{_fmt(e['p0'])} C{_fmt(e['c1'])} {_fmt(e['c2'])} {_fmt(e['p1'])}"
        title = html.escape(f"{state_names[e['src']]} -> {state_names[e['dst']]}: {', '.join(e['events'])}")
        out.append(
            f'<path d="{d}" stroke="#444" stroke-width="1.3" fill="none" marker-end="url(#ksd-arrow)">'
            f"<title>{title}</title></path>"
        )
    for e in edges:
        lx, ly = e["label"]
        lines = e["events"]
        top = ly - (len(lines) - 1) * (FONT_SIZE + 2) / 2
        lw, lh = _label_size(lines)
        out.append(
            f'<rect x="{lx - lw / 2:.1f}" y="{ly - lh / 2:.1f}" width="{lw:.1f}" height="{lh:.1f}" '
            f'fill="white" fill-opacity="0.9"/>'
        )
        for i, text in enumerate(lines):
            out.append(
                f'<text x="{lx:.1f}" y="{top + i * (FONT_SIZE + 2):.1f}" text-anchor="middle" '
                f'dominant-baseline="middle" fill="#1a4d80">{html.escape(text)}</text>'
            )
    for state, (x, y) in positions.items():
        fill = "#e8f4e8" if state is start or state == start else "#f4f4f8"
        out.append(
            f'<rect x="{x - NODE_W / 2:.1f}" y="{y - NODE_H / 2:.1f}" width="{NODE_W:g}" height="{NODE_H:g}" '
            f'rx="8" ry="8" fill="{fill}" stroke="#333" stroke-width="1.3"/>'
        )
        second = describe(state) if describe is not None else ""
        if second:
            out.append(
                f'<text x="{x:.1f}" y="{y - 8:.1f}" text-anchor="middle" dominant-baseline="middle" '
                f'font-weight="bold">{html.escape(state_names[state])}</text>'
            )
            out.append(
                f'<text x="{x:.1f}" y="{y + 11:.1f}" text-anchor="middle" dominant-baseline="middle" '
                f'font-size="{FONT_SIZE - 1:g}" fill="#555">{html.escape(second)}</text>'
            )
        else:
            out.append(
                f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="middle" dominant-baseline="middle" '
                f'font-weight="bold">{html.escape(state_names[state])}</text>'
            )
    out.append("</svg>")
    return "\n".join(out)


def _state_module() -> Any:
    return importlib.import_module("katclient.client.state")


def state_names(module: Any) -> dict[Any, str]:
    """The module-level constant name of each state (``DISCONNECTED``, ``SYNCED``, ...)."""
    names: dict[Any, str] = {}
    for name, value in vars(module).items():
        if name.isupper() and isinstance(value, module.InspectingClientStateType):
            names.setdefault(value, name)
    return names


def describe_state(state: Any) -> str:
    """The flags that are true, e.g. ``connected, data_synced`` (``all false`` for none)."""
    true = [f for f, v in zip(state._fields, state) if v]
    return ", ".join(true) if true else "all false"


def state_machine_svg() -> str:
    """The SVG of :data:`katclient.client.state.TRANSITIONS`, starting at ``DISCONNECTED``."""
    mod = _state_module()
    return render_state_svg(mod.DISCONNECTED, mod.TRANSITIONS, state_names(mod), describe_state)


class StateDiagramDirective(SphinxDirective):
    """``.. state-diagram::`` — the SVG, inline in HTML output."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        mod = _state_module()
        self.env.note_dependency(mod.__file__)
        svg = state_machine_svg()
        return [nodes.raw("", f'<div class="katclient-state-diagram">{svg}</div>', format="html")]


class StateTableDirective(SphinxDirective):
    """``.. state-table::`` — every row of ``TRANSITIONS`` as a table."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        mod = _state_module()
        self.env.note_dependency(mod.__file__)
        names = state_names(mod)
        rows = [
            (f"{names[s]} ({describe_state(s)})", f"{e.name}: {e.value}", f"{names[t]}")
            for (s, e), t in mod.TRANSITIONS.items()
        ]
        table = nodes.table(classes=["katclient-state-table"])
        group = nodes.tgroup(cols=3)
        table += group
        for width in (35, 45, 20):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head += self._row(("state", "event", "next state"))
        body = nodes.tbody()
        group += body
        for row in rows:
            body += self._row(row)
        return [table]

    @staticmethod
    def _row(cells: Iterable[str]) -> nodes.row:
        row = nodes.row()
        for text in cells:
            entry = nodes.entry()
            entry += nodes.paragraph(text=text)
            row += entry
        return row


# ----------------------------------------------------------------------------------------------
# API pages: each object documented once, at home
# ----------------------------------------------------------------------------------------------


def _home(obj: Any) -> str | None:
    """``module.qualname`` of a class or function, else None."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and "<" not in qualname:
        return f"{module}.{qualname}"
    return None


def reexports(module: Any) -> list[tuple[str, str | None]]:
    """``(name, home)`` for each name in ``module.__all__`` that is defined in another module.

    ``home`` is the dotted name where the object is documented, or None when it is unknown.
    """
    out: list[tuple[str, str | None]] = []
    for name in getattr(module, "__all__", ()):
        if not hasattr(module, name):
            continue
        obj = getattr(module, name)
        if isinstance(obj, type) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
            if obj.__module__ == module.__name__:
                continue
            out.append((name, _home(obj)))
        elif not _assigned_in(module, name):
            out.append((name, _constant_home(obj, name)))
    return out


def _summary(obj: Any) -> str:
    """The first paragraph of an object's docstring, on one line (empty without one)."""
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


def _assigned_in(module: Any, name: str) -> bool:
    """True when ``name`` is assigned at top level in ``module``'s own source."""
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return False
    return re.search(rf"^{re.escape(name)}\s*(:[^=\n]*)?=", source, re.M) is not None


def _constant_home(obj: Any, name: str) -> str | None:
    """``module.NAME`` of the katclient module whose source assigns this very object."""
    for modname, mod in sorted(sys.modules.items()):
        if modname.split(".")[0] not in ("katclient", "fake_servers") or mod is None:
            continue
        if vars(mod).get(name) is obj and _assigned_in(mod, name):
            return f"{modname}.{name}"
    return None


class ApiModuleDirective(SphinxDirective):
    """``.. api-module:: katclient.x`` — see the module docstring."""

    required_arguments = 1
    has_content = False
    option_spec = {"pending": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        if importlib.util.find_spec(name.rsplit(".", 1)[0]) is not None and _module_missing(name):
            pending = self.options.get("pending") or "the module's contract"
            text = (
                f".. note::\n\n   ``{name}`` is not part of this build yet, so its reference is not generated"
                f" here; until it is, see {pending}.\n"
            )
            return self._parse([text])
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # a broken module must fail the -W build, with a clear message
            logger.warning("api-module: cannot import %s: %s", name, exc, location=self.get_location())
            return []
        if module.__file__:
            self.env.note_dependency(module.__file__)
        lines = [
            f".. automodule:: {name}",
            "   :members:",
            "   :undoc-members:",
            "   :ignore-module-all:",
            "   :member-order: bysource",
            "   :show-inheritance:",
            "",
        ]
        result = self._parse(lines)
        exported = reexports(module)
        if exported:
            result += self._parse([f".. rubric:: Also importable from ``{name}``", ""])
            items = nodes.bullet_list()
            for item, home in exported:
                para = nodes.paragraph()
                ref = f":py:obj:`{item} <{home}>`" if home is not None else f"``{item}``"
                para += self.state.inline_text(ref, self.lineno)[0]
                obj = getattr(module, item)
                summary = _summary(obj) if isinstance(obj, type) or inspect.isfunction(obj) else ""
                if summary:
                    # A docstring's first paragraph is reStructuredText, but cut out of its context
                    # it may not parse; then show it as plain text rather than warn.
                    parsed, messages = self.state.inline_text(summary, self.lineno)
                    para += nodes.Text(": ")
                    para += [nodes.Text(summary)] if messages else parsed
                items += nodes.list_item("", para)
            result.append(items)
        return result

    def _parse(self, lines: list[str]) -> list[nodes.Node]:
        node = nodes.section()
        node.document = self.state.document
        content = StringList()
        source = self.get_source_info()[0]
        for i, line in enumerate("\n".join(lines).splitlines()):
            content.append(line, source, self.lineno + i)
        nested_parse_with_titles(self.state, content, node)
        return list(node.children)


def _module_missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except ModuleNotFoundError:
        return True


# ----------------------------------------------------------------------------------------------
# References to re-exported names
# ----------------------------------------------------------------------------------------------


def _resolve_object(target: str) -> Any:
    parts = target.split(".")
    for i in range(len(parts) - 1, 0, -1):
        modname = ".".join(parts[:i])
        try:
            obj: Any = importlib.import_module(modname)
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _documented_name(target: str) -> str | None:
    """Where ``target`` is documented: the home of its deepest class or function, plus the rest.

    ``katclient.InspectingClientAsync.sensors`` gives
    ``katclient.client.inspecting.InspectingClientAsync.sensors``.
    """
    parts = target.split(".")
    for i in range(len(parts), 1, -1):
        obj = _resolve_object(".".join(parts[:i]))
        if isinstance(obj, type) or inspect.isfunction(obj):
            home = _home(obj)
            return None if home is None else ".".join([home, *parts[i:]])
        if i == len(parts) and obj is not None and not inspect.ismodule(obj):
            owner = _resolve_object(".".join(parts[:-1]))
            if inspect.ismodule(owner):  # a module-level constant, e.g. katclient.protocol.SENSOR_TYPES
                return _constant_home(obj, parts[-1])
    return None


def resolve_reexport(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    """``missing-reference``: send ``katclient.X`` to wherever ``X`` is documented."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if target.split(".")[0] not in ("katclient", "fake_servers"):
        return None
    home = _documented_name(target)
    if home is None or home == target:
        return None
    entry = env.get_domain("py").objects.get(home)
    if entry is None:
        return None
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, home)


# ----------------------------------------------------------------------------------------------
# Docstring repairs
# ----------------------------------------------------------------------------------------------

def help_text_as_literal(lines: list[str]) -> None:
    """Show a KATCP request handler's docstring verbatim: it is ``?help`` text, not reStructuredText.

    A ``request_<name>`` method of a device server answers ``?name``, and its docstring is what
    ``?help name`` sends (STYLE.md habit 10), laid out for a terminal.
    """
    text = [line.rstrip() for line in lines]
    while text and not text[-1]:
        text.pop()
    if not text:
        return
    lines[:] = ["``?help`` text of this request::", ""] + [("    " + t) if t else "" for t in text] + [""]


def process_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if what == "method" and name.rsplit(".", 1)[-1].startswith("request_"):
        help_text_as_literal(lines)
        return


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("state-diagram", StateDiagramDirective)
    app.add_directive("state-table", StateTableDirective)
    app.add_directive("api-module", ApiModuleDirective)
    app.connect("missing-reference", resolve_reexport)
    app.connect("autodoc-process-docstring", process_docstring)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
