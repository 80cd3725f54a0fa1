"""Which pod VM a container goes into, and when a pod VM goes away.

* A sandbox (infra) container, or a container with no pod annotations, gets a
  VM of its own, named after it; others may join it (podman's infra carries no
  annotation at all). That VM lives until that container is deleted.
* A member names its pod by id or name. A pod with no VM yet gets one booted
  by its first member (CRI-O's default `drop_infra_ctr = true` never creates an
  infra container): such a *lazy* VM goes away with its last member.
* A member naming a pod whose VM has died is refused: it would never run.

Two members of a new lazy pod may arrive at once: the sandbox directory is
claimed atomically (mkdir), the winner boots while holding the sandbox lock,
and the loser waits on that lock, then joins.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

from vmrt import ids, network
from vmrt.errors import NotFoundError, SandboxError
from vmrt.oci import Role, Spec
from vmrt.runtime import pool
from vmrt.runtime import sandbox as sandboxes
from vmrt.runtime.context import Context
from vmrt.state.model import NetworkRef, SandboxState
from vmrt.util.record import replace

JOIN_WAIT_S = 60.0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def find(ctx: Context, ref: str) -> str | None:
    """The id of the sandbox `ref` names, by id first, then by name."""
    store = ctx.store
    with contextlib.suppress(Exception):
        if store.root.sandbox(ref).path.is_dir():
            return ref
    for sid in store.sandbox_ids():
        with contextlib.suppress(Exception):
            if store.load_sandbox(sid).name == ref:
                return sid
    return None


def join(ctx: Context, spec: Spec, container_id: str, undo: contextlib.ExitStack) -> str:
    """Put the container's VM in place (booting one if needed); return the sandbox id.

    The container is recorded as a member; `undo` drops it again, and brings
    down a VM this call booted.
    """
    if spec.pod.role is Role.CONTAINER:
        assert spec.pod.sandbox is not None
        sandbox_id = find(ctx, spec.pod.sandbox)
        if sandbox_id is None:
            sandbox_id = ids.validate_id(spec.pod.sandbox)
            name = spec.pod.sandbox
            lazy = True
        else:
            return _join_running(ctx, sandbox_id, container_id, undo)
    else:
        sandbox_id, name, lazy = container_id, spec.pod.name or container_id, False
    try:
        _boot_new(ctx, sandbox_id, name, container_id, lazy, undo,
                  net=network.requested(spec.raw))
    except _Exists:
        if not lazy:
            raise SandboxError(f"sandbox {sandbox_id} already exists") from None
        return _join_running(ctx, sandbox_id, container_id, undo)
    return sandbox_id


class _Exists(Exception):
    pass


def _boot_new(ctx: Context, sandbox_id: str, name: str, container_id: str, lazy: bool,
              undo: contextlib.ExitStack, *, net: NetworkRef | None = None) -> None:
    store = ctx.store
    sdir = ctx.root.sandbox(sandbox_id).path
    ctx.root.ensure()
    warm = pool.claim(ctx, sandbox_id)  # a warm VM's directory renamed to sdir, or None
    if warm is None:
        try:
            sdir.mkdir(mode=0o700)
        except FileExistsError:
            raise _Exists() from None
    fd = os.open(sdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # joiners wait here until the VM is up or gone
        undo.callback(sandboxes.destroy, ctx, sandbox_id)
        store.save_sandbox(SandboxState(id=sandbox_id, name=name, created=_now(),
                                        members=(container_id,), lazy=lazy, network=net))
        if warm is None or not pool.adopt(ctx, warm, store.load_sandbox(sandbox_id)):
            sandboxes.boot(ctx, store.load_sandbox(sandbox_id))
    finally:
        os.close(fd)
    pool.refill_in_background(ctx)  # detached: this create waits for no boot


def _join_running(ctx: Context, sandbox_id: str, container_id: str,
                  undo: contextlib.ExitStack) -> str:
    store = ctx.store
    deadline = time.monotonic() + JOIN_WAIT_S
    while True:
        try:
            with store.lock_sandbox(sandbox_id):
                state = store.load_sandbox(sandbox_id)
                if state.monitor is not None and state.monitor.alive():
                    store.save_sandbox(replace(state, members=(*state.members, container_id)))
                    break
                if state.monitor is not None:
                    raise SandboxError(f"the VM of sandbox {state.name} is not running")
        except NotFoundError:
            pass  # its creator is still writing it, or gave up and removed it
        if time.monotonic() > deadline:
            raise SandboxError(f"sandbox {sandbox_id} did not come up")
        time.sleep(0.05)
    undo.callback(leave, ctx, sandbox_id, container_id)
    return sandbox_id


def leave(ctx: Context, sandbox_id: str, container_id: str) -> None:
    """Drop a member; a lazy pod's VM goes with its last member."""
    try:
        state = ctx.store.update_sandbox(sandbox_id, lambda s: replace(
            s, members=tuple(m for m in s.members if m != container_id)))
    except NotFoundError:
        return
    if state.lazy and not state.members:
        sandboxes.destroy(ctx, sandbox_id)
