"""Request handlers: the context a handler answers through, argument decoding, timeout hints.

Sources: KATCP v5 spec section 2.4 (a reply ends a request; its informs carry the
request's name and mid), protocols/katcp.md 1.8 (standard requests, ``fail`` and
``invalid`` replies) and 4 section 2.2 (aiokatcp's ``request_<name>`` convention,
which this follows: the docstring is the ``?help`` text and arguments are decoded
from the annotations).

Supported annotations: ``bytes`` (raw), ``str`` (UTF-8), ``int``, ``float``,
``bool`` (``1``/``0``), :class:`~katclient.protocol.Address`, any
:class:`enum.Enum` (members by their KATCP name, e.g. ``Status.NOMINAL`` as
``nominal``), ``Optional[T]`` / ``T | None`` (the argument may be omitted), and
``Union[A, B]`` (tried in order).  An unannotated argument is ``bytes``.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from katclient.protocol import (
    Address,
    FailReply,
    InvalidUsage,
    Message,
    MessageType,
    encode_argument,
    format_message,
)

if TYPE_CHECKING:
    from katclient.server.connection import ClientConnection
    from katclient.server.server import DeviceServer

__all__ = [
    "RequestContext",
    "RequestHandler",
    "MethodSpec",
    "timeout_hint",
    "requires",
    "build_decoder",
    "encode_reply",
]

#: Function attribute set by :func:`timeout_hint`.
TIMEOUT_HINT_ATTR: Final = "_katcp_timeout_hint"
#: Function attributes set by :func:`requires`.
MIN_MAJOR_ATTR: Final = "_katcp_min_major"
FLAG_ATTR: Final = "_katcp_flag"

_F = TypeVar("_F", bound=Callable[..., Any])

_REPLY_CODES: Final = (b"ok", b"fail", b"invalid")


def timeout_hint(seconds: float) -> Callable[[_F], _F]:
    """Mark a ``request_<name>`` handler as slow: ``?request-timeout-hint`` reports ``seconds``.

    :param seconds: how long a client should wait for the reply, float seconds (> 0).
    :raises InvalidUsage: for a non-positive hint.

    Source: katcp.md 1.3 and 1.8 (protocol flag ``T``).
    """
    hint = float(seconds)
    if not hint > 0:
        raise InvalidUsage(f"timeout hint must be > 0 seconds, got {seconds!r}")

    def mark(func: _F) -> _F:
        setattr(func, TIMEOUT_HINT_ATTR, hint)
        return func

    return mark


def requires(major: int = 0, flag: str | None = None) -> Callable[[_F], _F]:
    """Offer a ``request_<name>`` handler only on servers of at least KATCP ``major`` and
    with protocol ``flag`` (e.g. ``?version-list`` needs v5, ``?request-timeout-hint`` flag
    ``T``; katcp.md 1.3 and 1.4).  Elsewhere the request is unknown.
    """

    def mark(func: _F) -> _F:
        setattr(func, MIN_MAJOR_ATTR, major)
        setattr(func, FLAG_ATTR, flag)
        return func

    return mark


class RequestContext:
    """What a request handler answers through.

    A context stays usable after the handler returned: a handler that calls
    :meth:`defer` gets no automatic reply and may reply later (for example from a
    background task).  Writes to a connection that has closed are dropped.

    :ivar request: the request :class:`~katclient.protocol.Message`.
    :ivar client: the :class:`~katclient.server.connection.ClientConnection` it came on
        (``.address`` is ``(host, port)``).
    """

    __slots__ = ("request", "client", "_replied", "_deferred")

    def __init__(self, client: ClientConnection, request: Message) -> None:
        self.request = request
        self.client = client
        self._replied = False
        self._deferred = False

    @property
    def mid(self) -> int | None:
        """The request's message id (echoed on every inform and the reply), or ``None``."""
        return self.request.mid

    @property
    def server(self) -> DeviceServer:
        """The :class:`~katclient.server.DeviceServer` serving the request."""
        return self.client.server

    @property
    def replied(self) -> bool:
        """Whether the reply has been sent."""
        return self._replied

    @property
    def deferred(self) -> bool:
        """Whether :meth:`defer` was called."""
        return self._deferred

    def defer(self) -> None:
        """Take over replying: the handler's return sends no reply; call :meth:`reply` later."""
        self._deferred = True

    def _check_open(self) -> None:
        if self._replied:
            raise InvalidUsage(f"request ?{self.request.name} has already been replied to")

    def inform(self, *args: Any) -> None:
        """Send ``#name[mid] args...`` belonging to this request.

        :param args: values encoded with :func:`~katclient.protocol.encode_argument`.
        :raises InvalidUsage: after the reply was sent, or for an unencodable argument.
        """
        self._check_open()
        self.client.write(format_message(self._inform(args)))

    def _inform(self, args: Iterable[Any]) -> Message:
        req = self.request
        return Message(MessageType.INFORM, req.name, *_enums_to_wire(args), mid=req.mid)

    def informs(self, informs: Iterable[Iterable[Any]], *, send_reply: bool = True) -> None:
        """Send one inform per item (each an iterable of arguments), then ``ok N``.

        :param informs: e.g. ``[("a", 1), ("b", 2)]``.
        :param send_reply: ``False`` to send only the informs.
        :raises InvalidUsage: after the reply was sent, or for an unencodable argument.
        """
        self._check_open()
        lines = [format_message(self._inform(args)) for args in informs]
        if send_reply:
            lines.append(format_message(Message.reply_to_request(self.request, b"ok", len(lines))))
            self._replied = True
        self.client.write(b"".join(lines))

    def reply(self, *args: Any) -> None:
        """Send the reply ``!name[mid] args...``; the first argument is ``ok``, ``fail`` or ``invalid``.

        :raises InvalidUsage: when a reply was already sent, the code is missing or
            unknown, or an argument cannot be encoded.
        """
        self._check_open()
        if not args or encode_argument(args[0]) not in _REPLY_CODES:
            raise InvalidUsage(f"a reply starts with ok, fail or invalid, got {args[:1]!r}")
        msg = Message.reply_to_request(self.request, *_enums_to_wire(args))
        self._replied = True
        self.client.write(format_message(msg))

    def _reply_raw(self, line: bytes) -> None:
        """Send an already formatted reply line (the standard requests' fast path)."""
        self._check_open()
        self._replied = True
        self.client.write(line)


