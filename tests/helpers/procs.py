"""Process and mount inspection for leftover checks (Linux /proc only, no psutil needed)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

WATCHED_NAMES = ("qemu-system", "virtiofsd")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str
    comm: str
    cmdline: str  # NULs replaced by spaces
    starttime: int

    @property
    def alive(self) -> bool:
        """Zombies and dead processes are not 'left behind': they hold nothing but a pid."""
        return self.state not in ("Z", "X", "x")

    @property
    def key(self) -> tuple[int, int]:
        return (self.pid, self.starttime)

    def __str__(self) -> str:
        return f"pid {self.pid} (ppid {self.ppid}, {self.state}) {self.cmdline or self.comm}"


def read_proc(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    lpar, rpar = stat.find("("), stat.rfind(")")
    comm = stat[lpar + 1 : rpar]
    fields = stat[rpar + 2 :].split()
    # fields[0] = state (field 3), fields[1] = ppid (4), fields[19] = starttime (22)
    return Proc(
        pid=pid,
        ppid=int(fields[1]),
        state=fields[0],
        comm=comm,
        cmdline=raw.replace(b"\0", b" ").decode(errors="replace").strip(),
        starttime=int(fields[19]),
    )


def all_procs() -> list[Proc]:
    procs = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            p = read_proc(int(entry))
            if p is not None:
                procs.append(p)
    return procs


def environ_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    p = read_proc(pid)
    return p is not None and p.alive


def ppid_of(pid: int) -> int | None:
    p = read_proc(pid)
    return None if p is None else p.ppid


def procs_mentioning(marker: str, *, environ: bool = True) -> list[Proc]:
    """Live processes (not us, not our ancestors) whose argv or environment contains
    `marker` (typically a test's private --root or state directory), or whose working
    directory is under it."""
    me = os.getpid()
    ancestors = set(ancestry(me))
    needle = marker.encode()
    found = []
    for p in all_procs():
        if p.pid == me or p.pid in ancestors or not p.alive:
            continue
        if (marker in p.cmdline or (environ and needle in environ_of(p.pid))
                or _under(cwd_of(p.pid), marker)):
            found.append(p)
    return found


def cwd_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _under(path: str, base: str) -> bool:
    base = base.rstrip("/")
    return bool(path) and (path == base or path.startswith(base + "/"))


def ancestry(pid: int) -> list[int]:
    out = []
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        p = read_proc(pid)
        if p is None:
            break
        out.append(p.ppid)
        pid = p.ppid
    return out


def descends_from(pid: int, ancestor: int) -> bool:
    return ancestor in ancestry(pid)


def watched_snapshot(names: Iterable[str] = WATCHED_NAMES) -> set[tuple[int, int]]:
    """(pid, starttime) of every live QEMU / virtiofsd now."""
    names = tuple(names)
    return {
        p.key
        for p in all_procs()
        if p.alive and any(n in p.comm or n in p.cmdline.split(" ", 1)[0] for n in names)
    }


def new_watched(
    before: set[tuple[int, int]],
    *,
    marker: str | None,
    exclusive: bool,
    names: Iterable[str] = WATCHED_NAMES,
) -> list[Proc]:
    """QEMU / virtiofsd processes started since `before` that are still alive and that
    belong to this test: they descend from us, or mention `marker`, or the machine is
    declared exclusive (then every new one counts)."""
    names = tuple(names)
    me = os.getpid()
    out = []
    for p in all_procs():
        if not p.alive or p.key in before:
            continue
        if not any(n in p.comm or n in p.cmdline.split(" ", 1)[0] for n in names):
            continue
        ours = exclusive or descends_from(p.pid, me)
        if not ours and marker:
            ours = marker in p.cmdline or marker.encode() in environ_of(p.pid)
        if ours:
            out.append(p)
    return out


def mounts_under(path: str | os.PathLike[str], mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points at or below `path` in the given mountinfo."""
    base = os.path.realpath(path).rstrip("/")
    out = []
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        mnt = fields[4].replace("\\040", " ")
        if mnt == base or mnt.startswith(base + "/"):
            out.append(mnt)
    return out


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll `pred` until it holds or `timeout` seconds pass; returns the last result.
    The interval grows gently so that slow runtimes are not hammered."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 1.5, 0.25)


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    pids = list(pids)
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout)
    return [p for p in pids if pid_alive(p)]


def kill_procs(procs: Iterable[Proc], sig: int = signal.SIGKILL) -> None:
    for p in procs:
        cur = read_proc(p.pid)
        if cur is None or cur.starttime != p.starttime:
            continue  # gone, or the pid was reused
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, sig)


def jit_rss(qemu_pid: int) -> int:
    """Resident bytes of the writable view of QEMU's TCG translation buffer (a memfd with
    split-wx=on), from /proc/<pid>/smaps."""
    rss, inside = 0, False
    for line in Path(f"/proc/{qemu_pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and ":" not in fields[0]:
            inside = fields[1].startswith("rw") and line.endswith("/memfd:tcg-jit (deleted)")
        elif inside and line.startswith("Rss:"):
            rss += int(fields[1]) * 1024
    return rss
