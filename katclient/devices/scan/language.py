"""A one-line-friendly text language for scans, with a ``ply`` (lex + yacc) grammar.

A console user types a whole scan into one KATCP request argument (DESIGN.md section 4), e.g.::

    loop motor_x 1 10 1 { set neutrons 0; log motor_x neutrons }

Syntax (keywords are case-insensitive; ``;`` or a newline ends a statement; ``#`` starts a comment
that runs to the end of the line; options are ``key=value`` *without* spaces around ``=``, while
comparison operators stand on their own with spaces; a block's ``{`` is on the statement's line)::

    comment TEXT                                      [errhandler=H]
    set DEVICE VALUE     [completion=BOOL] [readback=BOOL|DEVICE] [readback_value=VALUE]
                         [tolerance=NUM] [timeout=NUM] [errhandler=H]
    delay SECONDS                                     [errhandler=H]
    wait DEVICE [CMP] VALUE  [tolerance=NUM] [timeout=NUM] [errhandler=H]
    loop DEVICE START END STEP [completion=BOOL] [readback=BOOL|DEVICE] [tolerance=NUM]
                         [timeout=NUM] [errhandler=H] [{ BODY }]
    log DEVICE...                                     [errhandler=H]
    include FILE         [macros=TEXT]                [errhandler=H]
    script CLASS ARG...                               [errhandler=H]
    parallel             [timeout=NUM]                [errhandler=H] { BODY }
    sequence                                          [errhandler=H] { BODY }
    if DEVICE CMP VALUE  [tolerance=NUM]              [errhandler=H] { BODY }
    config_log BOOL                                   [errhandler=H]

    CMP: = == != > >= < <= increase_by decrease_by in not_in

Words are letters, digits and ``_ $ . + - : ( ) [ ] / @ %``; anything else (spaces, braces, a
keyword used as a device name) goes in double or single quotes, with backslash escapes ``\\\\ \\"
\\' \\n \\r \\t \\xHH \\uHHHH``.  A number is a number; a quoted ``"5"`` is the text "5".  BOOL is
``true`` or ``false``.

:func:`parse_scan` gives a :class:`~katclient.devices.scan.commands.CommandSequence`,
:func:`format_scan` turns commands back into this text (``parse_scan(format_scan(c)) == c``), and
:func:`load_scan` accepts either this language or the server's XML (detected by a leading ``<``).
Errors raise :class:`ScanSyntaxError` with 1-based ``line`` and ``column``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ply import lex, yacc

from katclient.devices.scan.commands import (
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
    Script,
    Sequence,
    Set,
    Value,
    Wait,
    parse_commands,
    to_commands,
)
from katclient.errors import InvalidUsage

__all__ = [
    "MAX_SCAN_TEXT",
    "MAX_BLOCK_NESTING",
    "ScanSyntaxError",
    "parse_scan",
    "format_scan",
    "load_scan",
]

#: Longest scan text accepted, in characters: a scan typed into one KATCP argument is far smaller;
#: the limit bounds parser memory for hostile input.
MAX_SCAN_TEXT = 1024 * 1024

#: Deepest ``{ }`` nesting accepted (the command model is recursive; see commands.MAX_NESTING).
MAX_BLOCK_NESTING = 100


class ScanSyntaxError(InvalidUsage):
    """The scan text is not valid.

    :param message: what is wrong.
    :param line: 1-based line of the offending place.
    :param column: 1-based column of the offending place.
    :param source_line: that line of the input (for :meth:`context`).
    """

    def __init__(self, message: str, line: int, column: int, source_line: str = "") -> None:
        self.message = message
        self.line = line
        self.column = column
        self.source_line = source_line
        super().__init__(f"line {line}, column {column}: {message}")

    def context(self) -> str:
        """:returns: the offending source line and a caret under the column."""
        return f"{self.source_line}\n{' ' * (self.column - 1)}^"


# --------------------------------------------------------------------------------------------------
# Lexer and grammar
# --------------------------------------------------------------------------------------------------

_KEYWORDS = {
    "comment": "COMMENT",
    "set": "SET",
    "delay": "DELAY",
    "wait": "WAIT",
    "loop": "LOOP",
    "log": "LOG",
    "include": "INCLUDE",
    "script": "SCRIPT",
    "parallel": "PARALLEL",
    "sequence": "SEQUENCE",
    "if": "IF",
    "config_log": "CONFIG_LOG",
    "increase_by": "CMPWORD",
    "decrease_by": "CMPWORD",
    "in": "CMPWORD",
    "not_in": "CMPWORD",
}
_CMP_TEXT = {
    "=": "EQUALS", "==": "EQUALS", "!=": "UNEQUAL", "<>": "UNEQUAL", ">": "ABOVE", ">=": "AT_LEAST",
    "<": "BELOW", "<=": "AT_MOST", "increase_by": "INCREASE_BY", "decrease_by": "DECREASE_BY",
    "in": "IN", "not_in": "NOT_IN",
}
_CMP_OUT = {"EQUALS": "=", "UNEQUAL": "!=", "ABOVE": ">", "AT_LEAST": ">=", "BELOW": "<", "AT_MOST": "<=",
            "INCREASE_BY": "increase_by", "DECREASE_BY": "decrease_by", "IN": "in", "NOT_IN": "not_in"}

_WORD_CHARS = r"A-Za-z0-9_$.+\-:()\[\]/@%"
_WORD_RE = re.compile(f"[{_WORD_CHARS}]+")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT_RE = re.compile(r"[+-]?\d+")
_ESCAPE_RE = re.compile(r"\\(?:x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|.)", re.DOTALL)
_SIMPLE_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "r": "\r", "t": "\t", "0": "\0"}


@dataclass(frozen=True)
class _Tok:
    """A token's payload: kind (NUMBER, STRING, WORD, ...), source text, decoded value, offset."""

    kind: str
    text: str
    value: Any
    pos: int


