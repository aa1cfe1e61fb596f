"""Sans-I/O core of the PyOpticon dashboard socket protocol: request encoding, reply framing, errors.

Nothing here touches a socket, an event loop or a clock: bytes and strings go in, bytes, strings and
exceptions come out.  The Tornado layer (:mod:`katclient.devices.opticon.client`) drives it.

Wire facts (source: /work/shared/protocols/pyopticon.md):

* A request is one ``json.dumps(dict)``, read by the dashboard with **one** ``recv(1024)``; longer requests
  break the connection (section 1.1), so :data:`MAX_REQUEST_BYTES` is enforced before anything is sent.
* A reply is raw UTF-8 text with **no delimiter and no length prefix**, sent with one ``send()`` (1.1).
  Success replies are ``Success``, a field value or an eval string; failures are ``"Error: " + str(exc)``
  (1.3).  An empty value produces **zero bytes** (1.1).

How :class:`ReplyFramer` decides that a reply is complete
---------------------------------------------------------
The wire gives no end marker, so completeness is decided by, in order:

1. **Content**, when the request's reply has a known shape: ``Success`` for Set/Confirm/Exec, or a whole
   Python literal for the introspection and batch-read expressions (:class:`ReplyShape`).
2. **Size of the first arrival**: the dashboard writes each reply with one ``send()``; a send of fewer than
   :data:`WHOLE_REPLY_BYTES` (below the smallest IPv4 TCP MSS of 536) travels in one segment and so
   arrives whole.  Anything that arrives first and is that short is taken as the whole reply.
3. **A sentinel probe** otherwise: the client sends a second request, an Eval of a unique string literal
   (:func:`encode_probe`), and reads until the buffer *ends with* that literal.  The dashboard answers
   strictly in order, so everything before the literal is the first reply, exactly.  This is used for
   long replies (some bytes arrived, so the dashboard already consumed the first request and the probe
   cannot share its ``recv``) and for **zero-byte replies**: when nothing arrives within the I/O layer's
   quiet period the framer asks for a probe, and a buffer holding just the literal means the value was
   ``''``.

What cannot be told apart (documented choice): on the wire, a zero-byte reply is indistinguishable from a
reply that is merely slow.  Probing after a quiet period resolves it in one round trip instead of a 5 s
timeout.  The residual risk is a dashboard so slow to *read* the first request that it is still unread when
the probe arrives; the two then share one ``recv`` and the dashboard drops the connection ("Extra data",
section 1.1).  That surfaces as a connection error, never as a wrong value.  A value or eval result that
itself begins with ``"Error: "`` cannot be told from a failure (section 1.3) and is reported as one.
"""

from __future__ import annotations

import ast
import enum
import inspect
import json
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from katclient.errors import InvalidUsage, KatclientError, OperationFailure, ProtocolError

__all__ = [
    "DEFAULT_PORT",
    "MAX_REQUEST_BYTES",
    "WHOLE_REPLY_BYTES",
    "MAX_REPLY_BYTES",
    "ERROR_PREFIX",
    "SUCCESS",
    "INTROSPECTION_EXPRESSION",
    "DOCUMENTED_INTROSPECTION_EXPRESSION",
    "ErrorMode",
    "ERROR_MODES",
    "Command",
    "ReplyShape",
    "Request",
    "DashboardError",
    "RequestTooLong",
    "UnexpectedReply",
    "ReplyTooLong",
    "RequestQueueFull",
    "encode_get",
    "encode_set",
    "encode_confirm",
    "encode_eval",
    "encode_exec",
    "encode_close",
    "encode_probe",
    "encode_list_fields",
    "encode_batch_get",
    "exec_source",
    "is_error_reply",
    "check_reply",
    "parse_field_listing",
    "parse_batch_reply",
    "FramerState",
    "ReplyFramer",
]

#: The dashboard's default socket port (section 1.1).
DEFAULT_PORT = 12345

#: Largest request in bytes.  The dashboard reads each request with a single ``recv(1024)``; a longer one
#: is parsed partially and the connection is dropped (section 1.1), so it is refused before sending.
MAX_REQUEST_BYTES = 1024

