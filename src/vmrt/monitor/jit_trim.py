"""Give the host back the part of QEMU's translation cache that a flush left dead.

Under TCG, QEMU translates guest code into a buffer of `tb_size_mib` (64 MiB).
When the buffer is full QEMU flushes it, forgets every translation and starts
again from the buffer's beginning; the pages past the new fill level stay
resident, holding code nothing refers to until the fill level reaches them
again. A boot fills the buffer once: an idle pod's QEMU held all 64 MiB of
which 23 MiB were live (`info jit`), a third of its PSS.

With `split-wx=on` (vm/cmdline.py) the buffer is a memfd, so the monitor can
punch holes in it through `/proc/<qemu>/map_files`. It does so after a flush
only (`info jit` counts them), once the VM has been quiet for a moment, with
the vCPU stopped while it reads the fill level and punches (no translation
can land past what it read), and only past that level plus a margin. A page
QEMU writes later comes back as a fresh zero page, as it was at QEMU's start.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import socket
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from vmrt.log import Logger
from vmrt.vm.qmp import QMP

#: Trim once no request has come for this long (a pod start is a burst of them)...
QUIET_S = 2.0
#: ...but no later than this after the first request since the last trim: a manager
#: polling `state` every second must not put the trim off for ever.
LATEST_S = 10.0
#: Kept past the fill level: the prologue before the first region, and alignment.
MARGIN = 2 << 20
#: Punched in whole 2 MiB blocks (the buffer is made of transparent huge pages
#: without split-wx); less than this is not worth stopping the vCPU for.
BLOCK = 2 << 20
MIN_RELEASE = 4 << 20

_MAPPING = "/memfd:tcg-jit"
_USED = re.compile(r"^gen code size\s+(\d+)/(\d+)\s*$", re.MULTILINE)
_FLUSHES = re.compile(r"^TB flush count\s+(\d+)\s*$", re.MULTILINE)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


class JitStats(NamedTuple):
    used: int  # bytes of live translations, from the buffer's start
    capacity: int
    flushes: int


def parse_info_jit(text: str) -> JitStats | None:
    """The figures of HMP `info jit` that matter here; None if QEMU printed no such lines
    (not TCG, or another QEMU's wording)."""
    used, flushes = _USED.search(text), _FLUSHES.search(text)
    if used is None or flushes is None:
        return None
    return JitStats(int(used.group(1)), int(used.group(2)), int(flushes.group(1)))


def jit_mapping(maps: str) -> tuple[int, int] | None:
    """(start, end) of the writable view of the translation buffer in /proc/<pid>/maps."""
    for line in maps.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[1].startswith("rw") and fields[5] == _MAPPING:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if int(fields[2], 16) == 0:  # the view that starts at the memfd's start
                return start, end
    return None


def dead_range(used: int, size: int) -> tuple[int, int] | None:
    """(offset, length) of the buffer that holds no live translation, in whole blocks."""
    offset = -(-(used + MARGIN) // BLOCK) * BLOCK
    length = (size - offset) // BLOCK * BLOCK
    return (offset, length) if length >= MIN_RELEASE else None


def punch(pid: int, used: int) -> int:
    """Release the buffer of QEMU `pid` past `used`; the bytes released."""
    with open(f"/proc/{pid}/maps") as f:
        found = jit_mapping(f.read())
    if found is None:
        raise OSError(f"QEMU {pid} has no {_MAPPING} mapping (split-wx off?)")
    start, end = found
    dead = dead_range(used, end - start)
    if dead is None:
        return 0
    fd = os.open(f"/proc/{pid}/map_files/{start:x}-{end:x}", os.O_RDWR | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        if libc.fallocate(fd, _FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE, *dead) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"punching QEMU's translation buffer: {os.strerror(err)}")
    finally:
        os.close(fd)
    return dead[1]


async def release_dead(qmp: QMP, qemu_pid: int, trimmed_at: int) -> tuple[int, int]:
    """Release the dead part of the buffer if a flush since `trimmed_at` (a flush count)
    left one: (bytes released, the flush count it is trimmed at now)."""
    if (await _info(qmp)).flushes <= trimmed_at:
        return 0, trimmed_at
    status = await qmp.execute("query-status")
    if status.get("status") != "running":
        return 0, trimmed_at  # paused by someone else: theirs to resume, ours to skip
    await qmp.execute("stop")
    try:
        stats = await _info(qmp)  # with the vCPU stopped: nothing moves now
        released = punch(qemu_pid, stats.used)
    finally:
        await qmp.execute("cont")
    return released, stats.flushes


async def trim_once(sock: socket.socket, qemu_pid: int) -> int:
    """One trim over a QMP connection of its own (a warm pool VM's, before it is claimed:
    the monitor that adopts the VM gets the main QMP connection untouched)."""
    qmp = QMP("vmrt-trim")
    await qmp.connect(sock)
    try:
        released, _ = await release_dead(qmp, qemu_pid, 0)
        return released
    finally:
        await qmp.close()


async def _info(qmp: QMP) -> JitStats:
    text = await qmp.execute("human-monitor-command", {"command-line": "info jit"})
    stats = parse_info_jit(text if isinstance(text, str) else "")
    if stats is None:
        raise ValueError("QEMU's `info jit` has no fill level or flush count")
    return stats


class JitTrimmer:
    """Trims QEMU's translation buffer once the VM is quiet after a flush.

    `poke()` after every request; the trim runs `QUIET_S` after the last one.
    Shares the monitor's device lock, so no hot-plug happens while the vCPU
    is stopped. Any failure turns trimming off for this VM: it is an economy,
    never a reason for a pod to fail."""

    def __init__(self, *, qmp: QMP, qemu_pid: Callable[[], int], lock: asyncio.Lock,
                 spawn: Callable[[Coroutine[Any, Any, None]], None], log: Logger,
                 enabled: bool = True) -> None:
        self._qmp = qmp
        self._qemu_pid = qemu_pid
        self._lock = lock
        self._spawn = spawn
        self._log = log
        self._trimmed_at = 0  # the flush count at the last trim
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0  # LATEST_S after the first poke the pending trim answers
        self.enabled = enabled

    def poke(self) -> None:
        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._timer is not None and not self._timer.cancelled() \
                and self._timer.when() > now:
            self._timer.cancel()  # still pending: put it off, up to its deadline
        else:
            self._deadline = now + LATEST_S
        self._timer = loop.call_at(min(now + QUIET_S, self._deadline),
                                   lambda: self._spawn(self._trim_quietly()))

    def close(self) -> None:
        """No more trims: the VM is being torn down."""
        self.enabled = False
        if self._timer is not None:
            self._timer.cancel()

    async def _trim_quietly(self) -> None:
        if not self.enabled:
            return
        try:
            await self.trim()
        except Exception as exc:  # noqa: BLE001 - see the class docstring
            self.enabled = False
            self._log.warning("translation cache trimming off", error=str(exc))

    async def trim(self) -> int:
        """Release the dead part of the buffer if a flush left one; the bytes released."""
        async with self._lock:
            before = self._trimmed_at
            released, self._trimmed_at = await release_dead(self._qmp, self._qemu_pid(),
                                                            before)
        if self._trimmed_at != before:  # it looked, with the vCPU stopped
            self._log.debug("released dead translations", mib=released >> 20,
                            flushes=self._trimmed_at)
        return released
