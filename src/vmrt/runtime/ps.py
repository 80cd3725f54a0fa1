"""`ps`: the container's processes, which live in the guest.

runc lists the host pids of the container's cgroup (`--format json`), or runs
the host's `ps` (default options `-ef`) and keeps the lines whose PID column
is one of them. vmrt does the same in the guest: the pids are **guest pids**,
read from the container's cgroup (`/sys/fs/cgroup/vmrt/<id>/cgroup.procs` and
its sub-cgroups), and the table is the guest's `ps` (busybox) filtered to
them. No host process corresponds to them; the shim's pid is the one `state`
reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmrt.errors import VmrtError
from vmrt.runtime import sandbox as sandboxes
from vmrt.runtime.context import Context
from vmrt.state import status
from vmrt.state.model import Status

DEFAULT_PS_ARGS = ("-ef",)


@dataclass(frozen=True)
class Processes:
    pids: tuple[int, ...]
    table: str | None  # the guest ps's output, unfiltered; None when not asked for


def processes(ctx: Context, container_id: str, ps_args: tuple[str, ...] | None) -> Processes:
    """The container's guest pids and, with `ps_args`, the guest's `ps` output."""
    state = ctx.store.load_container(container_id)
    try:
        with sandboxes.monitor(ctx, state.sandbox) as mon:
            result = mon.call("ps_container", id=container_id,
                              ps_args=list(ps_args) if ps_args is not None else None)
    except VmrtError:
        if status.current(state) is not Status.STOPPED:
            raise
        return Processes((), None)  # its VM is gone: so are its processes
    pids = result.get("pids")
    table = result.get("table")
    if not isinstance(pids, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in pids):
        raise VmrtError("the guest agent sent an unusable pid list")
    return Processes(tuple(pids), table if isinstance(table, str) else None)


def filter_table(table: str, pids: tuple[int, ...]) -> list[str]:
    """runc's filter: the header, then the lines whose PID column is the container's."""
    lines = table.splitlines()
    if not lines:
        raise VmrtError("couldn't find PID field in ps output")
    header = lines[0].split()
    if "PID" not in header:
        raise VmrtError("couldn't find PID field in ps output")
    index = header.index("PID")
    wanted = set(pids)
    out = [lines[0]]
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > index and fields[index].isdigit() and int(fields[index]) in wanted:
            out.append(line)
    return out
