"""Kernel uevents: how a hot-plugged device announces itself in a guest without udev.

The kernel broadcasts a uevent (NETLINK_KOBJECT_UEVENT, multicast group 1)
for every device it adds and every driver it binds. A waiter subscribes
*before* it first looks for its device, so an event that comes between the
look and the wait is not lost; each event is then a cue to look again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from vmrt_agent import aio

#: <linux/netlink.h>; Python's socket module does not name it.
NETLINK_KOBJECT_UEVENT = 15
_KERNEL_GROUP = 1


class Uevents:
    """A subscription; `wait` returns after the next event(s) or the timeout."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK,
                                   socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                   NETLINK_KOBJECT_UEVENT)
        try:
            self._sock.bind((0, _KERNEL_GROUP))
        except OSError:
            self._sock.close()
            raise

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Uevents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drain(self) -> int:
        count = 0
        while True:
            try:
                self._sock.recv(8192)
            except BlockingIOError:
                return count
            except OSError:  # ENOBUFS: events were lost; looking again covers them
                count += 1
                continue
            count += 1

    async def wait(self, timeout: float) -> bool:
        """Wait for uevents (consuming every one queued); False if none came in time."""
        if self._drain():
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await aio.wait_readable(self._sock.fileno())
        return self._drain() > 0


def subscribe() -> Uevents | None:
    """A subscription, or None where uevents cannot be had (then callers poll)."""
    try:
        return Uevents()
    except OSError:
        return None

