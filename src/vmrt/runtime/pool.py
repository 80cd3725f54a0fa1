"""The warm pool: booted, empty VMs under <root>/pool/, claimed by sandbox creates.

With `pool_size = N` in the config, vmrt keeps N VMs whose agent has said hello
and that belong to no sandbox (`monitor/pooled.py` runs each). Layout: paths.py.

* **claim** (`claim`, on the `create` path): rename `pool/<vm>` to
  `sandboxes/<sb>` with RENAME_NOREPLACE. That one syscall takes the VM from
  every other claimer (ENOENT: taken, try the next) and the sandbox id from
  every other create (EEXIST: the sandbox exists). The directory, with the VM's
  socket and logs in it, *is* the sandbox directory from then on.
* **adopt** (`adopt`): the claimer asks the VM's monitor, over its socket, to
  become sandbox <sb>'s monitor, passing the pod's network namespace; the
  same process becomes it (no exec: the sandbox monitor's modules are imported
  already; QEMU stays its child) and reports "ready" on that connection exactly
  as a freshly spawned monitor does on its pipe. If anything fails, the VM is
  killed and the create boots a VM cold in the same directory: a pool problem
  costs time, never a create.
* **refill** (`refill`, a second after every sandbox create): under `pool/.lock`,
  entries whose monitor died or that were booted from another image or
  configuration are taken out (renamed `.<vm>.gone`, then killed and removed),
  and new VMs are spawned until N are booting or ready. Spawning is a double
  fork: the VM's monitor is nobody's child and holds none of the caller's fds
  (conmon would wait for their EOF), and `create` never waits for its boot.
* **drain** (`vmrt pool drain`): every entry is renamed away under the lock
  (so no claim can take it meanwhile), then stopped; `pool/.drained` records
  when, so that a create's refill asked for before (it waits REFILL_DELAY_S)
  does not bring the pool back.

`pool.json` (monitor pid and start time, fingerprint) is written by the spawner
before it lets go of the lock; `ready.json` by the VM's monitor after the hello.
Only entries with both, a live monitor and the current fingerprint are claimed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vmrt import protocol
from vmrt.config import Config
from vmrt.errors import SandboxError, VmrtError
from vmrt.paths import PoolVMDir, Root
from vmrt.runtime.context import Context
from vmrt.runtime.sandbox import BootImage
from vmrt.state.model import ProcessRef, SandboxState
from vmrt.state.store import read_json, write_json
from vmrt.util.proc import close_fds_except, start_time
from vmrt.util.record import record

#: How long a create's refill waits before it boots anything: the claimed VM is starting
#: its first container meanwhile, and a VM booting beside it (SCHED_IDLE or not: the
#: refill's own start, its fork's copy-on-write faults, a 2-core host's caches) made
#: that pod start ≈30 ms slower (bench: 453 -> 416 ms, medians of 4).
REFILL_DELAY_S = 1.0
#: In pool/: when the pool was last drained (refills asked for before then do nothing).
DRAINED_NAME = ".drained"
#: How long a drained VM's monitor gets to stop QEMU after SIGTERM before SIGKILL.
STOP_GRACE_S = 5.0


@record
class PoolEntry:
    vm_id: str
    dir: PoolVMDir
    fingerprint: str
    monitor: ProcessRef | None
    qemu: ProcessRef | None  # set once ready.json is written

    @property
    def state(self) -> str:
        if self.monitor is None or not self.monitor.alive():
            return "dead"
        return "ready" if self.qemu is not None else "booting"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.vm_id, "state": self.state,
                "monitor": self.monitor.pid if self.monitor else 0,
                "qemu": self.qemu.pid if self.qemu else 0, "fingerprint": self.fingerprint}


@record
class Claimed:
    """A pool VM renamed into a sandbox's directory, not yet told so."""

    vm_id: str
    monitor: ProcessRef
    qemu: ProcessRef