def _enums_to_wire(args: Iterable[Any]) -> list[Any]:
    return [enum_wire_name(a) if isinstance(a, enum.Enum) else a for a in args]


def encode_reply(result: Any) -> tuple[Any, ...]:
    """The ``ok`` reply arguments for a handler's return value: ``None`` -> ``("ok",)``, a
    tuple -> ``("ok", *result)``, anything else -> ``("ok", result)``."""
    if result is None:
        return (b"ok",)
    if isinstance(result, tuple):
        return (b"ok", *result)
    return (b"ok", result)


# -- argument decoding -----------------------------------------------------------------

Decoder = Callable[[bytes], Any]


def _decode_str(raw: bytes) -> str:
    return raw.decode("utf-8")


def _decode_bool(raw: bytes) -> bool:
    if raw == b"1":
        return True
    if raw == b"0":
        return False
    raise ValueError("expected 1 or 0")


def _decode_int(raw: bytes) -> int:
    return int(raw)


def _decode_bytes(raw: bytes) -> bytes:
    return raw


def enum_wire_name(member: enum.Enum) -> bytes:
    """The KATCP form of an enum member: its ``katcp_bytes()``, its ``katcp_value``, or its
    lower-case name with ``_`` as ``-`` (``Status.WARN`` -> ``warn``, ``DARK_RED`` -> ``dark-red``)."""
    katcp_bytes = getattr(member, "katcp_bytes", None)
    if katcp_bytes is not None:
        return bytes(katcp_bytes())
    value = getattr(member, "katcp_value", None)
    if value is not None:
        return encode_argument(value)
    return member.name.lower().replace("_", "-").encode("ascii")


