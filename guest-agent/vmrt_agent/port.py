"""The single writer of the virtio port: every frame the agent sends goes here.

Frames from concurrent requests and channels must not interleave, and a write
must never block the loop: when the host is slow (or not connected, which a
non-blocking virtio port reports as EAGAIN) bytes wait in a queue and the fd is
watched for writability.  Stream output checks :attr:`PortWriter.congested`
before reading more from a container, so a host that grants credit but does not
read cannot make the agent buffer without bound.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import Callable
from typing import Final

from vmrt_agent.protocol import FrameType

log = logging.getLogger(__name__)

#: Stream output pauses above this backlog and resumes below LOW_WATER.
HIGH_WATER: Final = 1 << 20
LOW_WATER: Final = 256 << 10


class PortWriter:
    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop,
                 on_broken: Callable[[OSError], None]) -> None:
        self._fd = fd
        self._loop = loop
        self._on_broken = on_broken
        self._queue: collections.deque[bytes] = collections.deque()
        self._offset = 0  # bytes of the head frame already written
        self._backlog = 0
        self._watching = False
        self._paused = False
        self._drain_callbacks: list[Callable[[], None]] = []

    @property
    def congested(self) -> bool:
        return self._backlog >= HIGH_WATER

    def send(self, frame: bytes) -> None:
        """Queue one whole encoded frame and write what the port takes now."""
        self._queue.append(frame)
        self._backlog += len(frame)
        self._flush()

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the backlog falls below LOW_WATER."""
        if callback not in self._drain_callbacks:
            self._drain_callbacks.append(callback)

    def pause(self) -> None:
        """The host went away: stop writing, drop a half-written frame and responses.

        The new connection must start on a frame boundary (the bytes already
        written of that frame went to the old one), and it has no requests a
        queued response could answer; the monitor treats a response to no
        request as a broken link.  Events and output stay queued.
        """
        self._paused = True
        self._unwatch()
        if self._offset and self._queue:
            head = self._queue.popleft()
            self._backlog -= len(head) - self._offset
            self._offset = 0
        kept = collections.deque(f for f in self._queue if f[2] != FrameType.RESPONSE)
        self._backlog = sum(len(f) for f in kept)
        self._queue = kept

    def resume(self, first: bytes) -> None:
        """A host is connected again: send ``first`` (the hello) before the backlog."""
        self._paused = False
        stale = [frame for frame in self._queue if frame == first]
        for frame in stale:
            self._queue.remove(frame)
            self._backlog -= len(frame)
        self._queue.appendleft(first)
        self._backlog += len(first)
        self._flush()

    def close(self) -> None:
        self._unwatch()
        self._queue.clear()
        self._backlog = 0

    def _flush(self) -> None:
        while self._queue and not self._paused:
            head = self._queue[0]
            try:
                written = os.write(self._fd, memoryview(head)[self._offset :])
            except BlockingIOError:
                self._watch()
                return
            except OSError as exc:
                self._unwatch()
                self._on_broken(exc)
                return
            self._offset += written
            self._backlog -= written
            if self._offset == len(head):
                self._queue.popleft()
                self._offset = 0
        self._unwatch()
        if self._backlog < LOW_WATER and self._drain_callbacks:
            callbacks, self._drain_callbacks = self._drain_callbacks, []
            for callback in callbacks:
                callback()

    def _watch(self) -> None:
        if not self._watching:
            self._loop.add_writer(self._fd, self._flush)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_writer(self._fd)
            self._watching = False
