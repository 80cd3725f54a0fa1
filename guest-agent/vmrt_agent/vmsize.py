"""The guest's side of growing and shrinking the VM: vCPUs on- and offline, memory seen.

The host hot-plugs vCPUs over QMP (``device_add``); the kernel learns of them
through ACPI and leaves them offline, and with no udev in the guest nobody
else would write ``1`` to ``/sys/devices/system/cpu/cpuN/online``.  Shrinking
is the reverse: the agent offlines the highest-numbered vCPUs (never cpu0),
after which the host may unplug them.  Memory needs nothing here: the kernel
onlines what virtio-mem plugs (``MEMORY_HOTPLUG_DEFAULT_ONLINE``) and takes
back what it unplugs; the agent only reports what the guest sees.

cgroup v2's cpuset follows: a container without its own ``cpuset.cpus`` has
the new vCPUs in its effective set (and its tasks' affinity) as they come
online, so ``nproc`` in an existing container grows too.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from typing import Final

from vmrt_agent.errors import AgentError

CPU_DIR: Final = "/sys/devices/system/cpu"
MEMINFO: Final = "/proc/meminfo"
#: How often, and how long, a hot-plugged vCPU is looked for before giving up.
POLL: Final = 0.02
_CPU_RE: Final = re.compile(r"cpu(\d+)")


def present_cpus(cpu_dir: str = CPU_DIR) -> list[int]:
    """Numbers of the vCPUs the kernel knows (online or not), ascending."""
    try:
        names = os.listdir(cpu_dir)
    except OSError:
        return [0]
    return sorted(int(m.group(1)) for n in names if (m := _CPU_RE.fullmatch(n)))


def is_online(cpu: int, cpu_dir: str = CPU_DIR) -> bool:
    try:
        with open(os.path.join(cpu_dir, f"cpu{cpu}", "online")) as f:
            return f.read().strip() == "1"
    except FileNotFoundError:
        return cpu == 0  # cpu0 has no "online" file: it cannot go offline
    except OSError:
        return False


def online_cpus(cpu_dir: str = CPU_DIR) -> list[int]:
    return [c for c in present_cpus(cpu_dir) if is_online(c, cpu_dir)]


def _set_online(cpu: int, online: bool, cpu_dir: str) -> None:
    try:
        with open(os.path.join(cpu_dir, f"cpu{cpu}", "online"), "w") as f:
            f.write("1" if online else "0")
    except OSError as exc:
        raise AgentError(f"cannot set cpu{cpu} {'online' if online else 'offline'}: "
                         f"{exc.strerror or exc}") from exc


async def set_cpus(want: int, *, timeout: float, cpu_dir: str = CPU_DIR) -> int:
    """Bring the number of online vCPUs to ``want``; return how many are online.

    Growing waits (bounded) for vCPUs the host has just plugged to appear:
    the ACPI notification is processed asynchronously by the guest kernel.
    """
    if want < 1:
        raise AgentError("a VM keeps at least one vCPU online")
    deadline = time.monotonic() + timeout
    while True:
        online = online_cpus(cpu_dir)
        if len(online) > want:
            for cpu in sorted(online, reverse=True)[: len(online) - want]:
                if cpu != 0:
                    _set_online(cpu, False, cpu_dir)
            return len(online_cpus(cpu_dir))
        offline = [c for c in present_cpus(cpu_dir) if c not in online]
        for cpu in offline[: want - len(online)]:
            try:
                _set_online(cpu, True, cpu_dir)
            except AgentError:
                if time.monotonic() >= deadline:
                    raise
                # A vCPU the kernel is still adding refuses; the next round retries.
        online = online_cpus(cpu_dir)
        if len(online) >= want or time.monotonic() >= deadline:
            return len(online)
        # No udev: polling sysfs is the only notice of a vCPU the kernel added.
        await asyncio.sleep(POLL)


def mem_total_kib(meminfo: str = MEMINFO) -> int:
    try:
        with open(meminfo) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0
