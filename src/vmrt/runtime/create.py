"""`create`: the container exists in the guest, its program not yet run; the shim is its pid.

Every acquisition registers its undo where it is made (an ExitStack), so a
failure at any step leaves no VM, share, shim or state file behind; only a
successful create commits (pop_all) and writes the pid file, last, as runc does.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from vmrt import ids, network, oci
from vmrt.errors import InvalidArgumentError, SandboxError, VmrtError
from vmrt.runtime import guestspec, pods, sizing
from vmrt.runtime import sandbox as sandboxes
from vmrt.runtime.console import send_console
from vmrt.runtime.context import Context
from vmrt.state.model import ContainerState, ProcessRef, Status
from vmrt.state.store import atomic_write
from vmrt.util.proc import kill_quietly, start_time
from vmrt.util.record import record, replace


@record
class CreateOptions:
    id: str
    bundle: str
    pid_file: str | None = None
    console_socket: str | None = None
    no_pivot: bool = False
    no_new_keyring: bool = False


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())


def _me() -> ProcessRef:
    pid = os.getpid()
    return ProcessRef(pid, start_time(pid) or 0)


def create(ctx: Context, opts: CreateOptions) -> int:
    """Create the container; return the shim's pid."""
    ids.validate_id(opts.id)
    spec = oci.load(opts.bundle)
    if spec.terminal and not opts.console_socket:
        raise InvalidArgumentError(
            "cannot allocate tty if runc will detach without setting console socket")
    store = ctx.store
    store.reserve_container(opts.id)
    with contextlib.ExitStack() as undo:
        undo.callback(store.remove_container, opts.id)
        with store.lock_container(opts.id):
            state = ContainerState(
                id=opts.id, bundle=str(spec.bundle), sandbox="", role=spec.pod.role.value,
                status=Status.CREATING, created=_now(), annotations=dict(spec.annotations),
                creator=_me())
            store.save_container(state)
            sandbox_id = pods.join(ctx, spec, opts.id, undo)
            network.attach(ctx, sandbox_id)  # interfaces CNI made already (podman, CRI)
            sizing.fit(ctx, sandbox_id, opts.id, spec, undo)  # the VM grows to its limits
            state = replace(state, sandbox=sandbox_id)
            store.save_container(state)
            channel = _create_in_vm(ctx, sandbox_id, spec, opts, undo)
            shim_pid = _spawn_shim(ctx, sandbox_id, spec, opts, channel, undo)
            if opts.pid_file:
                atomic_write(Path(os.path.abspath(opts.pid_file)), str(shim_pid).encode(), 0o644)
            store.save_container(replace(
                state, status=Status.CREATED, channel=channel,
                shim=ProcessRef(shim_pid, start_time(shim_pid) or 0)))
        undo.pop_all()
    return shim_pid


def _create_in_vm(ctx: Context, sandbox_id: str, spec: oci.Spec, opts: CreateOptions,
                  undo: contextlib.ExitStack) -> int:
    """Share the rootfs into the VM and have the agent create the container; return its channel."""
    gspec = guestspec.build(spec, opts.id)
    monitor = ctx.store.load_sandbox(sandbox_id).monitor
    if monitor is not None:  # a member's mounts may not reach a running VM's monitor
        from vmrt.runtime.visible import require_visible

        require_visible(monitor.pid, [str(spec.rootfs), *(b.source for b in gspec.binds)])
    with sandboxes.monitor(ctx, sandbox_id) as mon:
        result = mon.call("create_container", id=opts.id, spec=gspec.spec,
                          rootfs=str(spec.rootfs), terminal=spec.terminal,
                          no_new_keyring=opts.no_new_keyring, pod_hostname=gspec.pod_hostname,
                          binds=[{"name": b.name, "source": b.source} for b in gspec.binds])
    undo.callback(_delete_in_vm, ctx, sandbox_id, opts.id)
    return int(result.get("channel", 0))


def _delete_in_vm(ctx: Context, sandbox_id: str, container_id: str) -> None:
    with contextlib.suppress(VmrtError, OSError), sandboxes.monitor(ctx, sandbox_id) as mon:
        mon.call("delete_container", id=container_id, force=True)


def _spawn_shim(ctx: Context, sandbox_id: str, spec: oci.Spec, opts: CreateOptions,
                channel: int, undo: contextlib.ExitStack) -> int:
    from vmrt.shim.main import ShimSpec, spawn

    tty_fd = None
    if spec.terminal:
        assert opts.console_socket is not None
        tty_fd = send_console(opts.console_socket)
    try:
        shim_pid = spawn(ShimSpec(opts.id, channel, ctx.root.sandbox(sandbox_id).monitor_sock,
                                  tty_fd, netns=network.shim_netns(ctx, sandbox_id)))
    except OSError as exc:
        raise SandboxError(f"cannot start the container's shim: {exc}") from exc
    finally:
        if tty_fd is not None:
            os.close(tty_fd)
    undo.callback(kill_quietly, shim_pid)
    return shim_pid
