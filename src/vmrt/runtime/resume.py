"""`resume`: thaw a paused container.

It goes back to what it was before `pause`: `running`, or `created` if it had
not been started, which crun's state in the guest tells (runc derives it the
same way, from its init process).
"""

from __future__ import annotations

from vmrt.errors import CONTAINER_NOT_PAUSED, StateTransitionError
from vmrt.runtime import sandbox as sandboxes
from vmrt.runtime.context import Context
from vmrt.state import status
from vmrt.state.model import Status
from vmrt.util.record import replace


def resume(ctx: Context, container_id: str) -> None:
    store = ctx.store
    with store.lock_container(container_id):
        state = store.load_container(container_id)
        if status.current(state) is not Status.PAUSED:
            raise StateTransitionError(CONTAINER_NOT_PAUSED)
        with sandboxes.monitor(ctx, state.sandbox) as mon:
            mon.call("resume_container", id=container_id)
            guest = mon.call("state_container", id=container_id).get("status")
        now = Status.CREATED if guest == Status.CREATED.value else Status.RUNNING
        store.save_container(replace(state, status=now))
