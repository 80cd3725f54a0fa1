"""A container's status, derived from live processes rather than trusted from disk.

The state file says what the last verb did; whether the workload still
runs is the shim's liveness (pid + start time), exactly as runc checks its
init process. A dead shim reads `stopped` whatever the file says.
"""

from __future__ import annotations

from vmrt.errors import StateTransitionError
from vmrt.state.model import ContainerState, Status


def current(state: ContainerState) -> Status:
    if state.status is Status.CREATING:
        return Status.CREATING if state.creator and state.creator.alive() else Status.STOPPED
    if state.status in (Status.CREATED, Status.RUNNING, Status.PAUSED):
        return state.status if state.shim and state.shim.alive() else Status.STOPPED
    return Status.STOPPED


def require_startable(status: Status) -> None:
    if status is Status.CREATED:
        return
    if status is Status.STOPPED:
        raise StateTransitionError("cannot start a container that has stopped")
    if status is Status.RUNNING:
        raise StateTransitionError("cannot start an already running container")
    raise StateTransitionError(f"cannot start a container in the {status.value} state")