class _Grammar:
    """The ply lexer rules and grammar productions (ply reads the docstrings)."""

    tokens = (
        "COMMENT", "SET", "DELAY", "WAIT", "LOOP", "LOG", "INCLUDE", "SCRIPT", "PARALLEL",
        "SEQUENCE", "IF", "CONFIG_LOG", "CMPWORD",
        "WORD", "NUMBER", "STRING", "OPT", "CMP", "LBRACE", "RBRACE", "SEP",
    )

    t_ignore = " \t\r"
    t_ignore_COMMENTLINE = r"\#[^\n]*"

    def __init__(self) -> None:
        self.text = ""
        self.depth = 0

    # ---- errors with positions ----
    def error_at(self, pos: int, message: str) -> ScanSyntaxError:
        start = self.text.rfind("\n", 0, pos) + 1
        end = self.text.find("\n", pos)
        line_text = self.text[start:end if end >= 0 else len(self.text)]
        return ScanSyntaxError(message, self.text.count("\n", 0, pos) + 1, pos - start + 1, line_text)

    # ---- lexer ----
    def t_SEP(self, t: lex.LexToken) -> lex.LexToken:
        r"[;\n]"
        t.value = _Tok("SEP", t.value, None, t.lexpos)
        return t

    def t_LBRACE(self, t: lex.LexToken) -> lex.LexToken:
        r"\{"
        self.depth += 1
        if self.depth > MAX_BLOCK_NESTING:
            raise self.error_at(t.lexpos, f"blocks nested deeper than {MAX_BLOCK_NESTING}")
        t.value = _Tok("LBRACE", "{", None, t.lexpos)
        return t

    def t_RBRACE(self, t: lex.LexToken) -> lex.LexToken:
        r"\}"
        self.depth -= 1
        t.value = _Tok("RBRACE", "}", None, t.lexpos)
        return t

    def t_STRING(self, t: lex.LexToken) -> lex.LexToken:
        r""""(?:[^"\\\n]|\\[^\n])*"|'(?:[^'\\\n]|\\[^\n])*'"""
        t.value = _Tok("STRING", t.value, self.unescape(t.value[1:-1], t.lexpos + 1), t.lexpos)
        return t

    def t_OPT(self, t: lex.LexToken) -> lex.LexToken:
        r"[A-Za-z_][A-Za-z0-9_]*=(?!=)"
        t.value = _Tok("OPT", t.value, t.value[:-1].lower(), t.lexpos)
        return t

    def t_CMP(self, t: lex.LexToken) -> lex.LexToken:
        r"==|!=|<>|>=|<=|=|<|>"
        t.value = _Tok("CMP", t.value, _CMP_TEXT[t.value], t.lexpos)
        return t

    def t_WORD(self, t: lex.LexToken) -> lex.LexToken:
        r"[A-Za-z0-9_$.+\-:()\[\]/@%]+"
        text = t.value
        if _NUMBER_RE.fullmatch(text):
            t.type = "NUMBER"
            number = int(text) if _INT_RE.fullmatch(text) else float(text)
            t.value = _Tok("NUMBER", text, number, t.lexpos)
            return t
        kind = _KEYWORDS.get(text.lower())
        if kind == "CMPWORD":
            t.type = kind
            t.value = _Tok(kind, text, _CMP_TEXT[text.lower()], t.lexpos)
        elif kind:
            t.type = kind
            t.value = _Tok(kind, text, text.lower(), t.lexpos)
        else:
            t.value = _Tok("WORD", text, text, t.lexpos)
        return t

    def t_error(self, t: lex.LexToken) -> None:
        ch = t.value[0]
        if ch in "\"'":
            raise self.error_at(t.lexpos, "unterminated string")
        raise self.error_at(t.lexpos, f"unexpected character {ch!r}")

    def unescape(self, body: str, pos: int) -> str:
        def sub(m: re.Match[str]) -> str:
            esc = m.group()
            if esc[1] in "xuU":
                return chr(int(esc[2:], 16)) if int(esc[2:], 16) <= 0x10FFFF else "\ufffd"
            if esc[1] in _SIMPLE_ESCAPES:
                return _SIMPLE_ESCAPES[esc[1]]
            raise self.error_at(pos + m.start(), f"unknown escape {esc!r}")

        return _ESCAPE_RE.sub(sub, body)

    # ---- grammar ----
    def p_scan(self, p: yacc.YaccProduction) -> None:
        """scan : items"""
        p[0] = p[1]

    def p_items_empty(self, p: yacc.YaccProduction) -> None:
        """items : seps_opt"""
        p[0] = []

    def p_items(self, p: yacc.YaccProduction) -> None:
        """items : seps_opt stmts seps_opt"""
        p[0] = p[2]

    def p_stmts_one(self, p: yacc.YaccProduction) -> None:
        """stmts : stmt"""
        p[0] = [p[1]]

    def p_stmts_more(self, p: yacc.YaccProduction) -> None:
        """stmts : stmts seps stmt"""
        p[1].append(p[3])
        p[0] = p[1]

    def p_seps(self, p: yacc.YaccProduction) -> None:
        """seps : SEP
                | seps SEP"""

    def p_seps_opt(self, p: yacc.YaccProduction) -> None:
        """seps_opt :
                    | seps"""

    def p_block(self, p: yacc.YaccProduction) -> None:
        """block : LBRACE items RBRACE"""
        p[0] = p[2]

    def p_block_opt(self, p: yacc.YaccProduction) -> None:
        """block_opt :
                     | block"""
        p[0] = p[1] if len(p) > 1 else []

    def p_atom(self, p: yacc.YaccProduction) -> None:
        """atom : WORD
                | NUMBER
                | STRING"""
        p[0] = p[1]

    def p_atoms(self, p: yacc.YaccProduction) -> None:
        """atoms :
                 | atoms atom"""
        p[0] = [] if len(p) == 1 else p[1] + [p[2]]

    def p_opts(self, p: yacc.YaccProduction) -> None:
        """opts :
                | opts OPT atom"""
        p[0] = [] if len(p) == 1 else p[1] + [(p[2], p[3])]

    def p_cmp(self, p: yacc.YaccProduction) -> None:
        """cmp : CMP
               | CMPWORD"""
        p[0] = p[1]

    def p_stmt_comment(self, p: yacc.YaccProduction) -> None:
        """stmt : COMMENT atom opts"""
        o = self.options(p[1], p[3], ())
        p[0] = self.build(p[1], Comment, self.text_of(p[2]), errhandler=o.get("errhandler"))

    def p_stmt_set(self, p: yacc.YaccProduction) -> None:
        """stmt : SET atom atom opts"""
        o = self.options(p[1], p[4], ("completion", "readback", "readback_value", "tolerance", "timeout"))
        p[0] = self.build(p[1], Set, self.name(p[2]), self.value(p[3]), **o)

    def p_stmt_delay(self, p: yacc.YaccProduction) -> None:
        """stmt : DELAY atom opts"""
        o = self.options(p[1], p[3], ())
        p[0] = self.build(p[1], Delay, self.number(p[2], "delay seconds"), errhandler=o.get("errhandler"))

    def p_stmt_wait(self, p: yacc.YaccProduction) -> None:
        """stmt : WAIT atom cmp atom opts
                | WAIT atom atom opts"""
        if len(p) == 6:
            cmp, value, opts = p[3].value, p[4], p[5]
        else:
            cmp, value, opts = "EQUALS", p[3], p[4]
        o = self.options(p[1], opts, ("tolerance", "timeout"))
        v = self.text_of(value) if cmp in ("IN", "NOT_IN") else self.value(value)
        p[0] = self.build(p[1], Wait, self.name(p[2]), v, cmp, **o)

    def p_stmt_loop(self, p: yacc.YaccProduction) -> None:
        """stmt : LOOP atom atom atom atom opts block_opt"""
        o = self.options(p[1], p[6], ("completion", "readback", "tolerance", "timeout"))
        p[0] = self.build(p[1], Loop, self.name(p[2]), self.number(p[3], "loop start"),
                          self.number(p[4], "loop end"), self.number(p[5], "loop step"), p[7], **o)

    def p_stmt_log(self, p: yacc.YaccProduction) -> None:
        """stmt : LOG atoms opts"""
        o = self.options(p[1], p[3], ())
        p[0] = self.build(p[1], Log, [self.name(a) for a in p[2]], errhandler=o.get("errhandler"))

    def p_stmt_include(self, p: yacc.YaccProduction) -> None:
        """stmt : INCLUDE atom opts"""
        o = self.options(p[1], p[3], ("macros",))
        p[0] = self.build(p[1], Include, self.text_of(p[2]), **o)

    def p_stmt_script(self, p: yacc.YaccProduction) -> None:
        """stmt : SCRIPT atom atoms opts"""
        o = self.options(p[1], p[4], ())
        p[0] = self.build(p[1], Script, self.name(p[2]), [self.text_of(a) for a in p[3]],
                          errhandler=o.get("errhandler"))

    def p_stmt_parallel(self, p: yacc.YaccProduction) -> None:
        """stmt : PARALLEL opts block"""
        o = self.options(p[1], p[2], ("timeout",))
        p[0] = self.build(p[1], Parallel, p[3], **o)

    def p_stmt_sequence(self, p: yacc.YaccProduction) -> None:
        """stmt : SEQUENCE opts block"""
        o = self.options(p[1], p[2], ())
        p[0] = self.build(p[1], Sequence, p[3], errhandler=o.get("errhandler"))

    def p_stmt_if(self, p: yacc.YaccProduction) -> None:
        """stmt : IF atom cmp atom opts block"""
        o = self.options(p[1], p[5], ("tolerance",))
        cmp = p[3].value
        v = self.text_of(p[4]) if cmp in ("IN", "NOT_IN") else self.value(p[4])
        p[0] = self.build(p[1], If, self.name(p[2]), cmp, v, p[6], **o)

    def p_stmt_config_log(self, p: yacc.YaccProduction) -> None:
        """stmt : CONFIG_LOG atom opts"""
        o = self.options(p[1], p[3], ())
        p[0] = self.build(p[1], ConfigLog, self.boolean(p[2], "config_log"), errhandler=o.get("errhandler"))

    def p_error(self, t: lex.LexToken | None) -> None:
        if t is None:
            if self.depth > 0:
                raise self.error_at(len(self.text), "missing '}' at end of input")
            raise self.error_at(len(self.text), "unexpected end of input")
        tok: _Tok = t.value
        if tok.kind == "OPT":
            raise self.error_at(tok.pos, f"unexpected option {tok.text!r} (a comparison needs spaces "
                                "around it; options come after a command's arguments)")
        if tok.kind == "SEP" and tok.text == "\n":
            raise self.error_at(tok.pos, "unexpected end of line (a block's '{' must be on the same line)")
        if tok.kind == "LBRACE":
            if self.text[:tok.pos].rstrip(" \t\r").endswith("\n"):
                raise self.error_at(tok.pos, "unexpected '{' (a block's '{' must be on the line of its statement)")
            raise self.error_at(tok.pos, "unexpected '{'")
        if tok.kind in ("RBRACE", "SEP"):
            raise self.error_at(tok.pos, f"unexpected {tok.text!r}")
        if tok.kind in _KEYWORDS.values():
            raise self.error_at(tok.pos, f"unexpected keyword {tok.text!r} (quote it to use it as a "
                                "name, and separate statements with ';' or a new line)")
        raise self.error_at(tok.pos, f"unexpected {tok.text!r}")

    # ---- semantic helpers ----
    def name(self, tok: _Tok) -> str:
        return tok.value if tok.kind == "STRING" else tok.text

    def text_of(self, tok: _Tok) -> str:
        return tok.value if tok.kind == "STRING" else tok.text

    def value(self, tok: _Tok) -> Value:
        return tok.value if tok.kind in ("STRING", "NUMBER") else tok.text

    def number(self, tok: _Tok, what: str) -> int | float:
        if tok.kind != "NUMBER":
            raise self.error_at(tok.pos, f"{what} must be a number, got {tok.text!r}")
        value: int | float = tok.value
        return value

    def boolean(self, tok: _Tok, what: str) -> bool:
        if tok.kind == "WORD" and tok.text.lower() in ("true", "false"):
            return tok.text.lower() == "true"
        raise self.error_at(tok.pos, f"{what} must be true or false, got {tok.text!r}")

    def options(self, cmd: _Tok, opts: list[tuple[_Tok, _Tok]], allowed: Iterable[str]) -> dict[str, Any]:
        allowed = (*allowed, "errhandler")
        out: dict[str, Any] = {}
        for key, val in opts:
            k = key.value
            if k not in allowed:
                raise self.error_at(key.pos, f"unknown option {k!r} for {cmd.value}; allowed: {', '.join(allowed)}")
            if k in out:
                raise self.error_at(key.pos, f"option {k!r} given twice")
            if k in ("completion",):
                out[k] = self.boolean(val, k)
            elif k == "readback":
                if val.kind == "WORD" and val.text.lower() in ("true", "false"):
                    out[k] = val.text.lower() == "true"
                else:
                    out[k] = self.name(val)
            elif k in ("tolerance", "timeout"):
                out[k] = self.number(val, k)
            elif k == "readback_value":
                out[k] = self.value(val)
            else:  # errhandler, macros
                out[k] = self.text_of(val)
        return out

    def build(self, at: _Tok, cls: type[Command], *args: Any, **kwargs: Any) -> Command:
        try:
            return cls(*args, **kwargs)
        except InvalidUsage as e:
            raise self.error_at(at.pos, f"{at.value}: {e}") from None


