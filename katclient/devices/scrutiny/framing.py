"""Sans-I/O codec for the Scrutiny server API's TCP framing.

Source: protocols/scrutiny.md section 1.1.  Each message travels as one datagram::

    <SCRUTINY size=<hex> flags=<c?h?>> payload [md5(payload)]

``size`` is the payload length as sent (lowercase hex, no padding), ``c`` means the payload is
zlib-compressed, ``h`` means the 16-byte MD5 digest of the payload as sent follows it.  The payload
is one UTF-8 JSON object; the server writes Python's non-strict JSON, so bare ``NaN``,
``Infinity`` and ``-Infinity`` tokens occur and are accepted here.

Nothing here knows sockets or event loops: :class:`FrameDecoder` is fed bytes cut anywhere and
returns what is complete; :func:`encode_message` turns a dict into bytes to send.  Decoding
problems are returned as :class:`FrameError` values in the output, never raised, so one bad
frame does not stop the stream (the real parser also drops a bad frame and carries on).
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from katclient.devices.scrutiny.errors import MessageTooLargeError, ScrutinyProtocolError

__all__ = [
    "STREAM_MTU",
    "HASH_SIZE",
    "MAX_HEADER_LENGTH",
    "MAX_DECOMPRESSED_SIZE",
    "INTERCHUNK_TIMEOUT",
    "FrameErrorKind",
    "FrameError",
    "FrameDecoder",
    "MessageDecoder",
    "encode_frame",
    "encode_message",
    "decode_payload",
]

#: Largest payload, in bytes as sent (after compression), that either side accepts.  The real server
#: ignores bigger incoming frames and refuses to send bigger replies (scrutiny.md 1.1 ``STREAM_MTU``).
STREAM_MTU = 1024 * 1024

#: Size of the MD5 digest that follows the payload when the ``h`` flag is set.
HASH_SIZE = 16

#: Longest header kept while waiting for the rest of it.  Garbage before a header is dropped except
#: for this many trailing bytes, which may hold the start of a header cut by the transport.  The real
#: parser keeps 33 bytes (an 8-digit size); 64 leaves room for zero-padded sizes.
MAX_HEADER_LENGTH = 64

#: Largest payload after decompression.  A 1 MiB compressed frame could otherwise expand without
#: bound (a zip bomb); JSON lists compress about 10:1, so 32 MiB leaves a wide margin.
MAX_DECOMPRESSED_SIZE = 32 * STREAM_MTU

#: Seconds after which a frame whose remaining bytes have not arrived is dropped, as the real server
#: does (``STREAM_INTERCHUNK_TIMEOUT``, scrutiny.md 1.1).  Only applied when ``feed`` gets ``now``.
INTERCHUNK_TIMEOUT = 1.0

_HEADER_RE = re.compile(rb"<SCRUTINY size=([0-9a-fA-F]+) flags=(c?h?)>")


class FrameErrorKind(enum.Enum):
    """Why a frame was dropped."""

    #: The header announced a payload larger than the MTU; what follows is skipped as garbage.
    OVERSIZE = "oversize"
    #: The MD5 digest did not match the payload.
    BAD_HASH = "bad_hash"
    #: The ``c`` flag was set but the payload is not valid zlib data, or it expands too far.
    BAD_COMPRESSION = "bad_compression"
    #: The payload is not UTF-8 JSON.
    BAD_JSON = "bad_json"
    #: The payload is JSON but not an object.
    NOT_AN_OBJECT = "not_an_object"
    #: The rest of a frame came later than the inter-chunk timeout; the partial frame was dropped.
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class FrameError:
    """A frame that could not be decoded (returned by the decoders, not raised).

    :param kind: what went wrong.
    :param detail: a human-readable explanation.
    """

    kind: FrameErrorKind
    detail: str

    def to_exception(self) -> ScrutinyProtocolError:
        """This error as a :class:`~katclient.devices.scrutiny.errors.ScrutinyProtocolError`."""
        return ScrutinyProtocolError(f"{self.kind.value}: {self.detail}")


def encode_frame(
    payload: bytes, *, compress: bool = True, use_hash: bool = True, mtu: int = STREAM_MTU
) -> bytes:
    """Frame one payload.

    :param payload: the bytes to send (normally UTF-8 JSON).
    :param compress: zlib-compress the payload (level 1, as the server does) and set flag ``c``.
    :param use_hash: append the MD5 digest of the payload as sent and set flag ``h``.
    :param mtu: the size limit for the payload as sent, in bytes.
    :returns: header, payload and optional digest, ready to write.
    :raises MessageTooLargeError: when the payload as sent exceeds ``mtu``.
    """
    data = zlib.compress(payload, 1) if compress else payload
    if len(data) > mtu:
        raise MessageTooLargeError(len(data), mtu)
    flags = ("c" if compress else "") + ("h" if use_hash else "")
    header = b"<SCRUTINY size=%x flags=%s>" % (len(data), flags.encode("ascii"))
    if use_hash:
        return b"".join((header, data, hashlib.md5(data, usedforsecurity=False).digest()))
    return header + data


def encode_message(
    message: Mapping[str, Any], *, compress: bool = True, use_hash: bool = True, mtu: int = STREAM_MTU
) -> bytes:
    """Serialise one message as the server does (compact JSON, ``NaN`` allowed) and frame it.

    :param message: a JSON-serialisable mapping, e.g. ``{"cmd": "echo", "reqid": 1, "payload": "x"}``.
    :param compress: see :func:`encode_frame`.
    :param use_hash: see :func:`encode_frame`.
    :param mtu: see :func:`encode_frame`.
    :returns: the framed bytes.
    :raises MessageTooLargeError: when too large once compressed.
    :raises TypeError: when the message holds something JSON cannot represent.
    """
    payload = json.dumps(message, separators=(",", ":"), allow_nan=True).encode("utf-8")
    return encode_frame(payload, compress=compress, use_hash=use_hash, mtu=mtu)


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Parse one decompressed payload as a JSON object, accepting bare ``NaN``/``Infinity``.

    :param payload: UTF-8 JSON bytes.
    :returns: the decoded object.
    :raises ScrutinyProtocolError: when it is not UTF-8 JSON or not an object.
    """
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ScrutinyProtocolError(f"payload is not UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ScrutinyProtocolError(f"payload is JSON but not an object: {type(obj).__name__}")
    return obj


@dataclass(slots=True)
class _Expecting:
    size: int
    compressed: bool
    hashed: bool


class FrameDecoder:
    """Incremental frame decoder: feed chunks cut anywhere, get complete payloads.

    Behaviour follows the real ``StreamParser`` (scrutiny.md 1.1): bytes before a header are
    skipped; a header announcing more than ``mtu`` bytes is reported and the bytes after it are
    treated as garbage until the next header; a bad digest drops that frame only.  Memory is
    bounded: at most one payload (``mtu`` + digest) plus one chunk is buffered.

    :param mtu: the largest accepted payload, as sent, in bytes.
    :param interchunk_timeout: seconds after which a partial frame is dropped, when :meth:`feed`
        is given ``now``; ``None`` disables the check.
    """

    __slots__ = ("_mtu", "_interchunk_timeout", "_buf", "_expect", "_last_time", "garbage_bytes")

    def __init__(self, mtu: int = STREAM_MTU, interchunk_timeout: float | None = None) -> None:
        self._mtu = mtu
        self._interchunk_timeout = interchunk_timeout
        self._buf = bytearray()
        self._expect: _Expecting | None = None
        self._last_time: float | None = None
        #: Number of bytes skipped so far because they were not inside a frame.
        self.garbage_bytes = 0

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a header or frame."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget any partial frame (e.g. after a reconnect)."""
        self._buf.clear()
        self._expect = None

    def feed(self, data: bytes, now: float | None = None) -> list[bytes | FrameError]:
        """Add received bytes; return every payload completed by them, decompressed, in order.

        :param data: the received chunk (may be empty).
        :param now: the current time in seconds on any monotonic clock, to apply the inter-chunk
            timeout; ``None`` skips that check.
        :returns: payload ``bytes`` (decompressed) and :class:`FrameError` values, in stream order.
        """
        out: list[bytes | FrameError] = []
        if now is not None and self._interchunk_timeout is not None:
            if (
                self._expect is not None
                and self._last_time is not None
                and now - self._last_time > self._interchunk_timeout
            ):
                out.append(FrameError(FrameErrorKind.STALE, "the rest of a frame came too late; dropped"))
                self.reset()
            self._last_time = now
        buf = self._buf
        buf += data
        pos = 0
        while True:
            expect = self._expect
            if expect is None:
                match = _HEADER_RE.search(buf, pos)
                if match is None:
                    keep_from = max(pos, len(buf) - MAX_HEADER_LENGTH)
                    self.garbage_bytes += keep_from - pos
                    del buf[:keep_from]
                    break
                self.garbage_bytes += match.start() - pos
                pos = match.end()
                size = int(match.group(1), 16)
                flags = match.group(2)
                if size > self._mtu:
                    out.append(
                        FrameError(
                            FrameErrorKind.OVERSIZE,
                            f"frame of {size} bytes exceeds the {self._mtu}-byte limit",
                        )
                    )
                    continue
                expect = self._expect = _Expecting(size, b"c" in flags, b"h" in flags)
            total = expect.size + (HASH_SIZE if expect.hashed else 0)
            if len(buf) - pos < total:
                del buf[:pos]
                break
            end = pos + expect.size
            payload = bytes(buf[pos:end])
            self._expect = None
            if (
                expect.hashed
                and buf[end : end + HASH_SIZE] != hashlib.md5(payload, usedforsecurity=False).digest()
            ):
                out.append(FrameError(FrameErrorKind.BAD_HASH, f"MD5 mismatch on a {expect.size}-byte frame"))
            elif expect.compressed:
                out.append(_inflate(payload))
            else:
                out.append(payload)
            pos += total
        return out


def _inflate(data: bytes) -> bytes | FrameError:
    inflater = zlib.decompressobj()
    try:
        result = inflater.decompress(data, MAX_DECOMPRESSED_SIZE)
    except zlib.error as exc:
        return FrameError(FrameErrorKind.BAD_COMPRESSION, f"bad zlib data: {exc}")
    if inflater.unconsumed_tail:
        return FrameError(FrameErrorKind.BAD_COMPRESSION, f"expands beyond {MAX_DECOMPRESSED_SIZE} bytes")
    if not inflater.eof:
        return FrameError(FrameErrorKind.BAD_COMPRESSION, "truncated zlib data")
    return result


#: What :meth:`MessageDecoder.feed` returns per item.
DecodedItem = dict[str, Any] | FrameError


class MessageDecoder:
    """A :class:`FrameDecoder` that also parses each payload as a JSON object.

    :param mtu: see :class:`FrameDecoder`.
    :param interchunk_timeout: see :class:`FrameDecoder`.
    """

    __slots__ = ("frames",)

    def __init__(self, mtu: int = STREAM_MTU, interchunk_timeout: float | None = None) -> None:
        #: The underlying frame decoder.
        self.frames = FrameDecoder(mtu, interchunk_timeout)

    def feed(self, data: bytes, now: float | None = None) -> list[DecodedItem]:
        """Add received bytes; return the decoded messages (dicts) and errors, in stream order.

        :param data: the received chunk.
        :param now: see :meth:`FrameDecoder.feed`.
        :returns: message dicts and :class:`FrameError` values.
        """
        out: list[DecodedItem] = []
        for item in self.frames.feed(data, now):
            if isinstance(item, FrameError):
                out.append(item)
                continue
            try:
                out.append(decode_payload(item))
            except ScrutinyProtocolError as exc:
                kind = (
                    FrameErrorKind.NOT_AN_OBJECT if "not an object" in exc.reason else FrameErrorKind.BAD_JSON
                )
                out.append(FrameError(kind, exc.reason))
        return out
