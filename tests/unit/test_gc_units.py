"""`gc`'s rules on a real --root and real processes (no VM): what is an orphan, what is
in use, and how vmrt's processes are recognised from their argv."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmrt.paths import Root
from vmrt.runtime import gc, procscan
from vmrt.runtime.context import Context
from vmrt.state.model import ContainerState, ProcessRef, SandboxState, Status
from vmrt.util.proc import start_time

DEAD = ProcessRef(2**22 + 1, 1)  # beyond pid_max: never alive


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    root = Root(tmp_path / "root")
    root.ensure()
    return Context(root, config_path=str(tmp_path / "none.toml"))


@pytest.fixture
def live() -> Iterator[ProcessRef]:
    """A live process, to stand for a shim or a monitor."""
    proc = subprocess.Popen(["sleep", "60"])
    yield ProcessRef(proc.pid, start_time(proc.pid) or 0)
    proc.kill()
    proc.wait()


def _container(ctx: Context, cid: str, shim: ProcessRef | None, sandbox: str = "") -> None:
    ctx.store.reserve_container(cid)
    ctx.store.save_container(ContainerState(
        id=cid, bundle="/b", sandbox=sandbox or cid, role="standalone", status=Status.RUNNING,
        created="now", shim=shim))


def _sandbox(ctx: Context, sid: str, monitor: ProcessRef | None, members: tuple[str, ...]) -> None:
    ctx.store.create_sandbox_dir(sid)
    ctx.store.save_sandbox(SandboxState(id=sid, name=sid, created="now", monitor=monitor,
                                        members=members))


def _listed(ctx: Context) -> list[str]:
    return sorted(f"{o.kind} {o.name}" for o in gc.find(ctx))


def _stateless(path: Path) -> Path:
    """A directory without state, older than gc's grace for one being made."""
    path.mkdir()
    old = time.time() - gc.STATELESS_GRACE_S - 1
    os.utime(path, (old, old))
    return path