class _Parser:
    """The lazily built lexer and parser; one parse at a time (ply parsers keep state)."""

    def __init__(self) -> None:
        self.grammar = _Grammar()
        null = yacc.NullLogger()
        self.lexer = lex.lex(module=self.grammar, errorlog=lex.NullLogger(), optimize=False)
        # tabmodule: a name no module has, so ply never imports some other project's "parsetab"
        self.parser = yacc.yacc(module=self.grammar, start="scan", write_tables=False, debug=False,
                                errorlog=null, tabmodule="_katclient_scan_no_parsetab")
        self.lock = threading.Lock()

    def parse(self, text: str) -> list[Command]:
        with self.lock:
            self.grammar.text = text
            self.grammar.depth = 0
            self.lexer.lineno = 1
            result: list[Command] = self.parser.parse(text, lexer=self.lexer)
            return result


_parser: _Parser | None = None
_parser_lock = threading.Lock()


def _get_parser() -> _Parser:
    global _parser
    if _parser is None:
        with _parser_lock:
            if _parser is None:
                _parser = _Parser()
    return _parser


def parse_scan(text: str) -> CommandSequence:
    """Parse the text scan language (syntax in this module's docstring).

    :param text: the scan, e.g. ``"loop motor_x 1 10 1 { set neutrons 0; log motor_x neutrons }"``.
    :returns: the commands.
    :raises ScanSyntaxError: invalid text, with ``.line`` and ``.column`` (1-based).
    :raises InvalidUsage: text longer than :data:`MAX_SCAN_TEXT` characters.
    """
    if not isinstance(text, str):
        raise InvalidUsage(f"Scan text must be str, got {type(text).__name__}")
    if len(text) > MAX_SCAN_TEXT:
        raise InvalidUsage(f"Scan text too long ({len(text)} characters, limit {MAX_SCAN_TEXT})")
    return CommandSequence(_get_parser().parse(text))


