"""The port loop: frames in from the host, dispatched; frames out through one writer.

Every request runs as its own task, so a slow one (``create_container``
waiting for a hot-plugged device) never holds up a ping or a kill.  Stream
frames go to the channel's :class:`~vmrt_agent.io.ProcessIO` in arrival order.

A virtio port cannot be reconnected the way a socket can, so a frame that
breaks the protocol does not end the session: it is logged, the decoder's
buffer is discarded, and input is skipped up to the next frame magic.  When the
host side of the port closes (the monitor went away) reads return EOF and the
fd polls as hung up; the agent then polls for the host's return and greets it
with a fresh hello.  Outside a VM (tests), EOF ends the agent instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from typing import Final

from vmrt_agent import handlers, protocol
from vmrt_agent.config import AgentConfig
from vmrt_agent.containers import Containers
from vmrt_agent.debug_shell import DebugShells
from vmrt_agent.errors import AgentError
from vmrt_agent.execs import Execs
from vmrt_agent.io import Channels
from vmrt_agent.port import PortWriter
from vmrt_agent.protocol import Frame, FrameType, ProtocolError
from vmrt_agent.reaper import Reaper

log = logging.getLogger(__name__)

READ_SIZE: Final = 256 << 10
#: How often a disconnected port is checked for the host's return.
RECONNECT_POLL: Final = 0.2
_HOST_STREAM_TYPES: Final = frozenset(
    {FrameType.STDIN, FrameType.CLOSE, FrameType.RESIZE, FrameType.CREDIT})


class Server:
    def __init__(self, fd: int, config: AgentConfig, *, nonce: str, exit_on_eof: bool) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._exit_on_eof = exit_on_eof
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._writer = PortWriter(fd, self._loop, self._broken)
        self._channels = Channels()
        self._reaper = Reaper(self._loop)
        containers = Containers(config, self._reaper, self._channels, self._writer)
        self._services = handlers.Services(containers, Execs(containers), DebugShells(containers))
        self._decoder = protocol.Decoder()
        self._resync = False
        self._connected = True
        self._tasks: set[asyncio.Task[None]] = set()
        self._hello = protocol.event("hello", version=protocol.VERSION, nonce=nonce,
                                     capabilities=sorted(handlers.HANDLERS))

    async def serve(self) -> None:
        """Greet the host and serve until the port is gone (only outside a VM)."""
        os.set_blocking(self._fd, False)
        self._reaper.install()
        try:
            self._writer.send(self._hello)
            self._loop.add_reader(self._fd, self._on_readable)
            await self._done
        finally:
            self._loop.remove_reader(self._fd)
            self._writer.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._reaper.uninstall()

    # --- input -------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("reading the port: %s", exc)
            data = b""
        if data:
            self._feed(data)
        else:
            self._disconnected()

    def _feed(self, data: bytes) -> None:
        while data:
            if self._resync:
                start = data.find(protocol.MAGIC)
                if start < 0:
                    return
                data, self._resync = data[start:], False
            try:
                frames = self._decoder.feed(data)
            except ProtocolError as exc:
                # Frames decoded earlier in this read are lost with the error;
                # the host broke the protocol, so that is its loss to detect.
                log.error("protocol error from the host, discarding input: %s", exc)
                data = self._after_error(data)
                continue
            for frame in frames:
                self._route(frame)
            return

    def _after_error(self, data: bytes) -> bytes:
        """What of ``data`` to decode next: past a bad header, or from the next frame."""
        pending = self._decoder.pending
        self._decoder = protocol.Decoder()
        if pending > len(data):  # the bad header began in an earlier read
            self._resync = True
            return data
        rest = data[len(data) - pending :]
        if len(rest) >= protocol.HEADER.size and not _header_ok(rest[: protocol.HEADER.size]):
            self._resync = True
            return rest[1:]
        return rest  # a bad payload (check_frame): the next frame starts right here

    def _route(self, frame: Frame) -> None:
        if frame.type is FrameType.REQUEST:
            self._dispatch(frame)
        elif frame.type in _HOST_STREAM_TYPES and frame.channel != 0:
            self._channels.route(frame)
        else:
            log.warning("ignoring %s frame on channel %d from the host", frame.type.name,
                        frame.channel)

    def _dispatch(self, frame: Frame) -> None:
        try:
            obj = frame.json()
        except ProtocolError as exc:
            log.error("malformed request: %s", exc)
            return
        try:
            req = protocol.Request.parse(obj)
        except ProtocolError as exc:
            log.error("malformed request: %s", exc)
            req_id = obj.get("id")
            if isinstance(req_id, int) and not isinstance(req_id, bool) and 0 <= req_id < 2**53:
                self._writer.send(protocol.response_error(req_id, str(exc), "invalid"))
            return
        handler = handlers.HANDLERS.get(req.op)
        if handler is None:
            self._writer.send(protocol.response_error(req.id, f"unknown op {req.op!r}",
                                                      "invalid"))
            return
        try:
            pending = handler(self._services, req.args)  # synchronous part, in order
        except Exception as exc:
            self._respond_error(req, exc)
            return
        task = self._loop.create_task(self._finish(req, pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, req: protocol.Request, pending: Awaitable[handlers.Result]) -> None:
        try:
            result = await pending
            self._writer.send(protocol.response_ok(req.id, result))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._respond_error(req, exc)

    def _respond_error(self, req: protocol.Request, exc: Exception) -> None:
        kind = handlers.error_kind(exc)
        if kind == "error" and not isinstance(exc, AgentError):
            log.exception("%s failed unexpectedly", req.op, exc_info=exc)
        else:
            log.info("%s failed (%s): %s", req.op, kind, exc)
        message = " ".join(str(exc).split()) or type(exc).__name__
        self._writer.send(protocol.response_error(req.id, message, kind))

    # --- connection state --------------------------------------------------

    def _broken(self, exc: OSError) -> None:
        log.warning("writing the port: %s", exc)
        self._disconnected()

    def _disconnected(self) -> None:
        if self._exit_on_eof:
            if not self._done.done():
                self._done.set_result(None)
            return
        if not self._connected:
            return
        log.info("the host closed the port; waiting for it to come back")
        self._connected = False
        self._loop.remove_reader(self._fd)  # the port polls as hung up until then
        self._writer.pause()
        self._decoder, self._resync = protocol.Decoder(), False
        self._loop.call_later(RECONNECT_POLL, self._probe)

    def _probe(self) -> None:
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            data = None  # connected, nothing sent yet
        except OSError:
            data = b""
        if data == b"":
            self._loop.call_later(RECONNECT_POLL, self._probe)
            return
        log.info("the host is back on the port")
        self._connected = True
        self._writer.resume(self._hello)
        self._loop.add_reader(self._fd, self._on_readable)
        if data:
            self._feed(data)


def _header_ok(header: bytes) -> bool:
    try:
        protocol.parse_header(header)
    except ProtocolError:
        return False
    return True