def _enum_decoder(cls: type[enum.Enum]) -> Decoder:
    # Not encode_argument(member): it encodes IntEnum members (Status, Lru) as digits.
    table = {enum_wire_name(member): member for member in cls}
    choices = ", ".join(sorted(k.decode("ascii", "replace") for k in table))

    def decode(raw: bytes) -> enum.Enum:
        try:
            return table[raw]
        except KeyError:
            raise ValueError(f"expected one of {choices}") from None

    return decode


def _union_decoder(decoders: list[Decoder]) -> Decoder:
    def decode(raw: bytes) -> Any:
        errors = []
        for d in decoders:
            try:
                return d(raw)
            except (ValueError, TypeError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))

    return decode


_SIMPLE: Final[dict[Any, Decoder]] = {
    bytes: _decode_bytes,
    str: _decode_str,
    int: _decode_int,
    float: float,
    bool: _decode_bool,
    Address: Address.parse,
    inspect.Parameter.empty: _decode_bytes,
    Any: _decode_bytes,
}


def build_decoder(annotation: Any) -> tuple[Decoder, bool]:
    """The decoder for one annotation, and whether it is optional (``Optional[T]``).

    :raises TypeError: for an annotation katclient cannot decode.
    """
    simple = _SIMPLE.get(annotation)
    if simple is not None:
        return simple, False
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return _enum_decoder(annotation), False
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) != len(typing.get_args(annotation))
        decoders = [build_decoder(a)[0] for a in members]
        return (decoders[0] if len(decoders) == 1 else _union_decoder(decoders)), optional
    raise TypeError(f"cannot decode a KATCP argument as {annotation!r}")


class _Param:
    __slots__ = ("name", "decode", "default")

    def __init__(self, name: str, decode: Decoder, default: Any) -> None:
        self.name = name
        self.decode = decode
        self.default = default


_REQUIRED: Final = inspect.Parameter.empty


class RequestHandler:
    """One request a server answers: its name, help text, timeout hint and how to call it.

    :ivar name: the request name (dashes).
    :ivar help: the ``?help`` text.
    :ivar timeout_hint: seconds or ``None`` (``?request-timeout-hint``).
    :ivar is_async: whether calling returns an awaitable that must run as a task.
    """

    __slots__ = ("name", "help", "timeout_hint", "is_async", "_call")

    def __init__(
        self,
        name: str,
        help: str,
        call: Callable[[RequestContext, tuple[bytes, ...]], Any],
        *,
        is_async: bool,
        timeout_hint: float | None = None,
    ) -> None:
        self.name = name
        self.help = help
        self.timeout_hint = timeout_hint
        self.is_async = is_async
        self._call = call

    def __call__(self, ctx: RequestContext, args: tuple[bytes, ...]) -> Any:
        return self._call(ctx, args)

    @classmethod
    def from_raw(
        cls,
        name: str,
        handler: Callable[..., Awaitable[Any] | Any],
        help: str,
        timeout_hint: float | None = None,
    ) -> RequestHandler:
        """Wrap ``handler(ctx, *raw_args: bytes)`` (a coroutine function or a plain function)."""

        def call(ctx: RequestContext, args: tuple[bytes, ...]) -> Any:
            return handler(ctx, *args)

        return cls(name, help, call, is_async=_is_async(handler), timeout_hint=timeout_hint)


def _is_async(func: Callable[..., Any]) -> bool:
    # Anything else that returns an awaitable is detected when called (DeviceServer._dispatch).
    return inspect.iscoroutinefunction(func)


