"""Waiting on raw file descriptors with the running loop's selector.

The agent reads pipes, ptys, unix sockets and the virtio port itself as plain
non-blocking fds, so every await on I/O goes through this one helper rather
than through asyncio transports (which would own the fds and their closing).
"""

from __future__ import annotations

import asyncio
import os


async def wait_readable(fd: int) -> None:
    """Return once ``fd`` is readable (or at EOF / hang-up)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def read_all(fd: int, *, limit: int = 1 << 20) -> bytes:
    """Read a non-blocking fd to EOF, keeping at most ``limit`` bytes.

    Past the limit the data is read and dropped, so a chatty child cannot
    block on a full pipe and cannot make the agent hold unbounded memory.
    """
    chunks = bytearray()
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            await wait_readable(fd)
            continue
        if not data:
            return bytes(chunks)
        if len(chunks) < limit:
            chunks += data[: limit - len(chunks)]

