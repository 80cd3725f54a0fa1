"""Acting on a container once it exists: pause, resume, update, ps, stats; and the VM's size.

Pause, resume and update are crun's (cgroup v2 freezer, cgroup files);
``ps`` and ``stats`` read the container's cgroup (:mod:`vmrt_agent.cgroups`)
and, for the ``ps`` table, run the guest's own ``ps`` (busybox) so the
columns are what ``ps`` prints: the host filters its lines to the
container's pids, as runc filters the host's ``ps``.  All pids are guest
pids.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Final

from vmrt_agent import cgroups, vmsize
from vmrt_agent.containers import Containers
from vmrt_agent.errors import AgentError

#: The guest's ps (a busybox applet in the guest root; procps outside a VM).
PS: Final = "/bin/ps"
PS_TIMEOUT: Final = 10.0
MAX_PS_OUTPUT: Final = 1 << 20
#: A vCPU plugged by the host is given this long to show up in sysfs.
CPU_APPEAR_TIMEOUT: Final = 10.0


async def pause(containers: Containers, container_id: str) -> None:
    await containers.runtime_verb(container_id, "pause")


async def resume(containers: Containers, container_id: str) -> None:
    await containers.runtime_verb(container_id, "resume")


async def update(containers: Containers, container_id: str, resources: dict[str, Any]) -> None:
    """``crun update --resources FILE``: only what the document names changes."""
    bundle_dir = await containers.bundle_of(container_id)
    fd, path = tempfile.mkstemp(prefix="update-", suffix=".json", dir=bundle_dir)
    try:
        with open(fd, "w") as f:
            json.dump(resources, f)
        await containers.runtime_verb(container_id, "update", "--resources", path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def ps(containers: Containers, container_id: str, ps_args: list[str] | None) -> dict[str, Any]:
    """The container's pids and, when ``ps_args`` is given, the guest's ``ps`` output."""
    cgroup = cgroups.container_dir(await containers.bundle_of(container_id))
    result: dict[str, Any] = {"pids": cgroups.pids(cgroup)}
    if ps_args is not None:
        done = await containers.run_tool([PS, *ps_args], timeout=PS_TIMEOUT)
        if done.returncode != 0:
            text = done.stderr.decode(errors="replace").strip()
            raise AgentError(f"exit status {done.returncode}: {text}"[:1024])
        result["table"] = done.stdout[:MAX_PS_OUTPUT].decode(errors="replace")
    return result


async def stats(containers: Containers, container_id: str) -> dict[str, Any]:
    cgroup = cgroups.container_dir(await containers.bundle_of(container_id))
    return cgroups.stats(cgroup)


async def resize_guest(vcpus: int) -> dict[str, Any]:
    """Online (or offline) vCPUs to ``vcpus``; report what the guest now has."""
    online = await vmsize.set_cpus(vcpus, timeout=CPU_APPEAR_TIMEOUT)
    return {"cpus_online": online, "mem_total_kib": vmsize.mem_total_kib()}
