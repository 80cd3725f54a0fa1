"""The one wire format vmrt speaks, on both hops.

Host CLI/shim <-> sandbox monitor (unix socket) and monitor <-> guest agent
(virtio-serial port) use the same frames, so one decoder is written, fuzzed and
trusted once.  This module is stdlib-only and standalone: the image builder
copies it byte-for-byte into the guest, where the agent imports it as
``vmrt_agent.protocol``.

Frame: ``magic:2 | type:u8 | channel:u32 | length:u32 | payload``.

* REQUEST / RESPONSE / EVENT carry one JSON object each, on channel 0.
* STDIN / STDOUT / STDERR carry raw bytes of one process, on its channel.
* CLOSE says a stream of a channel ended (payload: b"stdin", b"stdout", b"stderr").
* RESIZE carries ``rows:u16 | cols:u16`` for a process's terminal.
* CREDIT grants the peer ``bytes:u32`` more output on a channel.  Output is
  credit-based so that one container nobody reads cannot stall the single
  virtio-serial port that also carries every control message.

Both sides treat the other as untrusted: every length is bounded, every type
checked, and any violation raises :class:`ProtocolError`, after which the
connection is dropped rather than resynchronised.

Its records are NamedTuples, not dataclasses: `import dataclasses` would cost
every CLI call ≈10 ms on the host and far more under TCG in the guest.
"""

from __future__ import annotations

import enum
import json
import struct
from typing import Any, Final, NamedTuple

VERSION: Final = 1
MAGIC: Final = b"\xf5\x6d"
HEADER: Final = struct.Struct(">2sBII")
MAX_PAYLOAD: Final = 1 << 20
MAX_JSON: Final = 256 << 10
MAX_CHANNEL: Final = (1 << 31) - 1
#: Output a writer may send on a channel before the reader grants more.
INITIAL_CREDIT: Final = 256 << 10
AGENT_PORT_NAME: Final = "vmrt.agent"


class ProtocolError(Exception):
    """The peer broke the wire format; the connection cannot be trusted further."""


class FrameType(enum.IntEnum):
    REQUEST = 1
    RESPONSE = 2
    EVENT = 3
    STDIN = 4
    STDOUT = 5
    STDERR = 6
    CLOSE = 7
    RESIZE = 8
    CREDIT = 9


STREAM_TYPES: Final = frozenset({FrameType.STDIN, FrameType.STDOUT, FrameType.STDERR})
JSON_TYPES: Final = frozenset({FrameType.REQUEST, FrameType.RESPONSE, FrameType.EVENT})
STREAM_NAMES: Final = frozenset({b"stdin", b"stdout", b"stderr"})


class Frame(NamedTuple):
    type: FrameType
    channel: int
    payload: bytes = b""

    def encode(self) -> bytes:
        return encode_frame(self.type, self.channel, self.payload)

    def json(self) -> dict[str, Any]:
        """The JSON object a control frame carries, validated as an object."""
        return decode_json(self.payload)


def encode_frame(ftype: FrameType, channel: int, payload: bytes = b"") -> bytes:
    if not 0 <= channel <= MAX_CHANNEL:
        raise ProtocolError(f"channel {channel} out of range")
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(MAGIC, int(ftype), channel, len(payload)) + payload


def encode_json(ftype: FrameType, obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    if len(data) > MAX_JSON:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_JSON}")
    return encode_frame(ftype, 0, data)


def decode_json(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_JSON:
        raise ProtocolError(f"message of {len(payload)} bytes exceeds {MAX_JSON}")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"message is not JSON: {exc}") from exc
    except RecursionError:  # b"[" * 100_000 is within MAX_JSON
        raise ProtocolError("message is nested too deeply") from None
    if not isinstance(obj, dict):
        raise ProtocolError("message is not a JSON object")
    return obj


def parse_header(header: bytes) -> tuple[FrameType, int, int]:
    """Validate a frame header and return (type, channel, payload length)."""
    magic, ftype, channel, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {magic!r}")
    try:
        kind = FrameType(ftype)
    except ValueError:
        raise ProtocolError(f"unknown frame type {ftype}") from None
    if channel > MAX_CHANNEL:
        raise ProtocolError(f"channel {channel} out of range")
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"frame of {length} bytes exceeds {MAX_PAYLOAD}")
    if kind in JSON_TYPES and (channel != 0 or length > MAX_JSON):
        raise ProtocolError("control message on a process channel or too large")
    if kind is FrameType.RESIZE and length != 4:
        raise ProtocolError("resize frame must carry 4 bytes")
    if kind is FrameType.CREDIT and length != 4:
        raise ProtocolError("credit frame must carry 4 bytes")
    return kind, channel, length


def check_frame(frame: Frame) -> Frame:
    """Checks that need the payload: CLOSE names a stream."""
    if frame.type is FrameType.CLOSE and frame.payload not in STREAM_NAMES:
        raise ProtocolError(f"close of unknown stream {frame.payload[:16]!r}")
    return frame


