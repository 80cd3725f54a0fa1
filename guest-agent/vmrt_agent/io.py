"""Per-process channels: a container's stdio, carried as frames within credit.

Output is read from the process's pipes (or its pty master) only while the
host has granted credit on the channel.  Without credit the agent stops
reading, the pipe fills and the *container* blocks in write(2); the single
virtio port, which also carries every control message, never does.

Input (STDIN frames) is queued per channel and written when the pipe takes it;
the queue is bounded, because the host could otherwise make the guest buffer
without limit behind a process that never reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import select
import struct
import termios
from dataclasses import dataclass
from typing import Final

from vmrt_agent import protocol
from vmrt_agent.port import PortWriter
from vmrt_agent.protocol import Frame, FrameType

log = logging.getLogger(__name__)

#: Largest STDOUT/STDERR frame; well under protocol.MAX_PAYLOAD.
CHUNK: Final = 64 << 10
#: STDIN the agent holds for a process that does not read it.
MAX_STDIN_BACKLOG: Final = 1 << 20
#: Credit beyond this is not tracked (the counter is a u32 on the wire).
MAX_CREDIT: Final = (1 << 32) - 1


@dataclass(slots=True)
class _Output:
    ftype: FrameType
    name: bytes
    reading: bool = False


class ProcessIO:
    """The agent's ends of one process's stdio and the channel's credit."""

    def __init__(self, channel: int, writer: PortWriter, *, terminal: bool) -> None:
        self.channel = channel
        self.terminal = terminal
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._credit = 0
        self._outputs: dict[int, _Output] = {}
        self._stdin: int | None = None
        self._stdin_buf = bytearray()
        self._stdin_watched = False
        self._stdin_eof = False  # host sent CLOSE stdin
        self._stdin_dropped = False
        self._winsize: tuple[int, int] | None = None
        self._outputs_done = asyncio.Event()
        self._closed = False

    # --- attaching the process's fds ---------------------------------------

    def attach_pipes(self, stdin: int, stdout: int, stderr: int) -> None:
        """Take the agent's ends of the three pipes (non-blocking, owned from now)."""
        self._stdin = stdin
        self._outputs[stdout] = _Output(FrameType.STDOUT, b"stdout")
        self._outputs[stderr] = _Output(FrameType.STDERR, b"stderr")
        self._attached()

    def attach_pty(self, master: int) -> None:
        """Take the pty master: all output is STDOUT, STDIN goes to the same fd."""
        os.set_blocking(master, False)
        self._stdin = master
        self._outputs[master] = _Output(FrameType.STDOUT, b"stdout")
        if self._winsize is not None:
            self._resize(*self._winsize)
        self._attached()

    def _attached(self) -> None:
        if self._closed:
            self.close()
            return
        # Input is credit-based too: the host sends only what we can hold, so a process
        # that reads its stdin slowly slows its writer down instead of losing input.
        self._grant_stdin(protocol.INITIAL_CREDIT)
        self._update_readers()
        self._flush_stdin()

    # --- frames from the host ----------------------------------------------

    def on_frame(self, frame: Frame) -> None:
        match frame.type:
            case FrameType.CREDIT:
                self._credit = min(self._credit + protocol.unpack_credit(frame.payload),
                                   MAX_CREDIT)
                self._update_readers()
            case FrameType.STDIN:
                self._write_stdin(frame.payload)
            case FrameType.CLOSE if frame.payload == b"stdin":
                self._stdin_eof = True
                self._flush_stdin()
            case FrameType.RESIZE:
                rows, cols = protocol.unpack_resize(frame.payload)
                self._winsize = (rows, cols)
                if self._stdin is not None and self.terminal:
                    self._resize(rows, cols)
            case _:
                log.warning("channel %d: ignoring %s from the host", self.channel,
                            frame.type.name)

    def _resize(self, rows: int, cols: int) -> None:
        assert self._stdin is not None
        try:
            fcntl.ioctl(self._stdin, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        except OSError as exc:
            log.warning("channel %d: resize failed: %s", self.channel, exc)

    # --- output ------------------------------------------------------------

    def _update_readers(self) -> None:
        """Read output exactly while there is credit and the port is not backed up."""
        want = self._credit > 0 and not self._writer.congested
        for fd, out in self._outputs.items():
            if want and not out.reading:
                self._loop.add_reader(fd, self._on_readable, fd)
                out.reading = True
            elif not want and out.reading:
                self._loop.remove_reader(fd)
                out.reading = False
        if self._credit > 0 and self._writer.congested and self._outputs:
            self._writer.on_drain(self._update_readers)

    def _on_readable(self, fd: int) -> None:
        out = self._outputs.get(fd)
        if out is None or self._credit <= 0:
            return
        try:
            data = os.read(fd, min(self._credit, CHUNK))
        except BlockingIOError:
            return
        except OSError as exc:
            # A pty master reads EIO once the last slave fd is closed: that is EOF.
            if exc.errno != errno.EIO:
                log.warning("channel %d: reading %s: %s", self.channel, out.name.decode(), exc)
            data = b""
        if not data:
            self._eof(fd, out)
            return
        self._credit -= len(data)
        self._writer.send(protocol.encode_frame(out.ftype, self.channel, data))
        self._update_readers()

    def _eof(self, fd: int, out: _Output) -> None:
        if out.reading:
            self._loop.remove_reader(fd)
        del self._outputs[fd]
        if fd == self._stdin:  # the pty: input ends with the output
            self._drop_stdin_fd()
        else:
            os.close(fd)
        self._writer.send(protocol.encode_frame(FrameType.CLOSE, self.channel, out.name))
        if not self._outputs:
            self._outputs_done.set()

    def notice_exit(self) -> None:
        """The process died: end the outputs that are already drained, credit or not.

        CLOSE carries no bytes, so it needs no credit.  Without this check an
        exit with the credit used up would wait out the drain timeout for an
        EOF the agent is not allowed to read.
        """
        for fd, out in list(self._outputs.items()):
            if _drained(fd):
                self._eof(fd, out)

    async def wait_outputs_closed(self, timeout: float) -> bool:
        """Wait (bounded) for EOF on every output; False if some are still open."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._outputs_done.wait()
        return self._outputs_done.is_set()

    # --- input -------------------------------------------------------------

    def _write_stdin(self, data: bytes) -> None:
        if self._stdin_dropped or self._stdin_eof:
            return
        if len(self._stdin_buf) + len(data) > MAX_STDIN_BACKLOG:
            log.warning("channel %d: process does not read stdin; dropping its input",
                        self.channel)
            self._stdin_dropped = True
            self._stdin_buf.clear()
            if not self.terminal:  # EOF tells the process; a pty master must stay
                self._drop_stdin_fd()
            return
        self._stdin_buf += data
        self._flush_stdin()

    def _flush_stdin(self) -> None:
        fd = self._stdin
        if fd is None:
            return  # not attached yet (or gone); keep the bounded buffer
        while self._stdin_buf:
            try:
                written = os.write(fd, self._stdin_buf)
            except BlockingIOError:
                if not self._stdin_watched:
                    self._loop.add_writer(fd, self._flush_stdin)
                    self._stdin_watched = True
                return
            except OSError as exc:  # EPIPE: the process closed stdin or died
                log.debug("channel %d: stdin: %s", self.channel, exc)
                self._stdin_buf.clear()
                self._stdin_dropped = True
                if not self.terminal:
                    self._drop_stdin_fd()
                return
            del self._stdin_buf[:written]
            self._grant_stdin(written)
        self._unwatch_stdin()
        if self._stdin_eof and not self.terminal:
            self._drop_stdin_fd()

    def _grant_stdin(self, amount: int) -> None:
        if amount > 0 and not self._stdin_eof and not self._closed:
            self._writer.send(protocol.encode_frame(FrameType.CREDIT, self.channel,
                                                    protocol.pack_credit(amount)))

    def _unwatch_stdin(self) -> None:
        if self._stdin_watched and self._stdin is not None:
            self._loop.remove_writer(self._stdin)
        self._stdin_watched = False

    def _drop_stdin_fd(self) -> None:
        fd = self._stdin
        if fd is None:
            return
        self._unwatch_stdin()
        self._stdin = None
        if fd not in self._outputs:  # a pty master still read for output stays open
            os.close(fd)

    # --- teardown ----------------------------------------------------------

    def close(self) -> None:
        """Release every fd; later frames for the channel are ignored."""
        self._closed = True
        for fd, out in list(self._outputs.items()):
            if out.reading:
                self._loop.remove_reader(fd)
            if fd != self._stdin:
                os.close(fd)
        self._outputs.clear()
        self._drop_stdin_fd()
        self._outputs_done.set()


def _drained(fd: int) -> bool:
    """Whether ``fd`` is hung up (no writer, no slave) with nothing left to read."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    events = poller.poll(0)
    if not events or not events[0][1] & select.POLLHUP:
        return False
    try:
        pending = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
    except OSError:
        return False
    return int(pending) == 0


class Channels:
    """Which :class:`ProcessIO` owns each channel number."""

    def __init__(self) -> None:
        self._by_channel: dict[int, ProcessIO] = {}

    def __contains__(self, channel: int) -> bool:
        return channel in self._by_channel

    def add(self, pio: ProcessIO) -> None:
        self._by_channel[pio.channel] = pio

    def remove(self, channel: int) -> None:
        self._by_channel.pop(channel, None)

    def route(self, frame: Frame) -> None:
        pio = self._by_channel.get(frame.channel)
        if pio is None:
            log.warning("ignoring %s for unknown channel %d", frame.type.name, frame.channel)
            return
        pio.on_frame(frame)
