"""Sans-I/O tests of the Scrutiny codec, model parsers, data types and status events.

Codec tests go three ways (STYLE.md habit 6): whole input, one byte at a time, and with garbage
around the frames.  Sources: protocols/scrutiny.md 1.1 (framing), 1.4-1.6 (messages).
"""

from __future__ import annotations

import builtins
import hashlib
import importlib
import json
import math
import sys
import zlib
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from katclient.devices.scrutiny import (
    STREAM_MTU,
    DataKind,
    DataloggerState,
    DataloggerStateChanged,
    DataloggingConfig,
    DataType,
    DeviceCommState,
    DeviceGone,
    DeviceReady,
    FrameDecoder,
    FrameError,
    FrameErrorKind,
    LoggedSignal,
    MessageDecoder,
    MessageTooLargeError,
    ScrutinyProtocolError,
    ServerStatus,
    SFDLoaded,
    SFDUnloaded,
    TriggerCondition,
    WatchableOperand,
    WatchableType,
    XAxisType,
    decode_payload,
    encode_frame,
    encode_message,
    read_sfd_firmware_id,
    status_events,
)
from katclient.devices.scrutiny.framing import MAX_DECOMPRESSED_SIZE
from katclient.devices.scrutiny.model import (
    parse_acquisition_content,
    parse_device_info,
    parse_server_status,
    parse_watchable_detail,
    parse_watchable_list_part,
)
from katclient.errors import InvalidUsage

# A status message exactly as captured from a real 0.16.0 server (protocols/scrutiny.md 1.4).
REAL_STATUS = (
    b'{"cmd":"inform_server_status","reqid":101,"device_status":"connected_ready",'
    b'"device_session_id":"be34bde9861a4eb5895da67e7105363d","loaded_sfd_firmware_id":'
    b'"deadbeefc001d00d0ff1cebaadf00d00","datalogging_status":{"datalogging_state":"standby",'
    b'"completion_ratio":null},"device_comm_link":{"link_type":"dummy","link_operational":true,'
    b'"link_config":{},"demo_mode":true}}'
)


def frame(payload: bytes, flags: str = "ch") -> bytes:
    """An independent encoder, written from the note's description (not via encode_frame)."""
    data = zlib.compress(payload, 1) if "c" in flags else payload
    out = b"<SCRUTINY size=%x flags=%s>" % (len(data), flags.encode()) + data
    return out + (hashlib.md5(data).digest() if "h" in flags else b"")


def messages(items: Sequence[object]) -> list[object]:
    return [i for i in items if not isinstance(i, FrameError)]


# ---------------------------------------------------------------------------------------------
# encoder


def test_encode_message_matches_the_wire_format() -> None:
    data = encode_message({"cmd": "echo", "reqid": 3, "payload": "hi"})
    header, _, rest = data.partition(b">")
    assert header.startswith(b"<SCRUTINY size=")
    size = int(header.split(b"size=")[1].split(b" ")[0], 16)
    assert header.endswith(b"flags=ch")
    body, digest = rest[:size], rest[size:]
    assert len(digest) == 16 and hashlib.md5(body).digest() == digest
    assert json.loads(zlib.decompress(body)) == {"cmd": "echo", "reqid": 3, "payload": "hi"}
    assert zlib.decompress(body) == b'{"cmd":"echo","reqid":3,"payload":"hi"}'  # compact separators


def test_encode_frame_flag_combinations() -> None:
    assert encode_frame(b"{}", compress=False, use_hash=False) == b"<SCRUTINY size=2 flags=>{}"
    assert encode_frame(b"{}", compress=False, use_hash=True) == frame(b"{}", "h")
    assert encode_frame(b"{}", compress=True, use_hash=False) == frame(b"{}", "c")


def test_encode_allows_nan_like_the_server() -> None:
    data = encode_message({"v": math.nan, "w": math.inf}, compress=False, use_hash=False)
    assert data.endswith(b'{"v":NaN,"w":Infinity}')


def test_encode_refuses_oversize() -> None:
    with pytest.raises(MessageTooLargeError) as info:
        encode_frame(b"x" * 100, compress=False, mtu=99)
    assert info.value.size == 100 and info.value.limit == 99
    assert isinstance(info.value, InvalidUsage)


