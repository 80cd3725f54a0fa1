"""Facts about host processes, read straight from /proc (no psutil on the fast path)."""

from __future__ import annotations

import contextlib
import os
import signal


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    if rest[0] in (b"Z", b"X"):
        return None  # a zombie has finished; only its reaping is pending
    return int(rest[19])


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def close_fds_except(keep: set[int]) -> None:
    """Close every inherited fd but `keep`: a forked daemon must not hold a caller's
    pipes (conmon would never see EOF) or its flocks (the lock would outlive the verb)."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)