#: A first arrival shorter than this is taken as a whole reply.  The dashboard sends each reply with one
#: ``send()``; fewer bytes than the smallest IPv4 MSS (536) travel in one segment and arrive together.
WHOLE_REPLY_BYTES = 512

#: Largest reply the framer assembles, in bytes.  The biggest real replies are eval results such as the
#: introspection listing (a few KB for a large dashboard); 1 MiB is far above that and bounds the memory a
#: misbehaving peer can make the client hold.
MAX_REPLY_BYTES = 1 << 20

#: Prefix of every failure reply: ``"Error: " + str(exception)`` (section 1.3).
ERROR_PREFIX = "Error: "

#: Reply of a successful Set, Confirm or Exec (section 1.2).
SUCCESS = "Success"

#: The introspection expression as the note documents it (section 1.6).  It fails with ``Error: ...`` on a
#: dashboard holding a nicknamed MinimalWidget, which has no ``attributes``.
DOCUMENTED_INTROSPECTION_EXPRESSION = (
    "str({k: list(w.attributes) for k, w in get_dashboard().widgets_by_nickname.items()})"
)

#: The read-only introspection expression katclient sends: the documented one (section 1.6), hardened with
#: ``getattr`` so that nicknamed MinimalWidgets (no fields, section 1.6 last item) list as ``[]`` instead
#: of failing the whole listing.  Its reply is ``repr`` of ``dict[str, list[str]]``.
INTROSPECTION_EXPRESSION = (
    "str({k: list(getattr(w, 'attributes', {})) for k, w in get_dashboard().widgets_by_nickname.items()})"
)

#: The seed client's error handling modes (section 1.3): return the ``Error: ...`` text as the result,
#: log it and return it, or raise :class:`DashboardError`.
ErrorMode = Literal["none", "print", "exception"]
ERROR_MODES: tuple[ErrorMode, ...] = ("none", "print", "exception")


class Command(str, enum.Enum):
    """The ``cmd`` values; case-sensitive and capitalised (section 1.2)."""

    GET = "Get"
    SET = "Set"
    CONFIRM = "Confirm"
    EVAL = "Eval"
    EXEC = "Exec"
    CLOSE = "Close"


class ReplyShape(enum.Enum):
    """What a request's reply looks like, which decides how its end is recognised."""

    #: ``Success`` or ``Error: ...`` (Set, Confirm, Exec).
    ACK = "ack"
    #: Arbitrary text, possibly empty (Get, Eval).
    VALUE = "value"
    #: ``repr`` of a Python list or dict (katclient's own introspection and batch-read expressions).
    LITERAL = "literal"
    #: No reply at all (Close).
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Request:
    """One encoded request.

    :ivar command: the JSON ``cmd``.
    :ivar data: the bytes to send, at most :data:`MAX_REQUEST_BYTES`.
    :ivar shape: what the reply looks like.
    """

    command: Command
    data: bytes
    shape: ReplyShape


class DashboardError(OperationFailure):
    """The dashboard answered ``Error: <text>`` (section 1.3).

    :ivar command: the JSON ``cmd`` that failed (``Get``, ``Set``, ...).
    :ivar reason: the dashboard's text after ``"Error: "`` (for a missing widget, ``'Nope'``).
    :ivar reply: the whole reply text.

    ``str()`` gives ``In <cmd>, Error: <text>``, the message of the seed client's ``'exception'`` mode.
    """

    def __init__(self, command: str, reply: str) -> None:
        super().__init__(reply[len(ERROR_PREFIX) :] if reply.startswith(ERROR_PREFIX) else reply, reply)
        self.command = command
        self.args = (f"In {command}, {reply}",)


class RequestTooLong(InvalidUsage):
    """An encoded request exceeds :data:`MAX_REQUEST_BYTES`; it was not sent (section 1.1).

    :ivar size: the encoded size in bytes.
    :ivar limit: the limit in bytes.
    """

    def __init__(self, command: str, size: int, limit: int = MAX_REQUEST_BYTES) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"{command} request is {size} bytes; the dashboard reads at most {limit} per request "
            "and drops the connection on longer ones"
        )


