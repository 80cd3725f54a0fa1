"""The warm pool (config `pool_size`): sandbox creates are served by booted VMs.

What is checked is identity, not speed: the sandbox's QEMU *is* the pool VM's
QEMU (same pid and start time), its monitor is the pool VM's monitor process
(same pid; procscan, and so gc, takes both for the sandbox's), the pool is refilled to
its size, and every VM — claimed, refilled, drained, failed — is gone at the end.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.procs import jit_rss
from helpers.runtime import Runtime

pytestmark = pytest.mark.vm

PAUSE = ["sleep", "100000"]


@pytest.fixture(autouse=True)
def _vmrt_only(runtime: Runtime) -> None:
    if not runtime.is_vmrt:
        pytest.skip("a warm pool of VMs is vmrt's")


class Pool:
    """The runtime with a config file of its own, and the pool drained at the end."""

    def __init__(self, rt: Runtime, config: Path) -> None:
        self.rt = rt
        self.config = config
        self.configure(pool_size=1)

    def configure(self, **values: Any) -> None:
        self.config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "VMRT_CONFIG": str(self.config)}

    def run(self, *args: str) -> Any:
        return self.rt.run(*args, env=self.env)

    def ok(self, *args: str) -> Any:
        return self.rt.run(*args, env=self.env).check()

    def ls(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = json.loads(self.ok("pool", "ls", "--format", "json").stdout)
        return entries

    def fill(self) -> list[dict[str, Any]]:
        self.ok("pool", "fill", "--wait")
        return self.ls()

    def sandbox(self, sid: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(
            (self.rt.root / "sandboxes" / sid / "sandbox.json").read_text())
        return data


@pytest.fixture
def pool(runtime: Runtime, short_tmp: Path) -> Iterator[Pool]:
    p = Pool(runtime, short_tmp / "config.toml")
    try:
        yield p
    finally:
        for cid in runtime.list_ids():
            p.run("delete", "--force", cid)
        p.run("pool", "drain")


def _alive(pid: int, start: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    fields = stat[stat.rfind(b")") + 2:].split()
    return fields[0] not in (b"Z", b"X") and int(fields[19]) == start


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _start_time(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return int(stat[stat.rfind(b")") + 2:].split()[19])


def test_a_create_is_served_by_the_pool_vm_and_the_pool_refills(
        pool: Pool, bundle: Callable[..., Path], new_id: Callable[[], str]) -> None:
    [warm] = pool.fill()
    assert warm["state"] == "ready"
    qemu, monitor = warm["qemu"], warm["monitor"]
    qemu_start = _start_time(qemu)
    assert "vmrt.monitor.pooled" in _cmdline(monitor)

    cid = new_id()
    pool.ok("run", "--detach", "--bundle", str(bundle(PAUSE)), cid)
    sb = pool.sandbox(cid)
    assert sb["qemu"] == {"pid": qemu, "start_time": qemu_start}, "not the pool VM's QEMU"
    assert sb["monitor"]["pid"] == monitor
    # The same process is now the sandbox's monitor, and gc's procscan knows it (and its
    # QEMU) as the sandbox's, though their argv still name the pool VM.
    from vmrt.runtime import procscan

    found = {(p.kind, p.pid) for p in procscan.of_sandbox(pool.rt.root, cid)}
    assert {("monitor", monitor), ("qemu", qemu)} <= found
    assert not (pool.rt.root / "sandboxes" / cid / "pool.json").exists()
    # The adopted VM works: the container runs, exec reaches it, its hostname is the pod's.
    assert pool.ok("exec", cid, "echo", "from-the-pool").stdout.strip() == "from-the-pool"

    [refill] = pool.fill()  # the create started a refill; wait for it to be ready
    assert refill["qemu"] != qemu and refill["id"] != warm["id"]

    pool.ok("delete", "--force", cid)
    assert not _alive(qemu, qemu_start), "the claimed VM outlived its sandbox"
    assert [e["state"] for e in pool.ls()] == ["ready"], "delete must leave the pool at its size"

    pool.ok("pool", "drain")
    assert pool.ls() == []
    assert not _alive(refill["qemu"], _start_time_or(refill["qemu"]))
    assert [p.name for p in (pool.rt.root / "pool").iterdir()
            if p.name not in (".lock", ".drained")] == []


def _start_time_or(pid: int) -> int:
    try:
        return _start_time(pid)
    except OSError:
        return -1


def test_two_creates_race_for_one_pool_vm(pool: Pool, bundle: Callable[..., Path],
                                          new_id: Callable[[], str]) -> None:
    [warm] = pool.fill()
    ids = [new_id(), new_id()]
    b = bundle(PAUSE)
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        results = list(ex.map(lambda c: pool.run("run", "--detach", "--bundle", str(b), c), ids))
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    qemus = [pool.sandbox(c)["qemu"]["pid"] for c in ids]
    assert qemus.count(warm["qemu"]) == 1, "exactly one create gets the pool VM"
    assert len(set(qemus)) == 2


def test_a_pool_vm_that_cannot_be_adopted_costs_a_cold_boot_not_a_create(
        pool: Pool, bundle: Callable[..., Path], new_id: Callable[[], str]) -> None:
    pool.configure(pool_size=1, request_timeout_s=3.0)
    [warm] = pool.fill()
    os.kill(warm["monitor"], signal.SIGSTOP)  # it will never answer the claim
    qemu_start = _start_time(warm["qemu"])
    cid = new_id()
    res = pool.ok("run", "--detach", "--bundle", str(bundle(PAUSE)), cid)
    assert pool.sandbox(cid)["qemu"]["pid"] != warm["qemu"]
    assert "booting cold" in res.log_raw
    deadline = time.monotonic() + 10
    while _alive(warm["qemu"], qemu_start) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(warm["qemu"], qemu_start), "the failed pool VM was not stopped"
    assert pool.ok("exec", cid, "true").returncode == 0


def test_shrinking_the_pool_stops_the_extra_vms(pool: Pool) -> None:
    [warm] = pool.fill()
    qemu_start = _start_time(warm["qemu"])
    pool.configure(pool_size=0)
    pool.ok("pool", "fill")
    assert pool.ls() == []
    assert not _alive(warm["qemu"], qemu_start)


def test_a_waiting_pool_vm_holds_only_its_live_translations(pool: Pool) -> None:
    """A boot fills TCG's 64 MiB translation cache and flushes it; a pool VM gives the
    dead part back before it reports ready, as a sandbox's monitor does (test_jit_trim)."""
    pool.configure(pool_size=1, tb_size_mib=64)
    [warm] = pool.fill()
    if "-accel tcg," not in _cmdline(warm["qemu"]):
        pytest.skip("no translation cache under KVM")
    assert jit_rss(warm["qemu"]) <= 48 << 20, "the waiting pool VM kept its dead translations"


def test_pool_vms_are_no_sandboxes_to_procscan(pool: Pool) -> None:
    """gc finds vmrt's processes through procscan: a pool VM must not look like a monitor
    or QEMU whose sandbox is gone (it would be killed as an orphan)."""
    from vmrt.runtime import procscan

    [warm] = pool.fill()
    found = {p.pid for p in procscan.scan(pool.rt.root)}
    assert warm["monitor"] not in found and warm["qemu"] not in found
