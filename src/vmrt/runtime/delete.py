"""`delete`: forget a stopped container, and its VM when it was the VM's last member.

With --force it stops a live one first; and it always finishes the job,
even when the monitor is dead: what cannot be asked to stop is killed by
pid and start time, and the state goes.
"""

from __future__ import annotations

import contextlib
import signal
import time

from vmrt.errors import MonitorError, NotFoundError, StateTransitionError, VmrtError
from vmrt.runtime import pods
from vmrt.runtime import sandbox as sandboxes
from vmrt.runtime.context import Context
from vmrt.state import status
from vmrt.state.model import ContainerState, Status
from vmrt.util.proc import kill_quietly

STOP_WAIT_S = 10.0


def delete(ctx: Context, container_id: str, *, force: bool = False) -> None:
    store = ctx.store
    try:
        with store.lock_container(container_id):
            _delete_locked(ctx, store.load_container(container_id), force)
    except NotFoundError:
        if not force:  # runc: `delete --force` of an unknown id is not an error
            raise


def _delete_locked(ctx: Context, state: ContainerState, force: bool) -> None:
    current = status.current(state)
    # runc deletes a created container without --force (its program never ran).
    if current not in (Status.STOPPED, Status.CREATED) and not force:
        raise StateTransitionError(
            f"cannot delete container {state.id} that is not stopped: {current.value}")
    owns_vm = state.sandbox == state.id or (not state.sandbox and _booting_own_vm(ctx, state))
    if owns_vm:
        _delete_members(ctx, state, force)
    if current is not Status.STOPPED:
        _stop(ctx, state)
    with contextlib.suppress(VmrtError, OSError), sandboxes.monitor(ctx, state.sandbox) as mon:
        mon.call("delete_container", id=state.id, force=True)
    if owns_vm:
        sandboxes.destroy(ctx, state.id)
    elif state.sandbox:
        pods.leave(ctx, state.sandbox, state.id)
    ctx.store.remove_container(state.id)


def _booting_own_vm(ctx: Context, state: ContainerState) -> bool:
    """A `create` that died while its VM booted had not recorded the sandbox yet; a VM of
    its own is named after it, and still runs (found by its argv) or left its directory."""
    try:
        return state.id in ctx.store.load_sandbox(state.id).members
    except NotFoundError:
        return ctx.root.sandbox(state.id).path.is_dir()
    except VmrtError:
        return False


def _delete_members(ctx: Context, state: ContainerState, force: bool) -> None:
    """The VM goes with its sandbox container: its other members must go first."""
    try:
        members = [m for m in ctx.store.load_sandbox(state.sandbox).members if m != state.id]
    except VmrtError:
        return
    live = [m for m in members if _is_live(ctx, m)]
    if live and not force:
        raise StateTransitionError(
            f"cannot delete sandbox {state.id} with running containers: {', '.join(live)}")
    for member in members:
        with contextlib.suppress(NotFoundError):
            delete(ctx, member, force=True)


def _is_live(ctx: Context, container_id: str) -> bool:
    try:
        return status.current(ctx.store.load_container(container_id)) is not Status.STOPPED
    except VmrtError:
        return False


def _stop(ctx: Context, state: ContainerState) -> None:
    wait = STOP_WAIT_S
    try:
        with sandboxes.monitor(ctx, state.sandbox) as mon:
            mon.call("kill_container", id=state.id, signal=int(signal.SIGKILL), all=True)
    except MonitorError as exc:
        if exc.kind == "unreachable":  # a dead VM has no process left to stop, and its
            wait = 1.0  # shim lost its monitor: it goes below, without a live one's grace
    except VmrtError:  # the sandbox's state is gone: no VM to ask
        wait = 1.0
    deadline = time.monotonic() + wait
    while state.shim and state.shim.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if state.shim and state.shim.alive():
        kill_quietly(state.shim.pid, signal.SIGKILL)