class UnexpectedReply(ProtocolError):
    """A reply has a shape its request cannot produce (e.g. a Set answered with neither ``Success`` nor
    ``Error: ...``, or an introspection reply that is not a dict of lists).

    :ivar reply: the reply text.
    """

    def __init__(self, message: str, reply: str) -> None:
        self.reply = reply
        shown = reply if len(reply) <= 80 else reply[:80] + "..."
        super().__init__(f"{message}: {shown!r}")


class ReplyTooLong(ProtocolError):
    """A reply grew beyond :data:`MAX_REPLY_BYTES` without being complete."""


class RequestQueueFull(KatclientError):
    """Too many requests are already waiting for the single dashboard connection."""


# --------------------------------------------------------------------------------------------------------
# Encoding


def _check_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidUsage(f"{name} must be a str, got {type(value).__name__}")
    return value


def _encode(command: Command, body: dict[str, Any], shape: ReplyShape) -> Request:
    # Key order and content as the seed client sends them (section 1.2); compact separators leave more
    # of the 1024 bytes for the payload, and the dashboard's json.loads does not care.
    data = json.dumps({"cmd": command.value, **body}, separators=(",", ":")).encode()
    if len(data) > MAX_REQUEST_BYTES:
        raise RequestTooLong(command.value, len(data))
    return Request(command, data, shape)


def encode_get(widget_nickname: str, field_name: str, printout: bool = False) -> Request:
    """Encode ``{"cmd":"Get","widget_nickname":..,"field_name":..,"printout":..}`` (section 1.2).

    :raises InvalidUsage: a name is not a str; :class:`RequestTooLong` when over 1024 bytes.
    """
    body = {
        "widget_nickname": _check_str("widget_nickname", widget_nickname),
        "field_name": _check_str("field_name", field_name),
        "printout": bool(printout),
    }
    return _encode(Command.GET, body, ReplyShape.VALUE)


def encode_set(
    widget_nickname: str, field_name: str, new_value: str | int | float, printout: bool = False
) -> Request:
    """Encode a Set (section 1.2).  Numbers are sent as their ``str()``: field values are always strings
    (section 1.6), and a non-str value with ``printout`` true makes the dashboard fail (section 1.2).

    :raises InvalidUsage: bad types; :class:`RequestTooLong` when over 1024 bytes.
    """
    if isinstance(new_value, bool) or not isinstance(new_value, str | int | float):
        raise InvalidUsage(f"new_value must be a str, int or float, got {type(new_value).__name__}")
    body = {
        "widget_nickname": _check_str("widget_nickname", widget_nickname),
        "field_name": _check_str("field_name", field_name),
        "new_value": str(new_value),
        "printout": bool(printout),
    }
    return _encode(Command.SET, body, ReplyShape.ACK)


def encode_confirm(widget_nickname: str, printout: bool = False) -> Request:
    """Encode ``{"cmd":"Confirm","widget_nickname":..,"printout":..}`` (section 1.2)."""
    body = {"widget_nickname": _check_str("widget_nickname", widget_nickname), "printout": bool(printout)}
    return _encode(Command.CONFIRM, body, ReplyShape.ACK)


def encode_eval(expression: str, printout: bool = False, shape: ReplyShape = ReplyShape.VALUE) -> Request:
    """Encode ``{"cmd":"Eval","code":..,"printout":..}`` (section 1.2).

    :param shape: :attr:`ReplyShape.LITERAL` when the expression evaluates to the ``repr`` of a list or
        dict, which lets the framer recognise the end of a long reply by its content.
    """
    body = {"code": _check_str("expression", expression), "printout": bool(printout)}
    return _encode(Command.EVAL, body, shape)


