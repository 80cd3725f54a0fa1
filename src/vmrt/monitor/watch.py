"""Be told, on the event loop, when a child process exits (pidfd, no polling)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable


def on_exit(pid: int, callback: Callable[[], None]) -> Callable[[], None]:
    """Run `callback` once, from the running loop, when `pid` exits; return a function
    that stops watching (safe to call more than once, or after the exit).

    The pid must be our child (not yet reaped), so it cannot have been recycled.
    If it is already gone, `callback` runs on the next loop iteration.
    """
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        handle = loop.call_soon(callback)
        return handle.cancel
    closed = False

    def stop() -> None:
        nonlocal closed
        if not closed:
            closed = True
            loop.remove_reader(pidfd)
            with contextlib.suppress(OSError):
                os.close(pidfd)

    def fired() -> None:
        stop()
        callback()

    loop.add_reader(pidfd, fired)
    return stop