class Decoder:
    """Incremental decoder for a byte stream; bounded in memory by MAX_PAYLOAD."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= HEADER.size:
            kind, channel, length = parse_header(bytes(self._buf[: HEADER.size]))
            end = HEADER.size + length
            if len(self._buf) < end:
                break
            payload = bytes(self._buf[HEADER.size : end])
            del self._buf[:end]
            frames.append(check_frame(Frame(kind, channel, payload)))
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)


def pack_resize(rows: int, cols: int) -> bytes:
    return struct.pack(">HH", max(0, min(rows, 0xFFFF)), max(0, min(cols, 0xFFFF)))


def unpack_resize(payload: bytes) -> tuple[int, int]:
    rows, cols = struct.unpack(">HH", payload)
    return int(rows), int(cols)


def pack_credit(amount: int) -> bytes:
    return struct.pack(">I", max(0, min(amount, 0xFFFFFFFF)))


def unpack_credit(payload: bytes) -> int:
    (amount,) = struct.unpack(">I", payload)
    return int(amount)


# --- message helpers -------------------------------------------------------


def request(req_id: int, op: str, **args: Any) -> bytes:
    return encode_json(FrameType.REQUEST, {"id": req_id, "op": op, "args": args})


def response_ok(req_id: int, result: dict[str, Any] | None = None) -> bytes:
    return encode_json(FrameType.RESPONSE, {"id": req_id, "ok": True, "result": result or {}})


def response_error(req_id: int, message: str, kind: str = "error") -> bytes:
    return encode_json(
        FrameType.RESPONSE, {"id": req_id, "ok": False, "error": message[:4096], "kind": kind}
    )


def event(name: str, **fields: Any) -> bytes:
    return encode_json(FrameType.EVENT, {"event": name, **fields})


class Request(NamedTuple):
    id: int
    op: str
    args: dict[str, Any]

    @classmethod
    def parse(cls, obj: dict[str, Any]) -> Request:
        req_id, op, args = obj.get("id"), obj.get("op"), obj.get("args", {})
        if not isinstance(req_id, int) or isinstance(req_id, bool) or not 0 <= req_id < 2**53:
            raise ProtocolError("request without a valid id")
        if not isinstance(op, str) or not op.isidentifier() or len(op) > 64:
            raise ProtocolError("request without a valid op")
        if not isinstance(args, dict):
            raise ProtocolError("request args must be an object")
        return cls(req_id, op, args)


class Response(NamedTuple):
    id: int
    ok: bool
    result: dict[str, Any]
    error: str
    kind: str

    @classmethod
    def parse(cls, obj: dict[str, Any]) -> Response:
        req_id, ok = obj.get("id"), obj.get("ok")
        if not isinstance(req_id, int) or isinstance(req_id, bool) or not isinstance(ok, bool):
            raise ProtocolError("malformed response")
        result = obj.get("result", {})
        error = obj.get("error", "")
        kind = obj.get("kind", "error")
        if not isinstance(result, dict) or not isinstance(error, str) or not isinstance(kind, str):
            raise ProtocolError("malformed response")
        return cls(req_id, ok, result, error[:4096], kind[:64])


class ExitStatus(NamedTuple):
    """How a process ended: an exit code, or the signal that killed it."""

    code: int | None = None
    signal: int | None = None

    def to_json(self) -> dict[str, int]:
        return {"signal": self.signal} if self.signal is not None else {"code": self.code or 0}

    @classmethod
    def parse(cls, obj: Any) -> ExitStatus:
        if isinstance(obj, dict):
            sig, code = obj.get("signal"), obj.get("code")
            if isinstance(sig, int) and not isinstance(sig, bool) and 0 < sig < 65:
                return cls(signal=sig)
            if isinstance(code, int) and not isinstance(code, bool) and 0 <= code < 256:
                return cls(code=code)
        raise ProtocolError(f"malformed exit status {str(obj)[:64]}")

    @property
    def wait_code(self) -> int:
        """The code a shell or conmon reports: the exit code, or 128 + signal."""
        return 128 + self.signal if self.signal is not None else (self.code or 0)


def get_str(args: dict[str, Any], key: str, *, max_len: int = 4096, default: str | None = None) -> str:
    value = args.get(key, default)
    if not isinstance(value, str) or len(value) > max_len or "\x00" in value:
        raise ProtocolError(f"argument {key!r} must be a string")
    return value


def get_int(args: dict[str, Any], key: str, *, lo: int = 0, hi: int = 2**31 - 1,
            default: int | None = None) -> int:
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ProtocolError(f"argument {key!r} must be an integer in [{lo}, {hi}]")
    return value


def get_bool(args: dict[str, Any], key: str, default: bool = False) -> bool:
    value = args.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"argument {key!r} must be a boolean")
    return value


def get_dict(args: dict[str, Any], key: str) -> dict[str, Any]:
    value = args.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"argument {key!r} must be an object")
    return value
