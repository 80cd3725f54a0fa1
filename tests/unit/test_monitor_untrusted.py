"""The guest is untrusted: the host's real AgentLink, ProcessChannel, session loop and CLI
client against a fake peer on a socketpair that sends garbage, oversized or endless
data, breaks its credit, or says nothing at all.

Whatever it does, the host side ends the link (or the call) with its own error type,
in bounded time and bounded memory, and nothing escapes as an unexpected exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmrt import protocol
from vmrt.errors import MonitorError, SandboxError
from vmrt.monitor.agent_link import AgentLink
from vmrt.monitor.channels import ProcessChannel
from vmrt.protocol import FrameType

BOUND_S = 5.0  # no step below may take longer: a hang fails the test, not the suite


class FakeGuest:
    """The agent's end of the port: raw bytes in, frames out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.decoder = protocol.Decoder()

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def frames(self, timeout: float = BOUND_S) -> list[protocol.Frame]:
        async with asyncio.timeout(timeout):
            data = await asyncio.get_running_loop().sock_recv(self.sock, 1 << 20)
        return self.decoder.feed(data)


class Host:
    """A real AgentLink, recording what it reports."""

    def __init__(self) -> None:
        host_sock, guest_sock = socket.socketpair()
        self.guest = FakeGuest(guest_sock)
        self.events: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self.link = AgentLink(host_sock, self.events.append, self.closed.set)

    async def __aenter__(self) -> Host:
        await self.link.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.link.close()
        self.guest.sock.close()

    async def wait_closed(self) -> None:
        async with asyncio.timeout(BOUND_S):
            await self.closed.wait()
        task = self.link._reader_task
        assert task is not None
        async with asyncio.timeout(BOUND_S):
            await asyncio.wait([task])
        # The reader ended on the protocol's own terms: nothing escaped it.
        assert task.cancelled() or task.exception() is None


def run(test: Callable[[Host], Awaitable[None]]) -> None:
    async def main() -> None:
        async with Host() as host, asyncio.timeout(30):
            await test(host)

    asyncio.run(main())


async def ping(host: Host) -> None:
    """A round trip through the link: the guest answers the host's ping."""
    call = asyncio.create_task(host.link.call("ping", timeout=BOUND_S))
    (req,) = await host.guest.frames()
    await host.guest.send(protocol.response_ok(protocol.Request.parse(req.json()).id))
    assert await call == {}


def header(ftype: int, channel: int, length: int, magic: bytes = protocol.MAGIC) -> bytes:
    return struct.pack(">2sBII", magic, ftype, channel, length)


# --- garbage and oversized frames end the link ---------------------------------------

@pytest.mark.parametrize("data", [
    b"garbage that is not a frame at all",
    header(1, 0, 10, magic=b"XX") + b"0123456789",
    header(99, 0, 0),  # unknown frame type
    header(int(FrameType.STDOUT), 1, protocol.MAX_PAYLOAD + 1),  # oversized, never read
    header(int(FrameType.EVENT), 7, 2) + b"{}",  # control message on a process channel
    header(int(FrameType.EVENT), 0, protocol.MAX_JSON + 1),  # JSON too large
    header(int(FrameType.REQUEST), 0, 2) + b"{}",  # the guest may not make requests
    header(int(FrameType.CREDIT), 1, 3) + b"abc",  # a credit is 4 bytes
    protocol.encode_frame(FrameType.EVENT, 0, b"not json"),
    protocol.encode_frame(FrameType.EVENT, 0, b"[1, 2]"),  # not an object
    protocol.encode_frame(FrameType.EVENT, 0, b"[" * 100_000),  # nested past the stack
    protocol.encode_frame(FrameType.RESPONSE, 0, b'{"id": "x", "ok": true}'),
    protocol.encode_frame(FrameType.RESPONSE, 0, b'{"id": 999, "ok": true}'),  # never asked
    protocol.encode_frame(FrameType.CLOSE, 1, b"stdweird"),
], ids=["garbage", "bad-magic", "unknown-type", "oversized", "json-on-channel",
        "json-too-large", "request-from-guest", "short-credit", "not-json", "not-object",
        "deep-nesting", "bad-response", "unasked-response", "close-unknown-stream"])
