"""`start`: run the program of a created container."""

from __future__ import annotations

from vmrt import network
from vmrt.runtime import sandbox as sandboxes
from vmrt.runtime.context import Context
from vmrt.state import status
from vmrt.state.model import Status
from vmrt.util.record import replace


def start(ctx: Context, container_id: str) -> None:
    store = ctx.store
    with store.lock_container(container_id):
        state = store.load_container(container_id)
        status.require_startable(status.current(state))
        # ocid runs CNI between create and start: carry what it made before the program runs.
        network.attach(ctx, state.sandbox)
        with sandboxes.monitor(ctx, state.sandbox) as mon:
            mon.call("start_container", id=container_id)
        store.save_container(replace(state, status=Status.RUNNING))