def _ref(value: Any) -> ProcessRef | None:
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return ProcessRef(value[0], value[1])
    return None


def _entry(vm: PoolVMDir) -> PoolEntry | None:
    try:
        record = read_json(vm.record)
    except (OSError, ValueError, VmrtError):
        return None
    qemu = None
    with contextlib.suppress(OSError, ValueError, VmrtError):
        qemu = _ref(read_json(vm.ready).get("qemu"))
    return PoolEntry(vm.path.name, vm, str(record.get("fingerprint", "")),
                     _ref(record.get("monitor")), qemu)


def _names(root: Root) -> list[str]:
    try:
        return sorted(p.name for p in root.pool.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def entries(root: Root) -> list[PoolEntry]:
    """The pool's VMs (oldest first), as their files describe them."""
    found = []
    for name in _names(root):
        if not name.startswith("."):
            entry = _entry(root.pool_vm(name))
            if entry is not None:
                found.append(entry)
    return sorted(found, key=lambda e: e.monitor.start_time if e.monitor else 0)


@functools.cache
def _boot(cfg: Config) -> tuple[BootImage, str]:
    """The image a pod VM boots under `cfg`, and that machine's fingerprint (once per call:
    resolving the image reads the cache and probes the accelerator)."""
    from vmrt.monitor.vmspec import fingerprint as shape
    from vmrt.runtime.sandbox import boot_image

    image = boot_image(cfg)
    return image, shape(cfg, kernel=image.kernel, initrd=image.initrd,
                        kernel_cmdline=image.kernel_cmdline, root_image=image.root_image,
                        accel=image.accel)


def fingerprint(ctx: Context) -> str:
    return _boot(ctx.config)[1]


# --- claim and adopt (the create path) ----------------------------------------------------


def claim(ctx: Context, sandbox_id: str) -> Claimed | None:
    """Rename a ready pool VM's directory to the sandbox's; None if the pool has none
    (or the sandbox directory exists: the caller's mkdir then says so)."""
    from vmrt.util.rename import rename_noreplace

    if ctx.config.pool_size <= 0:
        return None
    want = fingerprint(ctx)
    target = ctx.root.sandbox(sandbox_id).path
    for entry in entries(ctx.root):
        if entry.state != "ready" or entry.fingerprint != want:
            continue
        assert entry.monitor is not None and entry.qemu is not None
        try:
            rename_noreplace(entry.dir.path, target)
        except FileNotFoundError:
            continue  # another create took it first
        except FileExistsError:
            return None
        return Claimed(entry.vm_id, entry.monitor, entry.qemu)
    return None


def adopt(ctx: Context, claimed: Claimed, state: SandboxState) -> bool:
    """Make the claimed VM the sandbox's (its monitor becomes the sandbox monitor) and
    record it; False if it failed, after killing it and clearing the directory of it."""
    from vmrt.monitor.spawn import read_ready
    from vmrt.network import netns
    from vmrt.runtime import sandbox as sandboxes
    from vmrt.util.sockets import connect_unix

    sbdir = ctx.root.sandbox(state.id)
    config_path = ctx.config_path or os.environ.get("VMRT_CONFIG") or ""
    try:
        with netns.opened(state.network) as netns_fd, \
                connect_unix(sbdir.monitor_sock, timeout=5.0) as sock:
            request = protocol.request(1, "adopt", sandbox_id=state.id, name=state.name,
                                       config_path=config_path)
            fds = [netns_fd] if netns_fd is not None else []
            sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                      _fd_array(fds))] if fds else [])
            ready = read_ready(sock.fileno(), ctx.config.request_timeout_s)
        if ready.get("monitor") != [claimed.monitor.pid, claimed.monitor.start_time] or \
                ready.get("qemu") != [claimed.qemu.pid, claimed.qemu.start_time]:
            raise SandboxError("the pool VM's monitor reported other processes than it owns")
        sandboxes.record_ready(ctx, state.id, ready)
    except (OSError, VmrtError) as exc:
        from vmrt import log

        log.get().warning(f"warm pool VM {claimed.vm_id} failed, booting cold: {exc}")
        _stop([claimed.monitor, claimed.qemu])
        for name in ("monitor.sock", "pool.json", "ready.json"):
            with contextlib.suppress(FileNotFoundError):
                (sbdir.path / name).unlink()
        return False
    for name in ("pool.json", "ready.json"):
        with contextlib.suppress(FileNotFoundError):
            (sbdir.path / name).unlink()
    return True