def test_violation_ends_link_and_fails_pending_calls(data: bytes) -> None:
    async def test(host: Host) -> None:
        call = asyncio.create_task(host.link.call("ping", timeout=60))
        await host.guest.frames()  # the request went out
        await host.guest.send(data)
        await host.wait_closed()
        assert host.link.closed
        with pytest.raises(SandboxError):
            async with asyncio.timeout(BOUND_S):
                await call
        with pytest.raises(SandboxError, match="not connected"):
            host.link.send(b"")

    run(test)


def test_oversized_frame_is_refused_from_its_header() -> None:
    """The 4 GiB the header announces are never waited for, nor buffered."""
    async def test(host: Host) -> None:
        await host.guest.send(header(int(FrameType.STDOUT), 1, 0xFFFFFFFF))
        await host.wait_closed()

    run(test)


# --- silence: every wait is bounded ------------------------------------------------

def test_silent_guest_never_says_hello() -> None:
    async def test(host: Host) -> None:
        with pytest.raises(SandboxError, match=r"did not say hello within 0\.2s"):
            await host.link.wait_hello("ab", 0.2)

    run(test)


def test_hello_with_another_nonce_is_refused() -> None:
    async def test(host: Host) -> None:
        await host.guest.send(protocol.event("hello", version=protocol.VERSION, nonce="other"))
        with pytest.raises(SandboxError, match="does not match"):
            await host.link.wait_hello("mine", BOUND_S)

    run(test)


def test_unanswered_call_times_out_with_a_clear_error_and_a_late_answer_is_ignored() -> None:
    async def test(host: Host) -> None:
        t0 = time.monotonic()
        with pytest.raises(MonitorError, match=r"the guest agent did not answer ping within 0\.3s"):
            await host.link.call("ping", timeout=0.3)
        assert time.monotonic() - t0 < BOUND_S
        (req,) = await host.guest.frames()
        # The answer comes after all: a slow guest is not a hostile one.
        await host.guest.send(protocol.response_ok(protocol.Request.parse(req.json()).id))
        call = asyncio.create_task(host.link.call("ping", timeout=BOUND_S))
        (req,) = await host.guest.frames()
        await host.guest.send(protocol.response_ok(protocol.Request.parse(req.json()).id))
        assert await call == {}
        assert not host.link.closed

    run(test)


# --- endless data: bounded memory ---------------------------------------------------

def test_endless_output_to_nowhere_keeps_memory_bounded() -> None:
    """64 MiB of output on channels nobody registered: dropped as it comes."""
    chunk = protocol.encode_frame(FrameType.STDOUT, 5, b"x" * 65536) * 16

    async def test(host: Host) -> None:
        tracemalloc.start()
        try:
            for _ in range(64):
                await host.guest.send(chunk)
            await ping(host)  # answered only after everything before it was read
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 << 20, f"the monitor buffered {peak} bytes"
        assert not host.link.closed

    run(test)


def test_event_flood_is_handled_in_constant_memory() -> None:
    async def test(host: Host) -> None:
        burst = protocol.event("spam", pad="y" * 1000) * 1000
        for _ in range(20):
            await host.guest.send(burst)
        await ping(host)
        assert len(host.events) == 20_000  # each handed over, none kept by the link

    run(test)


# --- credit: the guest may send only what it was granted -----------------------------

class Channel:
    """A ProcessChannel on the real link, attached to a shim socket nobody reads."""

    def __init__(self, host: Host, number: int = 3) -> None:
        self.host = host
        self.number = number
        self.channel = ProcessChannel("c1", number, host.link.send)
        host.link.register_channel(number, self.channel.from_agent)
        self.shim_host, self.shim_peer = socket.socketpair()

    async def attach(self) -> int:
        _, writer = await asyncio.open_connection(sock=self.shim_host)
        self.channel.attach(writer)
        (credit,) = await self.host.guest.frames()
        assert credit.type is FrameType.CREDIT and credit.channel == self.number
        return protocol.unpack_credit(credit.payload)

    def close(self) -> None:
        self.shim_peer.close()


def test_output_beyond_credit_ends_the_link() -> None:
    async def test(host: Host) -> None:
        ch = Channel(host)
        credit = await ch.attach()
        assert credit == protocol.INITIAL_CREDIT
        await host.guest.send(protocol.encode_frame(FrameType.STDOUT, 3, b"a" * credit))
        await host.guest.send(protocol.encode_frame(FrameType.STDOUT, 3, b"b"))
        await host.wait_closed()
        ch.close()

    run(test)


