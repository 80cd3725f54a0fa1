"""Pod VMs: boot one through a new monitor, and bring one down whatever state it is in."""

from __future__ import annotations

import contextlib
import signal
import time
from typing import TYPE_CHECKING, Any

from vmrt.errors import MonitorError, NotFoundError, VmrtError
from vmrt.monitor.client import MonitorClient
from vmrt.network import cleanup as cleanup_network
from vmrt.network import netns
from vmrt.runtime import procscan
from vmrt.runtime.context import Context
from vmrt.state.model import ProcessRef, SandboxState
from vmrt.util.proc import kill_quietly
from vmrt.util.record import record, replace

if TYPE_CHECKING:  # `start` and `kill` read no configuration
    from vmrt.config import Config

SHUTDOWN_GRACE_S = 5.0


@record
class BootImage:
    """What a pod VM boots, resolved once by the CLI (the monitor is only given values)."""

    kernel: str
    initrd: str
    kernel_cmdline: tuple[str, ...]
    root_image: str
    accel: str


def boot_image(cfg: Config) -> BootImage:
    """The image, accelerator and kernel command line every pod VM boots with (warm pool
    VMs too: `runtime/pool.py`)."""
    from vmrt.image import ensure_image
    from vmrt.vm.accel import probe

    image = ensure_image(cfg)
    accel = probe(cfg.accel).accel
    cmdline = image.cmdline
    if accel == "tcg":
        from vmrt.image import kernel

        if not cfg.guest_tickless:
            cmdline = (*cmdline, *kernel.KERNEL_CMDLINE_TCG)
        if not cfg.guest_aslr:
            cmdline = (*cmdline, *kernel.KERNEL_CMDLINE_TCG_FIXED_MAPS)
    return BootImage(image.kernel, image.initrd, cmdline, image.root_image, accel)


def boot(ctx: Context, state: SandboxState) -> None:
    """Spawn the sandbox's monitor and return once the guest agent said hello."""
    from vmrt.monitor import spawn

    cfg = ctx.config
    image = boot_image(cfg)
    with netns.opened(state.network) as netns_fd:  # the monitor and QEMU live in the pod's
        ready = spawn.spawn(ctx.root, state.id, name=state.name, kernel=image.kernel,
                            initrd=image.initrd, kernel_cmdline=image.kernel_cmdline,
                            root_image=image.root_image, accel=image.accel,
                            config_path=ctx.config_path,
                            timeout=cfg.boot_timeout_s + 15, netns_fd=netns_fd)
    record_ready(ctx, state.id, ready)


def record_ready(ctx: Context, sandbox_id: str, ready: dict[str, Any]) -> None:
    """Write down what a monitor's "ready" line reports: its pid and QEMU's, the VM's size."""
    ctx.store.save_sandbox(replace(
        ctx.store.load_sandbox(sandbox_id),
        monitor=ProcessRef(*ready["monitor"]), qemu=ProcessRef(*ready["qemu"]),
        accel=str(ready["accel"]), vcpus=int(ready["vcpus"]), memory_mib=int(ready["memory_mib"])))


def monitor(ctx: Context, sandbox_id: str, *, timeout: float = 60.0) -> MonitorClient:
    sb = ctx.store.load_sandbox(sandbox_id)
    if sb.monitor is None or not sb.monitor.alive():
        raise MonitorError(f"the VM of sandbox {sandbox_id} is not running", "unreachable")
    return MonitorClient(ctx.root.sandbox(sandbox_id).monitor_sock, timeout=timeout)


def _wait_gone(refs: list[ProcessRef], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(r.alive() for r in refs):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _kill(refs: list[ProcessRef]) -> None:
    for ref in refs:
        if ref.alive():
            kill_quietly(ref.pid, signal.SIGKILL)
    _wait_gone(refs, 2.0)


def destroy(ctx: Context, sandbox_id: str) -> None:
    """Stop the VM and everything it owns, then forget it; works with the monitor dead.

    The monitor is asked first (it unplugs cleanly and quits QEMU); whatever is
    still alive after the grace period — or when the monitor cannot be reached —
    is killed by pid *and* start time from the sandbox state, and so is every
    process that names the sandbox in its argv, or (a claimed pool VM's) in the
    paths of the logs it holds open (runtime/procscan.py): the monitor and QEMU of
    a `create` killed mid-boot, or of a sandbox whose state is gone.
    """
    found = [p.ref for p in procscan.of_sandbox(ctx.root.path, sandbox_id)]
    try:
        state = ctx.store.load_sandbox(sandbox_id)
    except NotFoundError:
        _kill(found)
        ctx.store.remove_sandbox(sandbox_id)
        return
    except VmrtError:
        _kill(found)
        ctx.store.remove_sandbox(sandbox_id)
        raise
    refs = [r for r in (state.monitor, state.qemu) if r is not None]
    refs += [d.helper for d in state.devices if d.helper is not None]
    refs += [r for r in found if r not in refs]
    asked = False
    with contextlib.suppress(VmrtError, OSError), monitor(ctx, sandbox_id, timeout=5) as mon:
        mon.call("shutdown")  # answered at once by a live monitor; a hung one is killed
        asked = True
    # A monitor that could not be asked cannot stop anything: no grace to wait out.
    if not (asked and _wait_gone(refs, SHUTDOWN_GRACE_S)):
        _kill(refs)
    cleanup_network(ctx, sandbox_id)  # what a dead monitor left on CNI's interfaces
    ctx.store.remove_sandbox(sandbox_id)
