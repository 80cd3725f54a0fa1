"""The CLI's hooks: carry new interfaces into the VM, and undo what a dead monitor left.

`create` (when the namespace already holds interfaces: podman, containerd's
CRI) and `start` (ocid runs CNI between the two) call `attach`. It asks the
monitor only when the namespace has an interface the VM does not carry yet,
and finds that out from /proc, so a `start` without CNI costs a file read.
"""

from __future__ import annotations

from vmrt.network import netns
from vmrt.runtime.context import Context


def attach(ctx: Context, sandbox_id: str) -> None:
    """Carry every interface of the pod's namespace that the VM does not carry yet."""
    from vmrt.runtime import sandbox as sandboxes

    state = ctx.store.load_sandbox(sandbox_id)
    net = state.network
    if net is None or net.mode == netns.HOST or state.monitor is None:
        return
    if not netns.uncarried(net, state.monitor.pid):
        return
    with sandboxes.monitor(ctx, sandbox_id) as mon:
        mon.call("attach_network")


def shim_netns(ctx: Context, sandbox_id: str) -> str | None:
    """Where a shim of this pod must live: in the pod's namespace, as runc's process would.

    ocid reads `/proc/<pid from --pid-file>/ns/net` to run CNI, so the shim's
    namespace *is* the pod's; it is the monitor's, which lives there.
    """
    state = ctx.store.load_sandbox(sandbox_id)
    if state.network is None or state.network.mode == netns.HOST or state.monitor is None:
        return None
    return netns.of_process(state.monitor.pid)


def cleanup(ctx: Context, sandbox_id: str) -> None:
    """After the VM is gone: drop tc redirects a dead monitor left on CNI's interfaces.

    Only a joined namespace needs it: one vmrt made died with its last process,
    and the taps died with QEMU's fds. pyroute2 enters the namespace by path.
    """
    from vmrt.errors import VmrtError

    try:
        net = ctx.store.load_sandbox(sandbox_id).network
    except VmrtError:
        return
    if net is None or net.mode != netns.JOINED or not net.links:
        return
    _remove_redirects(net.path, net.links)


def _remove_redirects(path: str, links: tuple[str, ...]) -> None:
    """In a thread of its own that enters the namespace (setns is per thread): the
    path is opened without O_CREAT, so a namespace already gone is not made anew."""
    import contextlib
    import os
    import threading

    def run(fd: int) -> None:
        from vmrt.network import tap

        with contextlib.suppress(Exception):
            netns.setns(fd)
            for name in links:
                tap.remove_redirect(name)

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # the namespace went, and its interfaces with it
    try:
        worker = threading.Thread(target=run, args=(fd,), name="netns-cleanup")
        worker.start()
        worker.join(30)
    finally:
        os.close(fd)
