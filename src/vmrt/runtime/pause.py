"""`pause`: freeze every process of the container in the guest (crun pause: cgroup v2 freezer).

As runc, a created container may be paused too (its init waits frozen), and
`state` then says `paused` for as long as the shim lives.
"""

from __future__ import annotations

from vmrt.errors import CONTAINER_NOT_RUNNING, StateTransitionError
from vmrt.runtime import sandbox as sandboxes
from vmrt.runtime.context import Context
from vmrt.state import status
from vmrt.state.model import Status
from vmrt.util.record import replace


def pause(ctx: Context, container_id: str) -> None:
    store = ctx.store
    with store.lock_container(container_id):
        state = store.load_container(container_id)
        if status.current(state) not in (Status.RUNNING, Status.CREATED):
            raise StateTransitionError(CONTAINER_NOT_RUNNING)
        with sandboxes.monitor(ctx, state.sandbox) as mon:
            mon.call("pause_container", id=container_id)
        store.save_container(replace(state, status=Status.PAUSED))
