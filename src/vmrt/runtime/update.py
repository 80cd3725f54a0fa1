"""`update`: new cgroup limits for a container, applied in the guest; the VM grows to fit.

crun in the guest writes the container's cgroup (`crun update --resources`);
then the monitor resizes the VM for the container's new CPU and memory demand
(`vmrt.monitor.sizing`): a limit larger than the VM is backed by hot-plugged
vCPUs and RAM, within the configured bounds, and a lower one gives them back.
"""

from __future__ import annotations

from vmrt.errors import CONTAINER_NOT_RUNNING, StateTransitionError
from vmrt.runtime import sandbox as sandboxes
from vmrt.runtime import sizing
from vmrt.runtime.context import Context
from vmrt.runtime.resources import Resources
from vmrt.state import status
from vmrt.state.model import Status


def update(ctx: Context, container_id: str, resources: Resources) -> None:
    store = ctx.store
    with store.lock_container(container_id):
        state = store.load_container(container_id)
        if status.current(state) in (Status.STOPPED, Status.CREATING):
            raise StateTransitionError(CONTAINER_NOT_RUNNING)
        if resources.is_empty():
            return
        with sandboxes.monitor(ctx, state.sandbox) as mon:
            mon.call("update_container", id=container_id, resources=resources.to_oci())
        cpus, memory_mib = resources.demand()
        sizing.refit(ctx, state.sandbox, container_id, cpus, memory_mib)