# ---------------------------------------------------------------------------------------------
# decoder: whole, byte by byte, garbage, errors


def test_decode_real_capture_whole_and_byte_by_byte() -> None:
    stream = frame(REAL_STATUS) + frame(b'{"cmd":"welcome","reqid":null,"server_time_zero_timestamp":1.5}')
    whole = MessageDecoder().feed(stream)
    assert [m["cmd"] for m in whole] == ["inform_server_status", "welcome"]  # type: ignore[index]
    decoder = MessageDecoder()
    byte_by_byte: list[object] = []
    for i in range(len(stream)):
        byte_by_byte.extend(decoder.feed(stream[i : i + 1]))
    assert byte_by_byte == whole
    assert decoder.frames.buffered == 0


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(
        st.dictionaries(
            st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=20), st.none()), max_size=4
        ),
        min_size=1,
        max_size=5,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
    flags=st.sampled_from(["", "c", "h", "ch"]),
)
def test_decode_split_anywhere(payloads: list[dict[str, object]], cuts: list[int], flags: str) -> None:
    stream = b"".join(frame(json.dumps(p).encode(), flags) for p in payloads)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    decoder = MessageDecoder()
    out: list[object] = []
    for a, b in zip(points, points[1:]):
        out.extend(decoder.feed(stream[a:b]))
    assert out == payloads


def test_garbage_before_between_and_after_frames_is_skipped() -> None:
    decoder = MessageDecoder()
    stream = b"xx<SCRUTINY junk" + frame(b'{"a":1}') + b"\x00\xff<SCR" + frame(b'{"b":2}', "") + b"trailing"
    assert decoder.feed(stream) == [{"a": 1}, {"b": 2}]
    assert decoder.frames.garbage_bytes > 0
    assert decoder.frames.buffered <= 64  # only a possible header start is kept
    assert decoder.feed(frame(b'{"c":3}')) == [{"c": 3}]


def test_endless_garbage_stays_bounded() -> None:
    decoder = FrameDecoder()
    for _ in range(100):
        assert decoder.feed(b"\x01" * 10_000) == []
    assert decoder.buffered <= 64
    assert decoder.garbage_bytes >= 1_000_000 - 64


def test_header_split_in_the_middle_survives_garbage_trimming() -> None:
    decoder = MessageDecoder()
    data = frame(b'{"x":1}')
    assert decoder.feed(b"z" * 5000 + data[:10]) == []
    assert decoder.feed(data[10:]) == [{"x": 1}]


def test_bad_md5_is_reported_and_the_stream_continues() -> None:
    good = frame(b'{"ok":true}')
    bad = bytearray(frame(b'{"ok":false}'))
    bad[-1] ^= 0xFF
    out = MessageDecoder().feed(bytes(bad) + good)
    assert isinstance(out[0], FrameError) and out[0].kind is FrameErrorKind.BAD_HASH
    assert out[1] == {"ok": True}
    assert isinstance(out[0].to_exception(), ScrutinyProtocolError)


def test_oversize_header_is_reported_and_its_bytes_skipped() -> None:
    decoder = MessageDecoder(mtu=1000)
    big = frame(b'{"pad":"' + b"y" * 3000 + b'"}', "h")  # uncompressed: 3010 bytes > 1000
    out = decoder.feed(big + frame(b'{"after":1}'))
    assert isinstance(out[0], FrameError) and out[0].kind is FrameErrorKind.OVERSIZE
    assert out[1:] == [{"after": 1}]


def test_default_limit_is_one_mebibyte() -> None:
    assert STREAM_MTU == 1024 * 1024
    out = FrameDecoder().feed(b"<SCRUTINY size=%x flags=>" % (STREAM_MTU + 1))
    assert [e.kind for e in out if isinstance(e, FrameError)] == [FrameErrorKind.OVERSIZE]


def test_bad_compression_and_zip_bomb() -> None:
    out = FrameDecoder().feed(b"<SCRUTINY size=4 flags=c>abcd" + frame(b'{"k":1}'))
    assert isinstance(out[0], FrameError) and out[0].kind is FrameErrorKind.BAD_COMPRESSION
    assert out[1] == b'{"k":1}'
    bomb = zlib.compress(b"0" * (MAX_DECOMPRESSED_SIZE + 10), 9)
    assert len(bomb) < STREAM_MTU
    out = FrameDecoder().feed(b"<SCRUTINY size=%x flags=c>" % len(bomb) + bomb)
    assert isinstance(out[0], FrameError) and out[0].kind is FrameErrorKind.BAD_COMPRESSION