def load_scan(text: str | bytes) -> CommandSequence:
    """Parse a scan given either as ``<commands>`` XML (detected by a leading ``<``) or as text.

    :raises ScanSyntaxError: invalid scan text.
    :raises ScanXMLError: invalid command XML (also a :class:`ValueError`).
    """
    if isinstance(text, bytes):
        stripped = text.lstrip(b"\xef\xbb\xbf \t\r\n")
        if stripped.startswith(b"<"):
            return parse_commands(text)
        text = text.decode("utf-8")
    if text.lstrip("\ufeff \t\r\n").startswith("<"):
        return parse_commands(text)
    return parse_scan(text)


# --------------------------------------------------------------------------------------------------
# Formatter
# --------------------------------------------------------------------------------------------------


def _quote(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _name(text: str) -> str:
    """A device/class name: bare when it lexes back as the same plain word, else quoted."""
    if (_WORD_RE.fullmatch(text) and not _NUMBER_RE.fullmatch(text)
            and text.lower() not in _KEYWORDS and text.lower() not in ("true", "false")):
        return text
    return _quote(text)


def _number(x: int | float) -> str:
    return str(x) if isinstance(x, int) else repr(float(x))


def _value(v: Value) -> str:
    return _quote(v) if isinstance(v, str) else _number(v)


def _bool(b: bool) -> str:
    return "true" if b else "false"


def _statement(cmd: Command, indent: str, level: int, one_line: bool) -> str:
    parts: list[str]
    opts: list[str] = []
    block: list[Command] | None = None
    if isinstance(cmd, Comment):
        parts = ["comment", _quote(cmd.text)]
    elif isinstance(cmd, Set):
        parts = ["set", _name(cmd.device), _value(cmd.value)]
        if cmd.completion:
            opts.append("completion=true")
        if cmd.wait:
            opts.append("readback=" + ("true" if cmd.readback is True else _name(str(cmd.readback))))
            if cmd.readback_value is not None:
                opts.append("readback_value=" + _value(cmd.readback_value))
            opts.append("tolerance=" + _number(cmd.tolerance))
        if (cmd.completion or cmd.wait) and cmd.timeout > 0:
            opts.append("timeout=" + _number(cmd.timeout))
    elif isinstance(cmd, Delay):
        parts = ["delay", _number(cmd.seconds)]
    elif isinstance(cmd, Wait):
        raw = cmd.comparison in ("IN", "NOT_IN")
        parts = ["wait", _name(cmd.device), _CMP_OUT[cmd.comparison],
                 _quote(str(cmd.value)) if raw else _value(cmd.value)]
        if cmd.tolerance > 0:
            opts.append("tolerance=" + _number(cmd.tolerance))
        if cmd.timeout > 0:
            opts.append("timeout=" + _number(cmd.timeout))
    elif isinstance(cmd, Loop):
        parts = ["loop", _name(cmd.device), _number(cmd.start), _number(cmd.end), _number(cmd.step)]
        if cmd.completion:
            opts.append("completion=true")
        if cmd.wait:
            opts.append("readback=" + ("true" if cmd.readback is True else _name(str(cmd.readback))))
            opts.append("tolerance=" + _number(cmd.tolerance))
        if (cmd.completion or cmd.wait) and cmd.timeout > 0:
            opts.append("timeout=" + _number(cmd.timeout))
        block = cmd.body if cmd.body else None
    elif isinstance(cmd, Log):
        parts = ["log", *(_name(d) for d in cmd.devices)]
    elif isinstance(cmd, Include):
        parts = ["include", _quote(cmd.scan_file)]
        if cmd.macros:
            opts.append("macros=" + _quote(cmd.macros))
    elif isinstance(cmd, Script):
        parts = ["script", _name(cmd.script), *(_quote(a) for a in cmd.arguments)]
    elif isinstance(cmd, Parallel):
        parts = ["parallel"]
        if cmd.timeout > 0:
            opts.append("timeout=" + _number(cmd.timeout))
        block = cmd.body
    elif isinstance(cmd, Sequence):
        parts = ["sequence"]
        block = cmd.body
    elif isinstance(cmd, If):
        raw = cmd.comparison in ("IN", "NOT_IN")
        parts = ["if", _name(cmd.device), _CMP_OUT[cmd.comparison],
                 _quote(str(cmd.value)) if raw else _value(cmd.value)]
        opts.append("tolerance=" + _number(cmd.tolerance))
        block = cmd.body
    elif isinstance(cmd, ConfigLog):
        parts = ["config_log", _bool(cmd.automatic)]
    else:
        raise InvalidUsage(f"Cannot format {cmd!r}")
    if cmd.errhandler:
        opts.append("errhandler=" + _name(cmd.errhandler))
    head = " ".join(parts + opts)
    if block is None:
        return head
    if not block:
        return head + " {}"
    if one_line:
        return head + " { " + "; ".join(_statement(c, indent, level + 1, True) for c in block) + " }"
    inner = "\n".join(indent * (level + 1) + _statement(c, indent, level + 1, False) for c in block)
    return f"{head} {{\n{inner}\n{indent * level}}}"


def format_scan(commands: CommandSequence | Command | Iterable[Command], *, one_line: bool = False,
                indent: str = "  ") -> str:
    """Format commands in the text scan language.

    :param commands: a sequence, one command, or a list of commands.
    :param one_line: separate statements with ``"; "`` on one line (for a KATCP argument) instead
        of one statement per line with indented blocks.
    :param indent: indentation per block level (multi-line form).
    :returns: text that :func:`parse_scan` turns back into equal commands.
    :raises InvalidUsage: something in ``commands`` is not a command.
    """
    seq = to_commands(commands)
    sep = "; " if one_line else "\n"
    return sep.join(_statement(c, indent, 0, one_line) for c in seq)