def exec_source(code: str | Callable[..., object]) -> str:
    """The source text to send for an Exec (section 1.2, "Exec rewriting").

    * A function: its source (``inspect.getsource``), dedented so functions defined inside other
      functions work too; the dashboard renames a leading ``def`` to ``to_exec`` and calls it.
    * Source text: wrapped as the body of ``def _katclient_exec():``.  The dashboard rewrites any text
      containing ``lambda`` anywhere from that word on, which would mangle plain statements; as a ``def``
      the text is always run whole, once.  Names it assigns are then local to that function.

    :raises InvalidUsage: the function's source is not available.
    """
    if isinstance(code, str):
        body = textwrap.dedent(code).strip("\n")
        if not body.strip():
            body = "pass"
        return "def _katclient_exec():\n" + textwrap.indent(body, "    ", lambda line: True) + "\n"
    if not callable(code):
        raise InvalidUsage(f"code must be source text or a function, got {type(code).__name__}")
    try:
        source = inspect.getsource(code)
    except (OSError, TypeError) as exc:
        raise InvalidUsage(f"cannot get the source of {code!r}: {exc}") from exc
    return textwrap.dedent(source)


def encode_exec(code: str | Callable[..., object], printout: bool = False) -> Request:
    """Encode ``{"cmd":"Exec","code":..,"printout":..}`` with the code prepared by :func:`exec_source`."""
    return _encode(Command.EXEC, {"code": exec_source(code), "printout": bool(printout)}, ReplyShape.ACK)


def encode_close() -> Request:
    """Encode ``{"cmd":"Close"}``; the dashboard sends no reply (section 1.2)."""
    return _encode(Command.CLOSE, {}, ReplyShape.NONE)


def encode_probe(nonce: str) -> Request:
    """Encode the sentinel probe: an Eval of the string literal *nonce*, which the dashboard echoes.

    ``printout`` is false so the dashboard logs nothing.  *nonce* must be non-empty, printable ASCII.
    """
    if not nonce or not nonce.isascii() or not nonce.isprintable():
        raise InvalidUsage(f"probe nonce must be non-empty printable ASCII, got {nonce!r}")
    return encode_eval(repr(nonce), printout=False)


def encode_list_fields(printout: bool = False) -> Request:
    """Encode the introspection Eval (:data:`INTROSPECTION_EXPRESSION`, section 1.6)."""
    return encode_eval(INTROSPECTION_EXPRESSION, printout, ReplyShape.LITERAL)


# The batch read: one Eval returning repr of a list with each field's value, or None when the widget or
# field does not exist.  It reads the same StringVar a Get reads (``widget.attributes[field].get()``).
_BATCH_HEAD = (
    "(lambda d:repr([d[n].attributes[f].get() if n in d and f in getattr(d[n],'attributes',{}) "
    "else None for n,f in ("
)
_BATCH_TAIL = ")]))(get_dashboard().widgets_by_nickname)"


def _json_len(text: str) -> int:
    """Bytes *text* takes inside a JSON string (escapes are per character, so lengths add)."""
    return len(json.dumps(text)) - 2


def encode_batch_get(
    pairs: Iterable[tuple[str, str]], printout: bool = False
) -> list[tuple[Request, list[tuple[str, str]]]]:
    """Encode reads of many ``(widget_nickname, field_name)`` pairs as few Evals as the 1024-byte limit
    allows, in order.

    :returns: ``[(request, pairs_it_reads), ...]``; the replies parse with :func:`parse_batch_reply`.
    :raises InvalidUsage: a name is not a str; :class:`RequestTooLong` when one pair alone does not fit.
    """
    overhead = len(encode_eval(_BATCH_HEAD + _BATCH_TAIL, printout).data)
    out: list[tuple[Request, list[tuple[str, str]]]] = []
    chunk: list[tuple[str, str]] = []
    parts: list[str] = []
    size = overhead

    def flush() -> None:
        if chunk:
            request = encode_eval(_BATCH_HEAD + "".join(parts) + _BATCH_TAIL, printout, ReplyShape.LITERAL)
            out.append((request, list(chunk)))
            chunk.clear()
            parts.clear()

    for nickname, field in pairs:
        part = f"({_check_str('widget_nickname', nickname)!r},{_check_str('field_name', field)!r}),"
        cost = _json_len(part)
        if overhead + cost > MAX_REQUEST_BYTES:
            raise RequestTooLong("Eval", overhead + cost)
        if size + cost > MAX_REQUEST_BYTES:
            flush()
            size = overhead
        chunk.append((nickname, field))
        parts.append(part)
        size += cost
    flush()
    return out