def test_nan_and_infinity_tokens_are_accepted() -> None:
    payload = (
        b'{"cmd":"watchable_update","reqid":null,"updates":'
        b'[{"id":"2c","v":NaN,"t":1.0},{"id":"2d","v":-Infinity,"t":2}]}'
    )
    (msg,) = MessageDecoder().feed(frame(payload))
    assert isinstance(msg, dict)
    values = [u["v"] for u in msg["updates"]]
    assert math.isnan(values[0]) and values[1] == -math.inf


def test_non_json_and_non_object_payloads() -> None:
    out = MessageDecoder().feed(frame(b"not json") + frame(b"[1, 2]") + frame(b"\xff\xfe") + frame(b"{}"))
    kinds = [x.kind if isinstance(x, FrameError) else x for x in out]
    assert kinds == [FrameErrorKind.BAD_JSON, FrameErrorKind.NOT_AN_OBJECT, FrameErrorKind.BAD_JSON, {}]
    with pytest.raises(ScrutinyProtocolError):
        decode_payload(b"[]")


def test_interchunk_timeout_drops_a_stale_partial_frame() -> None:
    decoder = MessageDecoder(interchunk_timeout=1.0)
    data = frame(b'{"late":1}')
    assert decoder.feed(data[:35], now=10.0) == []
    out = decoder.feed(data[35:] + frame(b'{"next":2}'), now=11.5)
    assert isinstance(out[0], FrameError) and out[0].kind is FrameErrorKind.STALE
    assert messages(out) == [{"next": 2}]
    # within the timeout a split frame is fine
    assert decoder.feed(data[:35], now=20.0) == []
    assert decoder.feed(data[35:], now=20.5) == [{"late": 1}]


def test_codec_imports_no_io() -> None:
    """framing/model/events are sans-I/O: importable with socket and tornado blocked."""
    blocked = ("socket", "tornado", "asyncio", "selectors")
    real_import = builtins.__import__
    saved = {k: v for k, v in sys.modules.items() if k.startswith(("katclient.devices.scrutiny", *blocked))}

    def guarded(name: str, *args: object, **kwargs: object) -> object:
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is blocked")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    for key in saved:
        del sys.modules[key]
    builtins.__import__ = guarded  # type: ignore[assignment]
    try:
        for mod in ("framing", "model", "events", "datatypes", "sfd", "errors"):
            importlib.import_module(f"katclient.devices.scrutiny.{mod}")
    finally:
        builtins.__import__ = real_import
        for key in [k for k in sys.modules if k.startswith(("katclient.devices.scrutiny", *blocked))]:
            del sys.modules[key]
        sys.modules.update(saved)


# ---------------------------------------------------------------------------------------------
# model parsers


def test_parse_real_status() -> None:
    status = parse_server_status(json.loads(REAL_STATUS))
    assert status.device_comm_state is DeviceCommState.CONNECTED_READY
    assert status.device_ready
    assert status.sfd_firmware_id == "deadbeefc001d00d0ff1cebaadf00d00"
    assert status.datalogging.state is DataloggerState.STANDBY and status.datalogging.completion_ratio is None
    assert status.link.demo_mode and status.link.link_type == "dummy"


def test_parse_status_rejects_missing_blocks() -> None:
    msg = json.loads(REAL_STATUS)
    del msg["datalogging_status"]
    with pytest.raises(ScrutinyProtocolError, match="datalogging_status"):
        parse_server_status(msg)


