"""The wire format: round trips, bounds, and a fuzzed decoder that only ever raises ProtocolError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmrt import protocol
from vmrt.protocol import Decoder, FrameType, ProtocolError


def test_round_trip_split_anywhere() -> None:
    data = (protocol.request(7, "ping") + protocol.encode_frame(FrameType.STDOUT, 3, b"hello")
            + protocol.event("exit", id="c", channel=3, status={"code": 3}))
    for cut in range(len(data) + 1):
        dec = Decoder()
        frames = dec.feed(data[:cut]) + dec.feed(data[cut:])
        assert [f.type for f in frames] == [FrameType.REQUEST, FrameType.STDOUT, FrameType.EVENT]
        assert frames[1].payload == b"hello" and frames[1].channel == 3
        assert protocol.Request.parse(frames[0].json()).op == "ping"
        assert dec.pending == 0


@pytest.mark.parametrize("header", [
    b"XX" + bytes(9),  # bad magic
    protocol.MAGIC + bytes([99]) + bytes(8),  # unknown type
    protocol.HEADER.pack(protocol.MAGIC, FrameType.STDOUT, 1, protocol.MAX_PAYLOAD + 1),
    protocol.HEADER.pack(protocol.MAGIC, FrameType.REQUEST, 5, 2),  # control on a process channel
    protocol.HEADER.pack(protocol.MAGIC, FrameType.RESIZE, 1, 3),
])
def test_bad_headers_are_refused_before_buffering(header: bytes) -> None:
    with pytest.raises(ProtocolError):
        Decoder().feed(header)


def test_oversized_frame_is_refused_without_reading_it() -> None:
    with pytest.raises(ProtocolError):
        protocol.encode_frame(FrameType.STDOUT, 1, b"x" * (protocol.MAX_PAYLOAD + 1))


@pytest.mark.parametrize("obj", [
    {"id": "1", "op": "x"}, {"id": True, "op": "x"}, {"id": 1, "op": "no spaces"},
    {"id": 1, "op": "x", "args": []},
])
def test_malformed_requests(obj: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        protocol.Request.parse(obj)


@pytest.mark.parametrize("obj", [None, {}, {"code": 256}, {"code": -1}, {"signal": 0},
                                 {"signal": 65}, {"code": True}, "3"])
def test_malformed_exit_status(obj: object) -> None:
    with pytest.raises(ProtocolError):
        protocol.ExitStatus.parse(obj)


def test_exit_status_wait_code() -> None:
    assert protocol.ExitStatus(code=3).wait_code == 3
    assert protocol.ExitStatus(signal=9).wait_code == 137


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=4096))
def test_fuzz_decoder_raises_only_protocol_error(data: bytes) -> None:
    dec = Decoder()
    try:
        for frame in dec.feed(data):
            if frame.type in protocol.JSON_TYPES:
                obj = frame.json()
                if frame.type is FrameType.REQUEST:
                    protocol.Request.parse(obj)
                elif frame.type is FrameType.RESPONSE:
                    protocol.Response.parse(obj)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(FrameType)), st.integers(0, protocol.MAX_CHANNEL), st.binary(max_size=300))
def test_fuzz_valid_headers_with_any_payload(ftype: FrameType, channel: int, payload: bytes) -> None:
    try:
        data = protocol.encode_frame(ftype, channel, payload)
        for frame in Decoder().feed(data):
            if frame.type in protocol.JSON_TYPES:
                protocol.Response.parse(frame.json())
    except ProtocolError:
        pass
