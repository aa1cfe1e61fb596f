"""The text scan language: grammar, errors with positions, and property-based round trips."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ply import lex, yacc

from katclient.devices import scan as scan_pkg
from katclient.devices.scan import (
    Command,
    CommandSequence,
    Comment,
    ConfigLog,
    Delay,
    If,
    Include,
    Log,
    Loop,
    Parallel,
    ScanSyntaxError,
    ScanXMLError,
    Script,
    Sequence,
    Set,
    Wait,
    format_scan,
    language,
    load_scan,
    parse_commands,
    parse_scan,
)
from katclient.devices.scan.commands import COMPARISONS
from katclient.errors import InvalidUsage


def test_brief_example() -> None:
    cmds = parse_scan("loop motor_x 1 10 1 { set neutrons 0; log motor_x neutrons }")
    assert cmds == CommandSequence(Loop("motor_x", 1, 10, 1, [Set("neutrons", 0), Log("motor_x", "neutrons")]))


def test_every_command_and_option() -> None:
    text = r"""
    # a comment line, then every command with every option
    comment "Hello \"world\"\n" errhandler=H
    set motor_x 10 completion=true readback=motor_x.RBV readback_value=9.5 tolerance=0.5 timeout=3 errhandler=H
    set shutter open readback=true
    SET 'x' "5"
    delay 2.5 errhandler=H
    wait counts increase_by 100 timeout=5 tolerance=1 errhandler=H
    wait counts decrease_by 1e3
    wait x 5
    wait x == 5
    wait x != 5
    wait x > -1.5; wait x >= 2; wait x < 3; wait x <= 4
    wait mode in "[1, 2]"; wait mode not_in '["a", "b"]'
    loop 13IDC:m1 0 1 0.25 completion=true readback=true tolerance=0.01 timeout=9 errhandler=H { log 13IDC:m1 }
    loop y 5 1 -1
    log a b "c d" errhandler=H
    include "prep.scn" macros="M=1, N=2" errhandler=H
    script MyScript a 5 "x y" errhandler=H
    parallel timeout=10 errhandler=H { sequence errhandler=H { set a 1; set b 2 }; delay 2 }
    if x <= 3 tolerance=0.2 errhandler=H { delay 1 }
    if mode in "[1]" {}
    config_log true errhandler=H
    config_log FALSE
    """
    got = parse_scan(text)
    expected = CommandSequence(
        Comment('Hello "world"\n', errhandler="H"),
        Set("motor_x", 10, completion=True, readback="motor_x.RBV", readback_value=9.5, tolerance=0.5,
            timeout=3, errhandler="H"),
        Set("shutter", "open", readback=True),
        Set("x", "5"),
        Delay(2.5, errhandler="H"),
        Wait("counts", 100, "increase by", tolerance=1, timeout=5, errhandler="H"),
        Wait("counts", 1000.0, "decrease by"),
        Wait("x", 5), Wait("x", 5), Wait("x", 5, "!="),
        Wait("x", -1.5, ">"), Wait("x", 2, ">="), Wait("x", 3, "<"), Wait("x", 4, "<="),
        Wait("mode", "[1, 2]", "in"), Wait("mode", '["a", "b"]', "not in"),
        Loop("13IDC:m1", 0, 1, 0.25, Log("13IDC:m1"), completion=True, readback=True, tolerance=0.01, timeout=9,
             errhandler="H"),
        Loop("y", 5, 1, -1),
        Log("a", "b", "c d", errhandler="H"),
        Include("prep.scn", macros="M=1, N=2", errhandler="H"),
        Script("MyScript", "a", "5", "x y", errhandler="H"),
        Parallel(Sequence(Set("a", 1), Set("b", 2), errhandler="H"), Delay(2), timeout=10, errhandler="H"),
        If("x", "<=", 3, Delay(1), tolerance=0.2, errhandler="H"),
        If("mode", "in", "[1]"),
        ConfigLog(True, errhandler="H"),
        ConfigLog(False),
    )
    assert got == expected
    assert parse_scan(format_scan(got)) == got
    assert parse_scan(format_scan(got, one_line=True)) == got
    assert "\n" not in format_scan(got, one_line=True)


def test_format_is_readable() -> None:
    cmds = [Comment("Hello"), Loop("x", 1, 3, 1, Set("neutrons", 0), Log("x", "neutrons")), Set("in", "open")]
    assert format_scan(cmds) == (
        'comment "Hello"\n'
        "loop x 1 3 1 {\n"
        "  set neutrons 0\n"
        "  log x neutrons\n"
        "}\n"
        'set "in" "open"')
    assert format_scan(cmds, one_line=True) == (
        'comment "Hello"; loop x 1 3 1 { set neutrons 0; log x neutrons }; set "in" "open"')


@pytest.mark.parametrize("text, line, column, message", [
    ("set x", 1, 6, "unexpected end of input"),
    ("loop x 1 10 { }", 1, 13, "unexpected '{'"),
    ("loop x 1 10 1\n  { }", 2, 3, "on the line of its statement"),
    ("wait x=5", 1, 6, "comparison needs spaces"),
    ("set x 1 foo=2", 1, 9, "unknown option 'foo'"),
    ("set x 1 timeout=abc", 1, 17, "timeout must be a number"),
    ("set x 1 timeout=1 timeout=2", 1, 19, "given twice"),
    ("comment 'abc", 1, 9, "unterminated string"),
    ("comment 'a\\qb'", 1, 11, "unknown escape"),
    ("delay 1\nset x 1 }", 2, 9, "unexpected '}'"),
    ("parallel {\n delay 1", 2, 9, "missing '}'"),
    ("set in 5", 1, 5, "unexpected keyword 'in'"),
    ("delay abc", 1, 7, "delay seconds must be a number"),
    ("delay -1", 1, 1, "delay seconds must be >= 0"),
    ("loop x 1 2 0", 1, 1, "step must not be 0"),
    ("loop x a 2 1", 1, 8, "loop start must be a number"),
    ("config_log maybe", 1, 12, "true or false"),
    ("if x increase_by 1 { }", 1, 1, "Invalid comparison"),
    ("set x 1 ^", 1, 9, "unexpected character '^'"),
    ("set x 1 set y 2", 1, 9, "unexpected keyword"),
])
def test_errors_have_positions(text: str, line: int, column: int, message: str) -> None:
    with pytest.raises(ScanSyntaxError) as info:
        parse_scan(text)
    err = info.value
    assert isinstance(err, InvalidUsage)
    assert (err.line, err.column) == (line, column), str(err)
    assert message in str(err)
    assert str(err).startswith(f"line {line}, column {column}: ")
    assert err.context().splitlines()[-1] == " " * (column - 1) + "^"


def test_limits() -> None:
    with pytest.raises(ScanSyntaxError, match="nested deeper"):
        parse_scan("sequence { " * (language.MAX_BLOCK_NESTING + 1))
    with pytest.raises(InvalidUsage, match="too long"):
        parse_scan("#" * (language.MAX_SCAN_TEXT + 1))
    with pytest.raises(InvalidUsage):
        parse_scan(b"delay 1")  # type: ignore[arg-type]
    assert parse_scan("") == CommandSequence()
    assert parse_scan(" ;\n; # nothing\n") == CommandSequence()


def test_load_scan_accepts_xml_or_text() -> None:
    cmds = CommandSequence(Comment("a"), Delay(1))
    assert load_scan(cmds.to_xml()) == cmds
    assert load_scan("\n  " + cmds.to_xml()) == cmds
    assert load_scan(cmds.to_xml().encode()) == cmds
    assert load_scan('comment "a"; delay 1') == cmds
    assert load_scan(b'comment "a"; delay 1') == cmds
    with pytest.raises(ScanXMLError):
        load_scan("<commands><nope/></commands>")
    with pytest.raises(ScanSyntaxError):
        load_scan("nope")


class _Capture:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def _add(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.messages.append(msg % args if args else msg)

    debug = info = _add
    warning = error = critical = _add


def test_grammar_builds_cleanly_and_writes_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    package_dir = Path(language.__file__).parent
    before = set(os.listdir(package_dir))
    log = _Capture()
    grammar = language._Grammar()
    lex.lex(module=grammar, errorlog=log)
    yacc.yacc(module=grammar, start="scan", write_tables=False, debug=False, errorlog=log,
              tabmodule="_katclient_scan_no_parsetab")
    assert log.messages == []  # no conflicts, no unused tokens or rules
    language._Parser().parse("delay 1")
    assert os.listdir(tmp_path) == []
    assert set(os.listdir(package_dir)) == before


# ---------------------------------------------------------------------------------------------
# Property-based round trips: commands -> text -> commands, commands -> XML -> commands
# ---------------------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\t\n\r\x7f"), max_size=12)
_plain = st.from_regex(r"[A-Za-z_][A-Za-z0-9_:.\-]{0,10}", fullmatch=True)
names = _plain | _text
numbers = st.integers(-10**20, 10**20) | st.floats(allow_nan=False, allow_infinity=False)
positive = st.integers(0, 10**6) | st.floats(min_value=0, max_value=1e9, allow_nan=False)
values = numbers | _text
handlers = st.none() | _plain


@st.composite
def sets(draw: st.DrawFn) -> Set:
    return Set(draw(names), draw(values), completion=draw(st.booleans()),
               readback=draw(st.booleans() | names), readback_value=draw(st.none() | values),
               tolerance=draw(positive), timeout=draw(positive), errhandler=draw(handlers))


@st.composite
def waits(draw: st.DrawFn) -> Wait:
    comparison = draw(st.sampled_from(sorted(COMPARISONS)))
    value = draw(_text) if comparison in ("IN", "NOT_IN") else draw(values)
    return Wait(draw(names), value, comparison, tolerance=draw(positive), timeout=draw(positive),
                errhandler=draw(handlers))


leaves = st.one_of(
    st.builds(Comment, _text, errhandler=handlers),
    st.builds(ConfigLog, st.booleans(), errhandler=handlers),
    st.builds(Delay, positive, errhandler=handlers),
    sets(),
    waits(),
    st.builds(lambda devs, h: Log(devs, errhandler=h), st.lists(names, max_size=3), handlers),
    st.builds(Include, names, st.none() | _text, errhandler=handlers),
    st.builds(lambda s, args, h: Script(s, args, errhandler=h), names, st.lists(_text, max_size=3), handlers),
)


def _bodies(children: st.SearchStrategy[Command]) -> st.SearchStrategy[Command]:
    body = st.lists(children, max_size=3)
    step = numbers.filter(lambda x: x != 0)
    loops = st.builds(
        lambda dev, a, b, s, cmds, comp, rb, tol, t, h: Loop(dev, a, b, s, cmds, completion=comp, readback=rb,
                                                              tolerance=tol, timeout=t, errhandler=h),
        names, numbers, numbers, step, body, st.booleans(), st.booleans() | names, st.none() | positive,
        positive, handlers)
    parallels = st.builds(lambda cmds, t, h: Parallel(cmds, timeout=t, errhandler=h), body, positive, handlers)
    sequences = st.builds(lambda cmds, h: Sequence(cmds, errhandler=h), body, handlers)
    ifs = st.builds(
        lambda dev, cmp, v, cmds, tol, h: If(dev, cmp, v if cmp not in ("IN", "NOT_IN") else str(v), cmds,
                                             tolerance=tol, errhandler=h),
        names, st.sampled_from(sorted(set(COMPARISONS) - {"INCREASE_BY", "DECREASE_BY"})), values, body,
        positive, handlers)
    return st.one_of(loops, parallels, sequences, ifs)


commands = st.recursive(leaves, _bodies, max_leaves=10)
sequences_of_commands = st.lists(commands, max_size=5).map(CommandSequence)

@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequences_of_commands)
def test_round_trips(cmds: CommandSequence) -> None:
    """One generated tree, every round trip (generation dominates the cost)."""
    text = format_scan(cmds)
    assert parse_scan(text) == cmds  # commands -> text -> commands
    assert format_scan(parse_scan(text)) == text  # text -> commands -> text (canonical)
    assert parse_scan(format_scan(cmds, one_line=True)) == cmds
    xml = cmds.to_xml()
    assert parse_commands(xml) == cmds  # commands -> XML -> commands
    assert load_scan(xml) == cmds
    assert parse_scan(format_scan(parse_commands(xml))) == cmds  # XML -> commands -> text -> commands
    namespace = {name: getattr(scan_pkg, name) for name in scan_pkg.__all__}
    assert eval(repr(cmds), namespace) == cmds  # repr is PyScanClient-style Python


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_garbage_text_never_crashes(text: str) -> None:
    try:
        parse_scan(text)
    except ScanSyntaxError as e:
        assert 1 <= e.line and 1 <= e.column