def test_parse_detailed_definitions_from_captures() -> None:
    rpv = parse_watchable_detail(
        {"dtype": "sint32", "path": "/rpv/x2000", "type": "rpv", "id": "e", "rpvid": 8192}
    )
    assert rpv.watchable_type is WatchableType.RPV and rpv.rpvid == 8192 and rpv.server_id == "e"
    assert rpv.value_range() == (-(2**31), 2**31 - 1) and rpv.depends_on_device_session
    alias = parse_watchable_detail(
        {
            "dtype": "float32",
            "path": "/RPV1000 with gain 1000",
            "type": "alias",
            "id": "c",
            "target": "/rpv/x1000",
            "target_type": "rpv",
            "gain": 1000.0,
            "bias": None,
            "min": None,
            "max": None,
        }
    )
    assert alias.gain == 1000.0 and alias.offset is None and alias.target_type is WatchableType.RPV
    assert alias.depends_on_device_session and alias.depends_on_sfd
    var = parse_watchable_detail(
        {
            "dtype": "uint8",
            "path": "/a/b",
            "type": "var",
            "id": "3",
            "address": 4357,
            "bitoffset": 2,
            "bitsize": 3,
            "enum": {"name": "Mode", "values": {"IDLE": 0, "RUN": 1}},
        }
    )
    assert var.bit_width == 3 and var.value_range() == (0, 7)
    assert var.enum is not None and var.enum.label(1) == "RUN" and var.enum.label(5) is None
    with pytest.raises(ScrutinyProtocolError):
        parse_watchable_detail({"dtype": "int32", "path": "/x", "type": "var"})
    with pytest.raises(ScrutinyProtocolError):
        parse_watchable_detail({"dtype": "uint8", "path": "/x", "type": "nope"})


def test_parse_list_chunk() -> None:
    part, done = parse_watchable_list_part(
        {
            "cmd": "response_get_watchable_list",
            "reqid": 1,
            "qty": {"var": 1, "alias": 0, "rpv": 1, "var_factory": 1},
            "content": {
                "var": [{"dtype": "float32", "path": "/static/main.cpp/counter"}],
                "alias": [],
                "rpv": [{"dtype": "float32", "path": "/rpv/x1000"}],
                "var_factory": [
                    {"dtype": "uint8", "path": "/arr[]", "factory_params": {"array_nodes": {"/arr": [4, 2]}}}
                ],
            },
            "done": False,
        }
    )
    assert not done
    assert part.paths() == ["/rpv/x1000", "/static/main.cpp/counter"]
    assert part.var_factory[0].array_nodes == {"/arr": (4, 2)}


def test_parse_device_info_unavailable_and_real() -> None:
    assert (
        parse_device_info({"cmd": "response_get_device_info", "available": False, "device_info": None})
        is None
    )
    info = parse_device_info(
        {
            "cmd": "response_get_device_info",
            "available": True,
            "device_info": {
                "session_id": "s",
                "device_id": "d",
                "display_name": "EmulatedDevice",
                "max_tx_data_size": 128,
                "max_rx_data_size": 128,
                "max_bitrate_bps": 100000,
                "rx_timeout_us": 50000,
                "heartbeat_timeout_us": 3000000,
                "address_size_bits": 32,
                "protocol_major": 1,
                "protocol_minor": 0,
                "supported_feature_map": {
                    "memory_write": True,
                    "datalogging": True,
                    "user_command": True,
                    "_64bits": True,
                },
                "forbidden_memory_regions": [{"start": 0, "end": 4095, "size": 4096}],
                "readonly_memory_regions": [{"start": 6144, "end": 8191, "size": 2048}],
                "datalogging_capabilities": {
                    "buffer_size": 4096,
                    "encoding": "raw",
                    "max_nb_signal": 32,
                    "sampling_rates": [
                        {"identifier": 0, "name": "Python thread", "frequency": None, "type": "variable_freq"}
                    ],
                },
                "char_bit": 8,
            },
        }
    )
    assert info is not None and info.supported_features.sixtyfour_bits
    assert info.forbidden_memory_regions[0].touches(4095, 1) and not info.forbidden_memory_regions[0].touches(
        4096, 4
    )
    assert info.datalogging_capabilities is not None
    assert info.datalogging_capabilities.sampling_rates[0].frequency is None


