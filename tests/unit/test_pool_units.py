"""The warm pool's parts that need no VM: the claim's rename, entry states, the
fingerprint that keeps stale VMs out, and the take-out rule of a refill."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from vmrt import protocol
from vmrt.config import Config
from vmrt.monitor import vmspec
from vmrt.monitor.adopt import Adoption
from vmrt.paths import Root
from vmrt.runtime import pool
from vmrt.runtime.context import Context
from vmrt.util.proc import start_time
from vmrt.util.record import replace
from vmrt.util.rename import rename_noreplace
from vmrt.vm import cmdline


def test_rename_noreplace_takes_source_and_target_at_once(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()  # empty: plain rename(2) would silently replace it
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "a", tmp_path / "b")
    rename_noreplace(tmp_path / "a", tmp_path / "c")
    with pytest.raises(FileNotFoundError):
        rename_noreplace(tmp_path / "a", tmp_path / "d")
    assert (tmp_path / "c").is_dir() and not (tmp_path / "a").exists()


SHAPE = {"kernel": "/k", "initrd": "/i", "kernel_cmdline": ("console=ttyS0",), "root_image": "/r",
         "accel": "tcg"}


def test_fingerprint_follows_what_shapes_the_vm() -> None:
    base = vmspec.fingerprint(Config(), **SHAPE)  # type: ignore[arg-type]
    assert vmspec.fingerprint(Config(), **SHAPE) == base  # type: ignore[arg-type]
    for change in ({"tb_size_mib": 32}, {"memory_mib": 1024}, {"firmware": ""},
                   {"max_vcpus": 3}, {"hotplug_slots": 4}):
        assert vmspec.fingerprint(replace(Config(), **change), **SHAPE) != base  # type: ignore
    assert vmspec.fingerprint(Config(), **{**SHAPE, "accel": "kvm"}) != base  # type: ignore
    # What a VM does not boot with (timeouts, the pool's own size) does not matter.
    assert vmspec.fingerprint(replace(Config(), pool_size=5, request_timeout_s=1.0),
                              **SHAPE) == base  # type: ignore[arg-type]


def test_firmware_is_passed_as_bios() -> None:
    vm = vmspec.pod_vm(Config(), name="x", nonce="00", qmp_fd=3, agent_fd=4,
                       console_log="/c.log", max_vcpus=1, max_memory_mib=512,
                       **SHAPE)  # type: ignore[arg-type]
    argv = cmdline.build(vm)
    assert argv[argv.index("-bios") + 1] == Config().firmware
    assert "-bios" not in cmdline.build(replace(vm, firmware=""))


def test_adoption_record_round_trips_and_is_checked() -> None:
    a = Adoption(qemu_pid=10, qmp_fd=3, agent_fd=4, listen_fd=5)
    assert Adoption.from_json(json.loads(json.dumps(a.to_json()))) == a
    with pytest.raises(protocol.ProtocolError):
        Adoption.from_json({**a.to_json(), "qmp_fd": "3"})


# --- entries, claim, take-out ---------------------------------------------------------------


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Context:
    monkeypatch.setattr(pool, "_boot", lambda cfg: (None, "fp-current"))
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text("pool_size = 1\n")
    context = Context(Root.at(str(tmp_path / "root")), str(cfg_file))
    context.root.ensure()
    context.root.pool.mkdir()
    return context


def _entry(ctx: Context, vm_id: str, *, alive: bool = True, ready: bool = True,
           fingerprint: str = "fp-current") -> Path:
    vm = ctx.root.pool_vm(vm_id)
    vm.path.mkdir()
    me = os.getpid()
    ref = [me, start_time(me)] if alive else [me, 1]
    vm.record.write_text(json.dumps({"monitor": ref, "fingerprint": fingerprint}))
    if ready:
        vm.ready.write_text(json.dumps({"qemu": ref, "monitor": ref}))
    (vm.path / "monitor.log").write_text("booted\n")
    return vm.path


def test_entry_states(ctx: Context) -> None:
    _entry(ctx, "pool-ready")
    _entry(ctx, "pool-booting", ready=False)
    _entry(ctx, "pool-dead", alive=False)
    (ctx.root.pool / "pool-nofile").mkdir()  # its spawner died before writing pool.json
    states = {e.vm_id: e.state for e in pool.entries(ctx.root)}
    assert states == {"pool-ready": "ready", "pool-booting": "booting", "pool-dead": "dead"}


def test_claim_renames_a_ready_current_vm_into_the_sandbox(ctx: Context) -> None:
    _entry(ctx, "pool-stale", fingerprint="fp-old")
    _entry(ctx, "pool-booting", ready=False)
    _entry(ctx, "pool-good")
    claimed = pool.claim(ctx, "sb1")
    assert claimed is not None and claimed.vm_id == "pool-good"
    sbdir = ctx.root.sandbox("sb1").path
    assert (sbdir / "monitor.log").read_text() == "booted\n"  # the VM's files moved with it
    assert not (ctx.root.pool / "pool-good").exists()
    assert pool.claim(ctx, "sb2") is None  # nothing ready and current is left


def test_claim_leaves_an_existing_sandbox_to_the_callers_mkdir(ctx: Context) -> None:
    _entry(ctx, "pool-good")
    ctx.root.sandbox("taken").path.mkdir()
    assert pool.claim(ctx, "taken") is None
    assert (ctx.root.pool / "pool-good").is_dir(), "a failed claim must not lose the VM"


def test_no_claim_when_the_pool_is_off(ctx: Context, tmp_path: Path) -> None:
    _entry(ctx, "pool-good")
    off = tmp_path / "off.toml"
    off.write_text("pool_size = 0\n")
    assert pool.claim(Context(ctx.root, str(off)), "sb") is None


def test_refill_takes_out_dead_stale_and_extra_vms_first(
        ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    _entry(ctx, "pool-a")
    _entry(ctx, "pool-b")  # one too many for pool_size = 1
    _entry(ctx, "pool-dead", alive=False)
    _entry(ctx, "pool-stale", fingerprint="fp-old")
    (ctx.root.pool / "pool-nofile").mkdir()
    stopped: list[object] = []
    monkeypatch.setattr(pool, "_stop", stopped.append)  # the refs are this test's own pid
    assert pool.refill(ctx) == []  # one live VM: nothing to spawn
    assert len(stopped) == 3  # the one without pool.json names no process
    assert [e.vm_id for e in pool.entries(ctx.root)] == ["pool-a"]
    assert sorted(p.name for p in ctx.root.pool.iterdir()) == [".lock", "pool-a"]


def test_a_drain_cancels_the_refills_asked_for_before_it(
        ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """A create's refill runs a second later (REFILL_DELAY_S): one that was on its way
    when the pool was drained must not bring the pool back; one asked for after the
    drain refills."""
    spawned: list[str] = []
    monkeypatch.setattr(pool, "_spawn", lambda _ctx: spawned.append("vm") or "vm")
    asked = time.time_ns()
    assert pool.drain(ctx) == 0
    assert pool.refill(ctx, requested_ns=asked) == [] and spawned == []
    assert pool.refill(ctx, requested_ns=time.time_ns()) == ["vm"]
