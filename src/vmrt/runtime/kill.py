"""`kill`: deliver a signal to the container's process in the guest."""

from __future__ import annotations

import signal as signals

from vmrt.errors import CONTAINER_NOT_RUNNING, InvalidArgumentError, StateTransitionError
from vmrt.runtime import sandbox as sandboxes
from vmrt.runtime.context import Context
from vmrt.state import status
from vmrt.state.model import Status


def parse_signal(text: str) -> int:
    """runc's rule: a number, or a name with or without SIG, any case."""
    if text.isdigit():
        num = int(text)
        if 0 <= num < 65:
            return num
        raise InvalidArgumentError("unable to signal init: invalid argument")
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signals.Signals[name])
    except KeyError:
        raise InvalidArgumentError(f'unknown signal "{text}"') from None


def kill(ctx: Context, container_id: str, sig: int, *, all_processes: bool = False) -> None:
    state = ctx.store.load_container(container_id)
    if status.current(state) in (Status.STOPPED, Status.CREATING):
        raise StateTransitionError(CONTAINER_NOT_RUNNING)
    with sandboxes.monitor(ctx, state.sandbox) as mon:
        mon.call("kill_container", id=container_id, signal=sig, all=all_processes)