def test_output_before_any_credit_ends_the_link() -> None:
    async def test(host: Host) -> None:
        Channel(host)
        await host.guest.send(protocol.encode_frame(FrameType.STDERR, 3, b"early"))
        await host.wait_closed()

    run(test)


def test_a_shim_that_does_not_read_bounds_what_the_monitor_holds() -> None:
    """Tiny frames within credit: no task or buffer per frame piles up."""
    async def test(host: Host) -> None:
        ch = Channel(host)
        credit = await ch.attach()
        one_byte = protocol.encode_frame(FrameType.STDOUT, 3, b"z")
        tasks_before = len(asyncio.all_tasks())
        for _ in range(credit // 4096):
            await host.guest.send(one_byte * 4096)
        await asyncio.sleep(0.05)
        assert len(asyncio.all_tasks()) <= tasks_before + 1
        assert not host.link.closed
        ch.close()

    run(test)


# --- the CLI's side: a monitor that never answers, or never stops talking -----------

@contextlib.contextmanager
def fake_monitor(tmp: Path, behaviour: Callable[[socket.socket], None]) -> Any:
    path = tmp / "m.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            with contextlib.suppress(OSError):
                behaviour(conn)
            stop.wait(BOUND_S * 2)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        server.close()


def _chatter(conn: socket.socket, seconds: float) -> None:
    """Frames that are never the answer, for longer than the client may wait."""
    noise = protocol.event("noise") * 100
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.sendall(noise)


@pytest.mark.parametrize("name,behaviour", [
    ("silent", lambda conn: None),
    ("garbage", lambda conn: conn.sendall(b"\x00garbage" * 100)),
    ("chatter", lambda conn: _chatter(conn, BOUND_S * 2)),
], ids=["silent", "garbage", "endless-events"])
def test_cli_client_is_bounded(tmp_path: Path, name: str,
                               behaviour: Callable[[socket.socket], None]) -> None:
    from vmrt.monitor.client import MonitorClient

    with fake_monitor(tmp_path, behaviour) as path:
        t0 = time.monotonic()
        with MonitorClient(path, timeout=0.5) as client, pytest.raises(
                MonitorError, match="lost the pod VM's monitor during ping"):
            client.call("ping")
        assert time.monotonic() - t0 < BOUND_S


# --- fuzz: the monitor's session decoding -------------------------------------------

def _monitor(tmp: Path) -> Any:
    from vmrt.config import Config
    from vmrt.monitor.main import Monitor, MonitorArgs
    from vmrt.paths import Root

    root = Root(tmp / "root")
    root.ensure()
    root.sandbox("fz").path.mkdir(exist_ok=True)
    return Monitor(MonitorArgs(root=root, sandbox_id="fz", name="fz", kernel="", initrd="",
                               kernel_cmdline=(), root_image="", accel="tcg", config=Config()))


SAFE_OPS = ["ping", "attach", "state_container", "start_container", "kill_container",
            "delete_container", "no_such_op", "create_container", "signal_process", "info"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)

requests = st.builds(
    lambda rid, op, args: protocol.encode_json(
        FrameType.REQUEST, {"id": rid, "op": op, "args": args}),
    st.integers(-5, 2**60), st.sampled_from(SAFE_OPS),
    st.dictionaries(st.sampled_from(["id", "channel", "signal", "all", "force", "spec"]),
                    json_values, max_size=4))
frames = st.builds(lambda t, c, p: protocol.encode_frame(t, c, p),
                   st.sampled_from(list(FrameType)), st.integers(0, 8), st.binary(max_size=64))
streams = st.lists(requests | frames | st.binary(max_size=64), max_size=8).map(b"".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=streams)
def test_fuzz_monitor_session(tmp_path: Path, data: bytes) -> None:
    """Whatever a client sends, the session ends on its own, raising nothing, and the
    peer gets only well-formed frames back."""
    mon = _monitor(tmp_path)

    async def main() -> bytes:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(BOUND_S):
            await mon._session(reader, writer)
            await asyncio.gather(*mon._tasks, return_exceptions=True)
        theirs.setblocking(False)
        out = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := theirs.recv(1 << 16):
                out += chunk
        theirs.close()
        return out

    out = asyncio.run(main())
    for frame in protocol.Decoder().feed(out):
        assert frame.type in (FrameType.RESPONSE, FrameType.EVENT), frame
        protocol.Response.parse(frame.json()) if frame.type is FrameType.RESPONSE else None
