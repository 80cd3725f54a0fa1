"""The host end of the agent's virtio-serial port.

One reader task decodes every frame the guest sends; requests are matched
to responses by id, so several CLI calls can be in flight at once. The guest
is untrusted: a frame that breaks the protocol, a response to no request, or
an event of unknown shape ends the link instead of being guessed at.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Callable
from typing import Any

from vmrt import protocol
from vmrt.errors import MonitorError, SandboxError
from vmrt.protocol import Frame, FrameType

FrameSink = Callable[[Frame], None]
EventSink = Callable[[dict[str, Any]], None]


class AgentLink:
    def __init__(self, sock: socket.socket, on_event: EventSink, on_close: Callable[[], None]) -> None:
        self._sock = sock
        self._on_event = on_event
        self._on_close = on_close
        self._ids = itertools.count(1)
        self._last_id = 0
        self._pending: dict[int, asyncio.Future[protocol.Response]] = {}
        self._channels: dict[int, FrameSink] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._hello: asyncio.Future[dict[str, Any]] | None = None
        self.closed = False

    async def start(self, *, greeted: bool = False) -> None:
        """`greeted`: the hello was read (and checked) before this link took over the port."""
        reader, self._writer = await asyncio.open_connection(sock=self._sock)
        self._hello = asyncio.get_running_loop().create_future()
        if greeted:
            self._hello.set_result({})
        self._reader_task = asyncio.create_task(self._read_loop(reader))

    async def wait_hello(self, nonce: str, timeout: float) -> dict[str, Any]:
        assert self._hello is not None
        try:
            async with asyncio.timeout(timeout):
                hello = await asyncio.shield(self._hello)
        except TimeoutError:
            raise SandboxError(f"the guest agent did not say hello within {timeout:g}s") from None
        if hello.get("nonce") != nonce or hello.get("version") != protocol.VERSION:
            raise SandboxError("the guest agent's hello does not match this VM")
        return hello

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        decoder = protocol.Decoder()
        try:
            while data := await reader.read(65536):
                for frame in decoder.feed(data):
                    self._dispatch(frame)
        except (protocol.ProtocolError, OSError) as exc:
            self._fail(f"agent link broken: {exc}")
        finally:
            self._fail("the guest agent closed the connection")

    def _dispatch(self, frame: Frame) -> None:
        match frame.type:
            case FrameType.RESPONSE:
                resp = protocol.Response.parse(frame.json())
                fut = self._pending.pop(resp.id, None)
                if fut is None:
                    if 0 < resp.id <= self._last_id:
                        return  # a late answer to a call that timed out: not a violation
                    raise protocol.ProtocolError(f"response to unknown request {resp.id}")
                if not fut.done():
                    fut.set_result(resp)
            case FrameType.EVENT:
                msg = frame.json()
                if msg.get("event") == "hello" and self._hello and not self._hello.done():
                    self._hello.set_result(msg)
                else:
                    self._on_event(msg)
            case FrameType.STDOUT | FrameType.STDERR | FrameType.CLOSE | FrameType.CREDIT:
                sink = self._channels.get(frame.channel)
                if sink is not None:
                    sink(frame)
            case _:
                raise protocol.ProtocolError(f"unexpected {frame.type.name} frame from the guest")

    def _fail(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(SandboxError(reason))
        self._pending.clear()
        if self._hello and not self._hello.done():
            self._hello.set_exception(SandboxError(reason))
        if self._writer is not None:
            self._writer.close()
        self._on_close()

    def register_channel(self, channel: int, sink: FrameSink) -> None:
        self._channels[channel] = sink

    def unregister_channel(self, channel: int) -> None:
        self._channels.pop(channel, None)

    def send(self, data: bytes) -> None:
        if self.closed or self._writer is None:
            raise SandboxError("the guest agent is not connected")
        self._writer.write(data)

    async def call(self, op: str, *, timeout: float, **args: Any) -> dict[str, Any]:
        req_id = self._last_id = next(self._ids)
        fut: asyncio.Future[protocol.Response] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        try:
            self.send(protocol.request(req_id, op, **args))
            async with asyncio.timeout(timeout):
                resp = await fut
        except TimeoutError:
            raise MonitorError(f"the guest agent did not answer {op} within {timeout:g}s") from None
        finally:
            self._pending.pop(req_id, None)
        if not resp.ok:
            raise MonitorError(resp.error, resp.kind)
        return resp.result

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        self._fail("closed")