def test_parse_acquisition_with_nan_strings() -> None:
    acq = parse_acquisition_content(
        {
            "cmd": "response_read_datalogging_acquisition_content",
            "reqid": 1,
            "firmware_id": "f",
            "firmware_name": "Scrutiny Demo Device V0.16.0",
            "name": "capt",
            "timestamp": 1795299748.0,
            "reference_id": "r",
            "trigger_index": 1,
            "signals": [
                {
                    "name": "sine",
                    "watchable": {"path": "/Sine Wave", "type": "alias"},
                    "data": [0.5, "nan", "inf"],
                    "axis_id": 0,
                }
            ],
            "xdata": {"name": "Index", "watchable": None, "data": [0.0, 1.0, 2.0]},
            "yaxes": [{"name": "Y1", "id": 0}],
        }
    )
    data = acq.signals[0].data
    assert data[0] == 0.5 and math.isnan(data[1]) and data[2] == math.inf
    assert acq.xdata.watchable_path is None and acq.signals[0].watchable_path == "/Sine Wave"


def test_datatypes() -> None:
    assert DataType.parse("sint16") == DataType(DataKind.SINT, 16)
    assert DataType.parse("uint8").int_range() == (0, 255)
    assert DataType.parse("sint8").int_range(3) == (-4, 3)
    assert DataType.parse("float64").is_float and DataType.parse("bool8").is_bool
    assert DataType.parse("ptr32").is_integer and DataType.parse("cfloat32").size_bytes == 4
    with pytest.raises(ValueError):
        DataType.parse("float32").int_range()
    with pytest.raises(ScrutinyProtocolError):
        DataType.parse("uint12")


def test_datalogging_config_validation_and_wire_form() -> None:
    cfg = DataloggingConfig(
        signals=[LoggedSignal("/Sine Wave", 0, "sine")],
        condition=TriggerCondition.GREATER_THAN,
        operands=[WatchableOperand("/Sine Wave"), 0.5],
        x_axis_type=XAxisType.MEASURED_TIME,
        name="n",
    )
    wire = cfg.to_request()
    assert wire["condition"] == "gt" and wire["x_axis_type"] == "measured_time"
    assert wire["operands"] == [
        {"type": "watchable", "value": "/Sine Wave"},
        {"type": "literal", "value": 0.5},
    ]
    assert wire["signals"] == [{"path": "/Sine Wave", "name": "sine", "axis_id": 0}]
    with pytest.raises(InvalidUsage):
        DataloggingConfig(signals=[])
    with pytest.raises(InvalidUsage):
        DataloggingConfig(signals=[LoggedSignal("/a")], condition=TriggerCondition.EQUAL, operands=[1.0])
    with pytest.raises(InvalidUsage):
        DataloggingConfig(signals=[LoggedSignal("/a", axis_id=3)])
    with pytest.raises(InvalidUsage):
        DataloggingConfig(signals=[LoggedSignal("/a")], x_axis_type=XAxisType.SIGNAL)


def test_read_sfd_firmware_id_rejects_non_sfd() -> None:
    with pytest.raises(InvalidUsage):
        read_sfd_firmware_id(b"not a zip")


# ---------------------------------------------------------------------------------------------
# status comparison (scrutiny.md 1.5)


def _status(
    session: str | None, sfd: str | None, dl: str = "standby", ratio: float | None = None
) -> ServerStatus:
    msg = json.loads(REAL_STATUS)
    msg["device_session_id"] = session
    msg["device_status"] = "connected_ready" if session else "disconnected"
    msg["loaded_sfd_firmware_id"] = sfd
    msg["datalogging_status"] = {"datalogging_state": dl, "completion_ratio": ratio}
    return parse_server_status(msg)


def test_status_events_sequence_like_the_sdk() -> None:
    a = _status("s1", "f1")
    assert status_events(None, a) == [DeviceReady("s1"), SFDLoaded("f1")]
    assert status_events(a, a) == []
    b = _status("s2", "f1")
    assert status_events(a, b) == [DeviceGone("s1"), DeviceReady("s2")]
    c = _status("s2", None, "unavailable")
    assert status_events(b, c) == [
        SFDUnloaded("f1"),
        DataloggerStateChanged(DataloggerState.UNAVAILABLE, None),
    ]
    d = _status("s2", None, "unavailable", None)
    e = _status("s2", None, "acquiring", 0.5)
    assert status_events(d, e) == [DataloggerStateChanged(DataloggerState.ACQUIRING, 0.5)]
    assert status_events(e, None) == [DeviceGone("s2")]