def _fd_array(fds: list[int]) -> bytes:
    import array

    return array.array("i", fds).tobytes()


# --- refill, fill, drain ---------------------------------------------------------------------


def _rmtree(path: Path, *, ignore_errors: bool = True) -> None:
    import shutil  # not at import: `create` with no pool never needs it

    shutil.rmtree(path, ignore_errors=ignore_errors)


@contextlib.contextmanager
def _locked(root: Root) -> Iterator[None]:
    root.ensure()
    root.pool.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(root.pool_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def refill(ctx: Context, *, requested_ns: int | None = None) -> list[str]:
    """Take out dead and stale VMs, spawn new ones up to `pool_size`; never waits for a
    boot. Returns the ids spawned. A refill asked for at `requested_ns` (a create's, run
    later) does nothing if the pool was drained since: a drain is not undone by a
    refill that was on its way."""
    size = ctx.config.pool_size
    if size <= 0 and not ctx.root.pool.is_dir():
        return []
    spawned = []
    with _locked(ctx.root):
        if requested_ns is not None and _drained_ns(ctx.root) >= requested_ns:
            return []
        want = fingerprint(ctx) if size > 0 else ""
        for name in _names(ctx.root):  # no pool.json: its spawner died before writing it
            if not name.startswith(".") and _entry(ctx.root.pool_vm(name)) is None:
                _take_out(ctx.root, name)
        live = 0
        for entry in entries(ctx.root):
            if entry.state == "dead" or entry.fingerprint != want or live >= size:
                _take_out(ctx.root, entry.vm_id)
            else:
                live += 1
        spawned = [_spawn(ctx) for _ in range(size - live)]
    _remove_gone(ctx.root)
    return spawned


def refill_in_background(ctx: Context) -> None:
    """`refill` for the create path, in a detached process (double fork, every fd closed:
    it holds none of the caller's pipes or locks), so that `create` neither waits for it
    nor fails with it. A pool that cannot be refilled fails no create; it logs why."""
    if ctx.config.pool_size <= 0 and not ctx.root.pool.is_dir():
        return
    requested_ns = time.time_ns()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.setsid()
            if os.fork() == 0:
                from vmrt.monitor.pooled import background

                background()  # the refill, and the pool VMs it starts, yield to everything
                close_fds_except(set())
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                try:
                    time.sleep(REFILL_DELAY_S)
                    refill(ctx, requested_ns=requested_ns)
                    code = 0
                except (OSError, VmrtError) as exc:
                    from vmrt import log

                    log.get().warning(f"cannot refill the warm pool: {exc}")
            else:
                code = 0
        finally:
            os._exit(code)
    os.waitpid(pid, 0)


def fill(ctx: Context, *, wait: bool) -> list[PoolEntry]:
    """Refill; with `wait`, return once every VM of the pool is ready."""
    refill(ctx)
    deadline = time.monotonic() + ctx.config.boot_timeout_s + 30
    while wait:
        found = entries(ctx.root)
        if any(e.state == "dead" for e in found):
            dead = [e.vm_id for e in found if e.state == "dead"]
            raise SandboxError(f"pool VM(s) {', '.join(dead)} died while booting: "
                               f"see {ctx.root.pool}/<vm>/monitor.log")
        if all(e.state == "ready" for e in found):
            break
        if time.monotonic() > deadline:
            raise SandboxError("the warm pool did not fill in time")
        # An admin's wait on boots it did not start (the spawns are detached): polled.
        time.sleep(0.05)
    return entries(ctx.root)


def drain(ctx: Context) -> int:
    """Stop every VM of the pool; how many there were."""
    if not ctx.root.pool.is_dir():
        return 0
    with _locked(ctx.root):
        (ctx.root.pool / DRAINED_NAME).write_text(str(time.time_ns()))
        names = [n for n in _names(ctx.root) if not n.startswith(".")]
        for name in names:
            _take_out(ctx.root, name)
    _remove_gone(ctx.root)
    return len(names)


def _drained_ns(root: Root) -> int:
    """When the pool was last drained (time.time_ns()), 0 if never."""
    try:
        return int((root.pool / DRAINED_NAME).read_text())
    except (OSError, ValueError):
        return 0


def _take_out(root: Root, vm_id: str) -> None:
    """Rename the entry away first, so that no claim can take what is about to be stopped."""
    with contextlib.suppress(FileNotFoundError):
        os.rename(root.pool / vm_id, root.pool / f".{vm_id}.gone")


def _remove_gone(root: Root) -> None:
    for name in _names(root):
        if name.startswith(".") and name.endswith(".gone"):
            gone = PoolVMDir(root.pool / name)
            entry = _entry(gone)
            if entry is not None:
                _stop([r for r in (entry.monitor, entry.qemu) if r is not None])
            _rmtree(gone.path, ignore_errors=True)


def _stop(refs: list[ProcessRef]) -> None:
    """SIGTERM (a pool VM's monitor then stops QEMU), SIGKILL after the grace."""
    from vmrt.util.proc import kill_quietly

    for ref in refs:
        if ref.alive():
            kill_quietly(ref.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while any(r.alive() for r in refs) and time.monotonic() < deadline:
        time.sleep(0.02)
    for ref in refs:
        if ref.alive():
            kill_quietly(ref.pid, signal.SIGKILL)


def _spawn(ctx: Context) -> str:
    """Start one pool VM's monitor, detached; write its pool.json; return its id."""
    from vmrt.util.mount import private_mount_namespace

    image, shape = _boot(ctx.config)
    vm_id = "pool-" + os.urandom(6).hex()
    vm = ctx.root.pool_vm(vm_id)
    vm.path.mkdir(mode=0o700)
    spec = {"root": str(ctx.root.path), "vm_id": vm_id, "kernel": image.kernel,
            "initrd": image.initrd, "kernel_cmdline": list(image.kernel_cmdline),
            "root_image": image.root_image, "accel": image.accel,
            "config_path": ctx.config_path}
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(rfd)
            os.setsid()
            child = os.fork()
            if child != 0:
                os.write(wfd, str(child).encode())
                os._exit(0)
            close_fds_except(set())
            os.chdir("/")  # a daemon must not pin the caller's working directory
            null = os.open(os.devnull, os.O_RDWR)
            log = os.open(vm.vm.monitor_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            for fd, source in ((0, null), (1, log), (2, log)):
                os.dup2(source, fd)
                os.set_inheritable(fd, True)  # dup2 onto itself would keep O_CLOEXEC
            private_mount_namespace()  # as a sandbox monitor's: it stages shares once claimed
            os.execv(sys.executable, [sys.executable, "-I", "-m", "vmrt.monitor.pooled",
                                      json.dumps(spec)])
        finally:
            os._exit(1)
    os.close(wfd)
    try:
        os.waitpid(pid, 0)
        with os.fdopen(rfd, "rb", closefd=False) as f:
            monitor = int(f.read() or b"0")
    finally:
        os.close(rfd)
    if monitor <= 0:
        _rmtree(vm.path, ignore_errors=True)
        raise SandboxError("cannot start a pool VM's monitor")
    write_json(vm.record, {"monitor": [monitor, start_time(monitor) or 0],
                           "fingerprint": shape, "created": time.time()})
    return vm_id

