"""`vmrt gc`: orphans after a crash, found in /proc and --root, listed, then removed.

Each test makes real debris the way it happens (state removed by hand, a SIGKILLed
monitor, every process of a VM killed as by a host crash, a QEMU and a virtiofsd left
by a vmrt that did not tie them to their monitor) and checks that `gc --dry-run`
lists exactly it, touches nothing, and that `gc` removes it and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from helpers.procs import pid_alive, wait_gone, wait_until
from helpers.runtime import Runtime

pytestmark = pytest.mark.vm

SLEEP = ["sleep", "1000"]


def _sandbox(rt: Runtime, sid: str) -> dict:
    return json.loads((rt.root / "sandboxes" / sid / "sandbox.json").read_text())


def _vm_pids(rt: Runtime, cid: str) -> list[int]:
    sb = _sandbox(rt, cid)
    pids = [sb["monitor"]["pid"], sb["qemu"]["pid"]]
    pids += [d["helper"]["pid"] for d in sb["devices"] if d.get("helper")]
    pids.append(rt.state(cid)["pid"])  # the shim
    return pids


def _gc(rt: Runtime, *flags: str) -> list[str]:
    res = rt.ok("gc", *flags)
    assert res.stderr == "", res
    return res.stdout.splitlines()


def _assert_root_empty(rt: Runtime) -> None:
    for sub in ("containers", "sandboxes"):
        d = rt.root / sub
        assert not d.is_dir() or not any(d.iterdir()), f"{d}: {list(d.iterdir())}"


def test_gc_state_removed_by_hand(runtime: Runtime, bundle, new_id) -> None:
    rt = runtime
    lost, kept = new_id(), new_id()
    rt.ok("run", "--detach", "--bundle", str(bundle(SLEEP)), lost)
    rt.ok("run", "--detach", "--bundle", str(bundle(SLEEP)), kept)
    lost_pids, kept_pids = _vm_pids(rt, lost), _vm_pids(rt, kept)
    shutil.rmtree(rt.root / "containers" / lost)
    shutil.rmtree(rt.root / "sandboxes" / lost)

    listed = _gc(rt, "--dry-run")
    kinds = sorted(line.split(" pid=")[0] for line in listed)
    assert kinds == ["process monitor", "process qemu", "process shim",
                     "process virtiofsd", "process virtiofsd"], listed
    assert all(kept not in line for line in listed), listed
    assert all(pid_alive(p) for p in lost_pids), "--dry-run killed something"

    assert sorted(_gc(rt)) == sorted(listed)
    assert wait_gone(lost_pids, 15) == [], "gc left the orphans running"
    assert all(pid_alive(p) for p in kept_pids), "gc touched a container in use"
    assert rt.state(kept)["status"] == "running"
    assert _gc(rt, "--dry-run") == []
    rt.ok("delete", "--force", kept)


def test_gc_dead_monitor_and_state_removed(runtime: Runtime, bundle, new_id) -> None:
    rt = runtime
    cid = new_id()
    rt.ok("run", "--detach", "--bundle", str(bundle(SLEEP)), cid)
    pids = _vm_pids(rt, cid)
    os.kill(pids[0], signal.SIGKILL)  # the monitor; QEMU, virtiofsd and the shim follow
    assert wait_gone(pids, 15) == [], "a VM outlived its monitor"
    shutil.rmtree(rt.root / "containers" / cid)

    listed = _gc(rt, "--dry-run")
    assert listed == [f"sandbox {cid}: no container refers to it"], listed
    assert (rt.root / "sandboxes" / cid).is_dir()
    assert _gc(rt) == listed
    _assert_root_empty(rt)
    assert _gc(rt, "--dry-run") == []


def test_gc_after_a_crash(runtime: Runtime, bundle, new_id) -> None:
    """Every process of the VM gone at once (a host crash or reboot): state remains."""
    rt = runtime
    cid = new_id()
    rt.ok("run", "--detach", "--bundle", str(bundle(SLEEP)), cid)
    pids = _vm_pids(rt, cid)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert wait_gone(pids, 15) == []
    assert rt.state(cid)["status"] == "stopped"

    listed = _gc(rt, "--dry-run")
    assert sorted(listed) == [f"container {cid}: stopped, and its VM is gone",
                              f"sandbox {cid}: no container refers to it"], listed
    assert rt.list_ids() == [cid]
    assert sorted(_gc(rt)) == sorted(listed)
    assert rt.list_ids() == []
    _assert_root_empty(rt)


def test_gc_kills_qemu_and_virtiofsd_without_a_monitor(runtime: Runtime, short_tmp: Path,
                                                        new_id) -> None:
    """What a vmrt that did not tie QEMU to its monitor left: real processes whose
    argv names a sandbox under --root, with no monitor above them."""
    rt = runtime
    ghost = rt.root / "sandboxes" / new_id()
    share = ghost / "shares" / "c1"
    share.mkdir(parents=True)
    qemu = subprocess.Popen(
        ["/usr/bin/qemu-system-x86_64", "-S", "-m", "16", "-nodefaults", "-display", "none",
         "-chardev", f"file,id=console,path={ghost}/console.log", "-serial", "chardev:console"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    vfsd = subprocess.Popen(
        ["/usr/lib/qemu/virtiofsd", f"--socket-path={short_tmp}/v.sock", "-o", f"source={share}",
         "--thread-pool-size=1"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        # Both up (QEMU opened its console log, virtiofsd listens) before the state goes.
        assert wait_until(lambda: (short_tmp / "v.sock").exists()
                          and (ghost / "console.log").exists(), 10)
        shutil.rmtree(ghost)  # and then its state went too
        listed = _gc(rt, "--dry-run")
        assert f"process qemu pid={qemu.pid} sandbox={ghost.name}: its sandbox is gone" in listed
        assert any(f"process virtiofsd pid={vfsd.pid} " in line for line in listed), listed
        assert qemu.poll() is None and vfsd.poll() is None
        _gc(rt)
        assert qemu.wait(timeout=10) == -signal.SIGKILL
        assert vfsd.wait(timeout=10) in (-signal.SIGKILL, -signal.SIGTERM, 0)
        assert _gc(rt, "--dry-run") == []
    finally:
        for p in (qemu, vfsd):
            if p.poll() is None:
                p.kill()
                p.wait()