def _hold(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_empty_root_has_no_orphans(ctx: Context) -> None:
    assert gc.collect(ctx) == []


def test_container_dir_without_state(ctx: Context) -> None:
    (ctx.root.containers / "new").mkdir()  # just claimed: its create may not hold it yet
    _stateless(ctx.root.containers / "half")
    assert _listed(ctx) == ["container half"]
    gc.collect(ctx)
    assert not (ctx.root.containers / "half").exists()


def test_a_verb_at_work_is_left_alone(ctx: Context) -> None:
    """A create holds its container's lock from the claim to the pid file; meanwhile a
    sandbox without a VM yet may be its own, so that is left alone as well."""
    _stateless(ctx.root.containers / "half")
    _sandbox(ctx, "booting", None, ())
    fd = _hold(ctx.root.containers / "half")
    try:
        assert _listed(ctx) == []
    finally:
        os.close(fd)
    assert _listed(ctx) == ["container half", "sandbox booting"]


def test_locked_sandbox_is_left_alone(ctx: Context) -> None:
    _sandbox(ctx, "sb", None, ())
    fd = _hold(ctx.root.sandboxes / "sb")
    try:
        assert _listed(ctx) == []
    finally:
        os.close(fd)


def test_stopped_container_with_dead_vm(ctx: Context) -> None:
    _container(ctx, "c", DEAD)
    _sandbox(ctx, "c", DEAD, ("c",))
    assert _listed(ctx) == ["container c", "sandbox c"]
    gc.collect(ctx)
    assert ctx.store.container_ids() == [] and ctx.store.sandbox_ids() == []


def test_stopped_container_with_live_vm_is_kept(ctx: Context, live: ProcessRef) -> None:
    """A container that exited normally keeps its VM until `delete`: not debris."""
    _container(ctx, "c", DEAD)
    _sandbox(ctx, "c", live, ("c",))
    assert _listed(ctx) == []


def test_running_container_is_kept(ctx: Context, live: ProcessRef) -> None:
    _container(ctx, "c", live)
    _sandbox(ctx, "c", DEAD, ("c",))
    assert _listed(ctx) == []


def test_share_of_no_container(ctx: Context, live: ProcessRef) -> None:
    _container(ctx, "c", live)
    _sandbox(ctx, "c", live, ("c",))
    share = ctx.root.sandbox("c").share("gone")
    (share / "rootfs").mkdir(parents=True)
    assert _listed(ctx) == ["share c/gone"]
    gc.collect(ctx)
    assert not share.exists()
    assert ctx.store.container_ids() == ["c"]


def test_dry_run_removes_nothing(ctx: Context) -> None:
    _stateless(ctx.root.containers / "half")
    assert [o.name for o in gc.collect(ctx, dry_run=True)] == ["half"]
    assert (ctx.root.containers / "half").exists()


def test_hook_finders_run(ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    removed: list[str] = []
    orphan = gc.Orphan("tap", "vmrt0", "no VM", lambda: removed.append("vmrt0"))
    monkeypatch.setattr(gc, "FINDERS", [lambda c, v: [orphan]])
    assert gc.collect(ctx) == [orphan]
    assert removed == ["vmrt0"]


# --- recognising vmrt's processes ---------------------------------------------------


def test_qemu_console_path_with_commas() -> None:
    arg = "file,id=console,path=/tmp/a,,b/sandboxes/sb1/console.log"
    assert procscan._qemu(["qemu-system-x86_64", "-chardev", arg]) == (Path("/tmp/a,b"), "sb1")


def test_virtiofsd_source_escapes() -> None:
    from vmrt.monitor.shares import fuse_opt

    src = "/tmp/x,y\\z/sandboxes/sb2/shares/c"
    argv = ["virtiofsd", "-o", f"source={fuse_opt(src)}"]
    assert procscan._virtiofsd(argv) == (Path("/tmp/x,y\\z"), "sb2")


def test_monitor_argv() -> None:
    argv = ["python3", "-I", "-m", "vmrt.monitor", '{"root": "/r", "sandbox_id": "s"}']
    assert procscan._monitor(argv) == (Path("/r"), "s")
    assert procscan._monitor(["python3", "-m", "vmrt.monitor", "not json"]) is None


def test_a_real_process_is_classified(tmp_path: Path) -> None:
    """A process named like a shim, with a relative --root, is found under that root."""
    script = "open('/proc/self/comm','w').write('vmrt-shim'); import time; time.sleep(60)"
    proc = subprocess.Popen(["python3", "-c", script, "--root", "rel"], cwd=tmp_path)
    try:
        def found() -> list[procscan.VmrtProcess]:
            return [p for p in procscan.scan(tmp_path / "rel") if p.pid == proc.pid]

        deadline = time.monotonic() + 10
        while not found() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [p.kind for p in found()] == ["shim"]
    finally:
        proc.kill()
        proc.wait()


def test_a_pool_vms_monitor_belongs_to_the_sandbox_its_directory_was_renamed_to(
        tmp_path: Path) -> None:
    """A claimed pool VM's monitor keeps its argv (no sandbox in it): its log, open on fd 2,
    says which sandbox it serves — after the claim's rename, and after the directory is
    removed under it (gc must still see whose it was)."""
    vm_dir = tmp_path / "pool" / "pool-1"
    vm_dir.mkdir(parents=True)
    (tmp_path / "sandboxes").mkdir()
    spec = json.dumps({"root": str(tmp_path), "vm_id": "pool-1"})
    with open(vm_dir / "monitor.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                 "-m", "vmrt.monitor.pooled", spec], stderr=log)
    try:
        def owner() -> list[tuple[str, str]]:
            return [(p.kind, p.sandbox) for p in procscan.scan(tmp_path) if p.pid == proc.pid]

        deadline = time.monotonic() + 10
        while not Path(f"/proc/{proc.pid}/cmdline").read_bytes().count(b"pooled") and \
                time.monotonic() < deadline:
            time.sleep(0.02)  # until the exec shows
        assert owner() == [], "an unclaimed pool VM is no sandbox's"
        vm_dir.rename(tmp_path / "sandboxes" / "sb1")
        assert owner() == [("monitor", "sb1")]
        shutil.rmtree(tmp_path / "sandboxes" / "sb1")
        assert owner() == [("monitor", "sb1")]
    finally:
        proc.kill()
        proc.wait()
