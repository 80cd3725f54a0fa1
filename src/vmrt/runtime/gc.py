"""`gc`: find and remove what a crash or a host reboot left behind under one --root.

* processes (monitor, QEMU, virtiofsd, shim) that carry the root in their argv but
  that no state accounts for: a monitor whose sandbox is gone, a QEMU or virtiofsd
  with no monitor above it, a shim no container state names;
* container state whose container is stopped and whose VM is gone (after a
  reboot every container reads `stopped`), and container directories without a
  readable state (a `create` killed before it wrote one);
* sandbox directories no container refers to (their VM, if it still runs, goes
  with them through `sandbox.destroy`, which also undoes networking);
* share directories of a live sandbox that belong to no container.

Nothing in use is touched: a container or sandbox whose lock is held has a verb
at work on it (a `create` holds its container's lock from claim to pid file, and a
booting sandbox's lock), and while any container lock is held, processes and
shares that state does not name yet are left alone too. Other kinds of debris
(taps, namespaces) plug in through FINDERS.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vmrt.errors import VmrtError
from vmrt.runtime import procscan
from vmrt.runtime import sandbox as sandboxes
from vmrt.runtime.context import Context
from vmrt.runtime.procscan import VmrtProcess
from vmrt.state import status
from vmrt.state.model import ContainerState, ProcessRef, SandboxState, Status


@dataclass(frozen=True)
class Orphan:
    kind: str  # "process" | "container" | "sandbox" | "share" | what a finder adds
    name: str
    reason: str
    remove: Callable[[], None] = field(compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.kind} {self.name}: {self.reason}"


@dataclass
class View:
    """One look at --root and the process table, taken before anything is removed."""

    containers: dict[str, ContainerState | None]  # None: no readable state.json
    sandboxes: dict[str, SandboxState | None]  # None: no readable sandbox.json
    busy_containers: set[str]
    busy_sandboxes: set[str]
    processes: list[VmrtProcess]

    @property
    def quiet(self) -> bool:
        """No verb at work on any container: whatever state does not name is debris."""
        return not self.busy_containers

    def vm_alive(self, sandbox_id: str) -> bool:
        sb = self.sandboxes.get(sandbox_id)
        if sb is not None and sb.monitor is not None and sb.monitor.alive():
            return True
        return any(p.kind == "monitor" and p.sandbox == sandbox_id for p in self.processes)


#: How long a directory without state is taken for one being made.
STATELESS_GRACE_S = 60.0

Finder = Callable[[Context, View], list[Orphan]]
#: Finders of other debris (the network's, say): each returns its own orphans.
FINDERS: list[Finder] = []


def collect(ctx: Context, *, dry_run: bool = False) -> list[Orphan]:
    """Find every orphan; unless `dry_run`, remove them. Returns what was found."""
    found = find(ctx)
    if dry_run:
        return found
    failed = []
    for orphan in found:
        try:
            orphan.remove()
        except (OSError, VmrtError) as exc:
            failed.append(f"{orphan.kind} {orphan.name}: {exc}")
    if failed:
        raise VmrtError(f"gc could not remove {len(failed)} orphan(s): {'; '.join(failed)}")
    return found


def find(ctx: Context) -> list[Orphan]:
    view = look(ctx)
    out = _processes(view)
    stale = _containers(ctx, view)
    out += stale
    gone = {o.name for o in stale}
    out += _sandboxes(ctx, view, gone)
    out += _shares(ctx, view, gone)
    for finder in FINDERS:
        out += finder(ctx, view)
    return out


def look(ctx: Context) -> View:
    root = ctx.root
    containers: dict[str, ContainerState | None] = {}
    busy_c: set[str] = set()
    for cdir in _dirs(root.containers):
        if _locked(cdir):
            busy_c.add(cdir.name)
        try:
            containers[cdir.name] = ctx.store.load_container(cdir.name)
        except VmrtError:
            containers[cdir.name] = None
    sboxes: dict[str, SandboxState | None] = {}
    busy_s: set[str] = set()
    for sdir in _dirs(root.sandboxes):
        if _locked(sdir):
            busy_s.add(sdir.name)
        try:
            sboxes[sdir.name] = ctx.store.load_sandbox(sdir.name)
        except VmrtError:
            sboxes[sdir.name] = None
    return View(containers, sboxes, busy_c, busy_s, procscan.scan(root.path))


# --- what is an orphan ----------------------------------------------------------


def _processes(view: View) -> list[Orphan]:
    by_pid = {p.pid: p for p in view.processes}
    shims = {c.shim for c in view.containers.values() if c is not None and c.shim}
    out = []
    for p in view.processes:
        reason = _process_reason(p, view, by_pid, shims)
        if reason:
            out.append(Orphan("process", str(p), reason, _killer(p.ref)))
    return out


def _process_reason(p: VmrtProcess, view: View, by_pid: dict[int, VmrtProcess],
                    shims: set[ProcessRef]) -> str:
    if p.kind == "shim":
        return "" if p.ref in shims or not view.quiet else "no container state names it"
    if p.sandbox not in view.sandboxes:
        return "its sandbox is gone"
    if p.kind == "monitor":
        sb = view.sandboxes[p.sandbox]
        if sb is not None and sb.monitor is not None and sb.monitor != p.ref:
            return "its sandbox has another monitor"
        return ""
    parent = by_pid.get(p.ppid)
    while parent is not None and parent.kind == p.kind:  # virtiofsd's sandboxed child
        parent = by_pid.get(parent.ppid)
    if parent is None or parent.kind != "monitor" or parent.sandbox != p.sandbox:
        return "its monitor is gone"
    return ""


def _containers(ctx: Context, view: View) -> list[Orphan]:
    out = []
    for cid, state in view.containers.items():
        if cid in view.busy_containers:
            continue
        remove = _remover(ctx.store.remove_container, cid)
        if state is None:
            if _young(ctx.root.containers / cid):
                continue  # claimed by a `create` an instant before it took the lock
            out.append(Orphan("container", cid, "no readable state", remove))
        elif status.current(state) is Status.STOPPED and not (
                state.sandbox and view.vm_alive(state.sandbox)):
            out.append(Orphan("container", cid, "stopped, and its VM is gone", remove))
    return out


def _sandboxes(ctx: Context, view: View, gone: set[str]) -> list[Orphan]:
    live = {cid: c for cid, c in view.containers.items() if c is not None and cid not in gone}
    out = []
    for sb, state in view.sandboxes.items():
        if sb in view.busy_sandboxes:
            continue
        members = state.members if state is not None else ()
        if any(c.sandbox == sb for c in live.values()) or any(m in live for m in members):
            continue
        if state is None and _young(ctx.root.sandboxes / sb):
            continue  # claimed by a `create` an instant before it took the lock
        if not view.quiet and (state is None or state.monitor is None):
            continue  # perhaps a `create` between claiming it and booting its VM
        reason = "no container refers to it"
        if view.vm_alive(sb):
            reason += "; its VM still runs"
        out.append(Orphan("sandbox", sb, reason, _remover(_destroy, ctx, sb)))
    return out


def _shares(ctx: Context, view: View, gone: set[str]) -> list[Orphan]:
    if not view.quiet:
        return []
    out = []
    for sb, state in view.sandboxes.items():
        if state is None or sb in view.busy_sandboxes or not view.vm_alive(sb):
            continue  # a sandbox without a VM goes whole, above
        owners = {d.owner for d in state.devices}
        for share in _dirs(ctx.root.sandbox(sb).path / "shares"):
            cid = share.name
            known = view.containers.get(cid)
            if cid in owners or (known is not None and cid not in gone):
                continue
            out.append(Orphan("share", f"{sb}/{cid}", "belongs to no container",
                              _remover(_unstage, share)))
    return out


# --- removal ----------------------------------------------------------------------


def _killer(ref: ProcessRef) -> Callable[[], None]:
    def kill() -> None:
        if ref.alive():  # pid *and* start time: never a recycled pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(ref.pid, signal.SIGKILL)

    return kill


def _remover(fn: Callable[..., None], *args: object) -> Callable[[], None]:
    return lambda: fn(*args)


def _destroy(ctx: Context, sandbox_id: str) -> None:
    """sandbox.destroy, once nothing is mounted under the directory it will rmtree."""
    _detach_mounts(ctx.root.sandbox(sandbox_id).path)
    sandboxes.destroy(ctx, sandbox_id)


def _unstage(share: Path) -> None:
    _detach_mounts(share)
    from vmrt.monitor.shares import _unstage as unstage

    unstage(share)


def _detach_mounts(path: Path) -> None:
    """Refuse to delete a tree a mount still reaches into (a bind of someone's rootfs)."""
    from vmrt.util import mount

    for mnt in sorted(mount.mounts_under(path), key=len, reverse=True):
        with contextlib.suppress(OSError):
            mount.umount(mnt)
    if mount.mounts_under(path):
        raise VmrtError(f"{path} still has mounts under it")


def _dirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def _young(directory: Path) -> bool:
    """Made within the last STATELESS_GRACE_S: a directory is claimed (mkdir) before its
    claimer can lock it or write its state."""
    try:
        return time.time() - directory.stat().st_mtime < STATELESS_GRACE_S
    except OSError:
        return False


def _locked(directory: Path) -> bool:
    """Whether a verb holds this directory's flock (tried without waiting, and let go)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