class MethodSpec:
    """A ``request_<name>`` method analysed at class creation: its decoders, ready to bind.

    :raises TypeError: when the method has no docstring, lacks the ``ctx`` parameter or
        has an annotation that cannot be decoded.
    """

    __slots__ = (
        "name", "help", "timeout_hint", "is_async", "min_major", "flag", "_func", "_params", "_varargs", "_min"
    )

    def __init__(self, name: str, func: Callable[..., Any]) -> None:
        doc = inspect.getdoc(func)
        if not doc:
            raise TypeError(f"request handler {func.__qualname__} has no docstring (it is the ?help text)")
        self.name = name
        self.help = doc
        self.timeout_hint: float | None = getattr(func, TIMEOUT_HINT_ATTR, None)
        self.is_async = _is_async(func)
        #: Least KATCP major version and protocol flag the request needs (katcp.md 1.3).
        self.min_major: int = getattr(func, MIN_MAJOR_ATTR, 0)
        self.flag: str | None = getattr(func, FLAG_ATTR, None)
        self._func = func
        sig = inspect.signature(func)
        plist = list(sig.parameters.values())
        if len(plist) < 2 or plist[1].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise TypeError(f"request handler {func.__qualname__} must take (self, ctx, ...)")
        params: list[_Param] = []
        varargs: Decoder | None = None
        for p in plist[2:]:
            ann = _resolve_annotation(func, p)
            try:
                decode, optional = build_decoder(ann)
            except TypeError as exc:
                raise TypeError(f"request handler {func.__qualname__}, argument {p.name}: {exc}") from None
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                varargs = decode
            elif p.kind is inspect.Parameter.KEYWORD_ONLY:
                if p.default is _REQUIRED:
                    raise TypeError(f"request handler {func.__qualname__}: keyword-only {p.name} needs a default")
            elif p.kind is not inspect.Parameter.VAR_KEYWORD:
                default = p.default
                if default is _REQUIRED and optional:
                    default = None
                params.append(_Param(p.name, decode, default))
        self._params = tuple(params)
        self._varargs = varargs
        self._min = sum(1 for p in params if p.default is _REQUIRED)

    def decode(self, args: tuple[bytes, ...]) -> list[Any]:
        """Decode wire arguments into positional call arguments.

        :raises FailReply: with a one-line reason for too few, too many or undecodable arguments.
        """
        params = self._params
        n = len(args)
        if n < self._min:
            missing = params[n].name
            raise FailReply(f"Too few arguments: {missing} is required (got {n}, need {self._min})")
        if n > len(params) and self._varargs is None:
            raise FailReply(f"Too many arguments: got {n}, at most {len(params)}")
        out: list[Any] = []
        for i, p in enumerate(params):
            if i >= n:
                out.append(p.default)
                continue
            out.append(_decode_one(p.decode, args[i], p.name))
        vdecode = self._varargs
        if n > len(params) and vdecode is not None:
            out.extend(_decode_one(vdecode, a, "*args") for a in args[len(params):])
        return out

    def bind(self, server: Any) -> RequestHandler:
        """A :class:`RequestHandler` calling the method on ``server``."""
        func = self._func
        if not self._params and self._varargs is None:

            def call(ctx: RequestContext, args: tuple[bytes, ...]) -> Any:
                if args:
                    raise FailReply(f"Too many arguments: got {len(args)}, at most 0")
                return func(server, ctx)

        else:
            decode = self.decode

            def call(ctx: RequestContext, args: tuple[bytes, ...]) -> Any:
                return func(server, ctx, *decode(args))

        return RequestHandler(self.name, self.help, call, is_async=self.is_async, timeout_hint=self.timeout_hint)


def _resolve_annotation(func: Callable[..., Any], param: inspect.Parameter) -> Any:
    """One argument's annotation, evaluated if it is a string (``from __future__ import
    annotations``).  Only the decoded arguments are resolved, so ``ctx`` and the return
    annotation may name types imported under ``TYPE_CHECKING``.
    """
    ann = param.annotation
    if not isinstance(ann, str):
        return ann
    namespace = getattr(inspect.unwrap(func), "__globals__", {})
    try:
        return eval(ann, namespace)  # what typing.get_type_hints does, one annotation at a time
    except Exception as exc:
        raise TypeError(f"cannot resolve annotation {ann!r} of {func.__qualname__}: {exc}") from None


def _decode_one(decode: Decoder, raw: bytes, name: str) -> Any:
    try:
        return decode(raw)
    except (ValueError, TypeError, UnicodeError) as exc:
        shown = raw[:40] + (b"..." if len(raw) > 40 else b"")
        raise FailReply(f"Bad value {shown!r} for argument {name}: {exc}") from None
