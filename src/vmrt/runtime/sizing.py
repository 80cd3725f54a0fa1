"""The pod VM grows to fit a container's limits when it joins, and on `update`.

The monitor keeps every member's demand and the VM's size
(`vmrt.monitor.sizing`); this module only tells it what a container asks
for. A container without CPU or memory limits asks for nothing and costs no
request.
"""

from __future__ import annotations

import contextlib

from vmrt import oci
from vmrt.errors import VmrtError
from vmrt.runtime import resources
from vmrt.runtime import sandbox as sandboxes
from vmrt.runtime.context import Context


def fit(ctx: Context, sandbox_id: str, container_id: str, spec: oci.Spec,
        undo: contextlib.ExitStack) -> None:
    """Grow the VM for the spec's `linux.resources`; `undo` gives the demand back."""
    cpus, memory_mib = resources.from_spec(spec.raw).demand()
    if not cpus and not memory_mib:
        return
    undo.callback(release, ctx, sandbox_id, container_id)
    refit(ctx, sandbox_id, container_id, cpus, memory_mib)


def refit(ctx: Context, sandbox_id: str, container_id: str, cpus: float | None,
          memory_mib: int | None) -> dict[str, object]:
    """Set the container's demand (None: unchanged) and resize the VM to the new total."""
    if cpus is None and memory_mib is None:
        return {}
    with sandboxes.monitor(ctx, sandbox_id) as mon:
        return mon.call("vm_fit", id=container_id, cpus=cpus, memory_mib=memory_mib)


def release(ctx: Context, sandbox_id: str, container_id: str) -> None:
    with contextlib.suppress(VmrtError, OSError), sandboxes.monitor(ctx, sandbox_id) as mon:
        mon.call("vm_release", id=container_id)