# --------------------------------------------------------------------------------------------------------
# Replies


def is_error_reply(text: str) -> bool:
    """Whether *text* is a failure reply (``Error: ...``, section 1.3).

    Stricter than the seed client's ``result[:5] == "Error"``: the dashboard always sends the colon and
    space, so a value such as ``Errors: 3`` is not taken for a failure.
    """
    return text.startswith(ERROR_PREFIX)


def check_reply(command: Command, text: str, shape: ReplyShape, mode: ErrorMode = "exception") -> str:
    """Classify a reply.

    :returns: *text* (for an error reply in modes ``'none'`` and ``'print'``, the error text itself; the
        caller logs in ``'print'`` mode).
    :raises DashboardError: an ``Error: ...`` reply in mode ``'exception'``.
    :raises UnexpectedReply: an ACK-shaped request answered with neither ``Success`` nor an error.
    """
    if is_error_reply(text):
        if mode == "exception":
            raise DashboardError(command.value, text)
        return text
    if shape is ReplyShape.ACK and text != SUCCESS:
        raise UnexpectedReply(f"{command.value} should be answered with {SUCCESS!r}", text)
    return text


def _literal(text: str, what: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise UnexpectedReply(f"{what} is not a Python literal ({exc})", text) from exc


def parse_field_listing(text: str) -> dict[str, list[str]]:
    """Parse the reply of :data:`INTROSPECTION_EXPRESSION`: widget nickname -> field names (section 1.6).

    :raises UnexpectedReply: the reply is not ``repr`` of a ``dict[str, list[str]]``.
    """
    value = _literal(text, "introspection reply")
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(f, str) for f in v)
        for k, v in value.items()
    ):
        raise UnexpectedReply(
            "introspection reply is not a dict of widget nickname -> list of field names", text
        )
    return value


def parse_batch_reply(text: str, count: int) -> list[str | None]:
    """Parse a batch-read reply (:func:`encode_batch_get`) of *count* fields.

    :returns: each field's value, or ``None`` when its widget or field does not exist.
    :raises UnexpectedReply: the reply is not a list of *count* str-or-None items.
    """
    value = _literal(text, "batch read reply")
    if (
        not isinstance(value, list)
        or len(value) != count
        or not all(v is None or isinstance(v, str) for v in value)
    ):
        raise UnexpectedReply(f"batch read reply is not a list of {count} strings or None", text)
    return value


# --------------------------------------------------------------------------------------------------------
# Framing


class FramerState(enum.Enum):
    """States of :class:`ReplyFramer`."""

    #: The request was sent; no reply byte has arrived.
    AWAITING = "awaiting"
    #: The I/O layer must send :attr:`ReplyFramer.probe` now, then call :meth:`ReplyFramer.probe_sent`.
    PROBE_NEEDED = "probe-needed"
    #: The probe was sent; the reply ends where the probe's echo begins.
    PROBING = "probing"
    #: :attr:`ReplyFramer.reply` holds the whole reply.
    DONE = "done"


def _is_whole_literal(buf: bytes | bytearray) -> bool:
    stripped = buf.strip()
    if not stripped or stripped[:1] not in (b"[", b"{") or stripped[-1:] not in (b"]", b"}"):
        return False
    try:
        ast.literal_eval(stripped.decode())
    except (ValueError, SyntaxError, TypeError, UnicodeDecodeError, MemoryError, RecursionError):
        return False
    return True


class ReplyFramer:
    """Assembles the reply to one request from the bytes that arrive (see the module docstring).

    Transitions (events are method calls by the I/O layer)::

        AWAITING     --receive_data, complete by content or short first arrival--> DONE
        AWAITING     --receive_data, otherwise--------------------------------------> PROBE_NEEDED
        AWAITING     --quiet (no byte for the I/O layer's quiet period)-------------> PROBE_NEEDED
        AWAITING     --quiet, probing disabled, some bytes received-----------------> DONE
        PROBE_NEEDED --receive_data (bytes are kept)--------------------------------> PROBE_NEEDED
        PROBE_NEEDED --probe_sent---------------------------------------------------> PROBING
        PROBING      --receive_data, buffer ends with the probe's echo--------------> DONE

    :param request: the request whose reply is awaited (its :attr:`Request.shape` must not be NONE).
    :param nonce: the unique string a probe would echo (see :func:`encode_probe`).
    :param probing: whether a probe may be sent; without it a zero-byte reply is never complete and only
        the I/O layer's timeout ends the wait.
    :raises InvalidUsage: the request has no reply.
    """

    __slots__ = ("request", "probe", "state", "_echo", "_buf", "_probing")

    def __init__(self, request: Request, nonce: str, probing: bool = True) -> None:
        if request.shape is ReplyShape.NONE:
            raise InvalidUsage(f"{request.command.value} has no reply to frame")
        self.request = request
        #: The probe request to send in state PROBE_NEEDED.
        self.probe = encode_probe(nonce)
        self.state = FramerState.AWAITING
        self._echo = nonce.encode()
        self._buf = bytearray()
        self._probing = probing

    @property
    def done(self) -> bool:
        """Whether the reply is complete."""
        return self.state is FramerState.DONE

    @property
    def buffered(self) -> int:
        """Bytes received so far."""
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes that arrived on the connection.

        :raises ReplyTooLong: the buffer exceeds :data:`MAX_REPLY_BYTES`.
        :raises UnexpectedReply: bytes arrived after the reply was complete (the peer broke the
            one-reply-per-request rule; the connection is out of step).
        """
        if not data:
            return
        if self.state is FramerState.DONE:
            raise UnexpectedReply(
                "bytes arrived after the reply was complete", bytes(data).decode(errors="replace")
            )
        first = not self._buf
        self._buf += data
        if len(self._buf) > MAX_REPLY_BYTES:
            raise ReplyTooLong(f"reply exceeds {MAX_REPLY_BYTES} bytes")
        if self.state is FramerState.AWAITING:
            if self._complete_by_content() or (first and len(self._buf) < WHOLE_REPLY_BYTES):
                self.state = FramerState.DONE
            elif self._probing:
                self.state = FramerState.PROBE_NEEDED
        elif self.state is FramerState.PROBING and self._buf.endswith(self._echo):
            del self._buf[-len(self._echo) :]
            self.state = FramerState.DONE

    def _complete_by_content(self) -> bool:
        shape = self.request.shape
        if shape is ReplyShape.ACK:
            return self._buf == SUCCESS.encode()
        if shape is ReplyShape.LITERAL:
            return _is_whole_literal(self._buf)
        return False

    def quiet(self) -> None:
        """No byte arrived for the I/O layer's quiet period.

        In AWAITING this asks for a probe; with probing disabled, bytes already received are taken as the
        whole reply (it settled), and an empty buffer keeps waiting.
        """
        if self.state is not FramerState.AWAITING:
            return
        if self._probing:
            self.state = FramerState.PROBE_NEEDED
        elif self._buf:
            self.state = FramerState.DONE

    def probe_sent(self) -> None:
        """The I/O layer wrote :attr:`probe`.

        :raises InvalidUsage: no probe was asked for.
        """
        if self.state is not FramerState.PROBE_NEEDED:
            raise InvalidUsage(f"probe_sent in state {self.state.value}")
        self.state = FramerState.PROBING

    @property
    def reply(self) -> str:
        """The whole reply, decoded as UTF-8.

        :raises InvalidUsage: the reply is not complete yet.
        :raises UnexpectedReply: it is not valid UTF-8 (the dashboard sends ``str.encode()``).
        """
        if self.state is not FramerState.DONE:
            raise InvalidUsage(f"reply not complete (state {self.state.value})")
        try:
            return self._buf.decode()
        except UnicodeDecodeError as exc:
            raise UnexpectedReply(f"reply is not UTF-8 ({exc})", self._buf.decode(errors="replace")) from exc
