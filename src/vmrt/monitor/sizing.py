"""The pod VM's size: vCPUs and RAM hot-plugged to fit its containers' limits, within bounds.

Kata's rule: the VM has its configured base (`vcpus`, `memory_mib`) plus, for
each container, its CPU limit (quota / period, summed then rounded up) and its
memory limit, capped at `max_vcpus` / `max_memory_mib`. A container states its
demand when it joins (`vm_fit` from create), again on `update`, and drops it
when it is deleted or its create fails (`vm_release`); each change resizes the
VM to the new target.

* vCPUs: `device_add` of the CPUs `query-hotpluggable-cpus` offers, then the
  agent onlines them (no udev in the guest). Shrinking offlines them in the
  guest; under KVM they are then unplugged (`device_del`, the guest ejects
  them through ACPI). Under TCG with one translation thread (`thread=single`,
  which vmrt uses) QEMU 7.2 aborts on vCPU unplug ("qemu_thread_join: Resource
  deadlock avoided"), so there an offlined vCPU stays plugged, halted, and is
  onlined again by the next growth.
* RAM: one virtio-mem device (`vm/cmdline.py`), resized with `qom-set
  requested-size`. The guest kernel onlines what is plugged; on shrink it
  gives back what it can free (in-use memory stays plugged: `size` says what
  was really achieved).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from vmrt import protocol
from vmrt.config import Config
from vmrt.errors import MonitorError, SandboxError, VmrtError
from vmrt.log import Logger
from vmrt.monitor import vmspec
from vmrt.monitor.agent_link import AgentLink
from vmrt.state.store import Store
from vmrt.util.record import replace
from vmrt.vm.cmdline import HOTPLUG_MEMORY_BLOCK_MIB, HOTPLUG_MEMORY_PATH
from vmrt.vm.qmp import QMP

#: How long the guest gets to plug memory asked for (TCG is slow at zeroing pages).
PLUG_TIMEOUT_S = 30.0
#: Shrinking is best effort; the guest is given this long before the size is reported.
UNPLUG_WAIT_S = 5.0


@dataclass(frozen=True)
class Demand:
    """What one container asks of the VM: CPUs (quota / period) and MiB of RAM."""

    cpus: float = 0.0
    memory_mib: int = 0


def target(limits: vmspec.Bounds, demands: Iterable[Demand]) -> tuple[int, int]:
    """(vCPUs, MiB) for these demands: base + sum, capped; RAM in virtio-mem blocks."""
    demands = list(demands)
    cpus = limits.base_vcpus + math.ceil(round(sum(d.cpus for d in demands), 6))
    extra = min(sum(d.memory_mib for d in demands), limits.hotplug_mib)
    extra = -(-extra // HOTPLUG_MEMORY_BLOCK_MIB) * HOTPLUG_MEMORY_BLOCK_MIB
    return min(cpus, limits.max_vcpus), limits.base_mib + min(extra, limits.hotplug_mib)


def _optional_number(args: dict[str, Any], key: str, kind: type) -> Any:
    value = args.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 <= value < 2**53) or (kind is int and not isinstance(value, int)):
        raise protocol.ProtocolError(f"argument {key!r} must be a non-negative number")
    return kind(value)


class VMSizer:
    """Holds the demands of the VM's containers and keeps the VM at their target."""

    def __init__(self, *, qmp: QMP, agent: Callable[[], AgentLink | None], store: Store,
                 sandbox_id: str, cfg: Config, accel: str, log: Logger) -> None:
        self.qmp = qmp
        self._agent = agent
        self.store = store
        self.sandbox_id = sandbox_id
        self.limits = vmspec.bounds(cfg)
        self.accel = accel
        self.timeout = cfg.request_timeout_s
        self.log = log
        self._demands: dict[str, Demand] = {}
        self._lock = asyncio.Lock()
        self._vcpus = self.limits.base_vcpus  # online in the guest
        self._cpu_devices: list[str] = []  # plugged by us, oldest first
        self._memory_mib = self.limits.base_mib

    async def handle(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """The monitor's `vm_fit` / `vm_release` / `vm_size` requests, arguments checked."""
        if op == "vm_size":
            return self.size()
        container_id = protocol.get_str(args, "id", max_len=1024)
        if op == "vm_release":
            return await self.release(container_id)
        return await self.fit(container_id, _optional_number(args, "cpus", float),
                              _optional_number(args, "memory_mib", int))

    async def release_quietly(self, container_id: str) -> None:
        try:
            await self.release(container_id)
        except (VmrtError, OSError) as exc:
            self.log.warning("could not shrink the VM", container=container_id, error=str(exc))

    async def fit(self, container_id: str, cpus: float | None,
                  memory_mib: int | None) -> dict[str, Any]:
        """Record the container's demand (None: keep what it asked before) and resize."""
        async with self._lock:
            old = self._demands.get(container_id, Demand())
            self._demands[container_id] = Demand(
                old.cpus if cpus is None else max(0.0, cpus),
                old.memory_mib if memory_mib is None else max(0, memory_mib))
            return await self._apply()

    async def release(self, container_id: str) -> dict[str, Any]:
        async with self._lock:
            if self._demands.pop(container_id, None) is None:
                return self.size()
            return await self._apply()

    def size(self) -> dict[str, Any]:
        return {"vcpus": self._vcpus, "memory_mib": self._memory_mib,
                "max_vcpus": self.limits.max_vcpus, "max_memory_mib":
                    self.limits.base_mib + self.limits.hotplug_mib,
                "plugged_vcpus": self.limits.base_vcpus + len(self._cpu_devices)}

    async def _apply(self) -> dict[str, Any]:
        vcpus, memory_mib = target(self.limits, self._demands.values())
        guest: dict[str, Any] = {}
        if vcpus != self._vcpus:
            guest = await self._set_vcpus(vcpus)
        if memory_mib != self._memory_mib:
            await self._set_memory(memory_mib)
        self.log.info("vm resized", vcpus=self._vcpus, memory_mib=self._memory_mib,
                      demands={k: [d.cpus, d.memory_mib] for k, d in self._demands.items()})
        self.store.update_sandbox(self.sandbox_id, lambda s: replace(
            s, vcpus=self._vcpus, memory_mib=self._memory_mib))
        return {**self.size(), **guest}

    # --- vCPUs ---------------------------------------------------------------

    async def _set_vcpus(self, want: int) -> dict[str, Any]:
        plugged = self.limits.base_vcpus + len(self._cpu_devices)
        if want > plugged:
            await self._plug_cpus(want - plugged)
        guest = await self._agent_call("resize_guest", vcpus=want)
        online = guest.get("cpus_online")
        if not isinstance(online, int) or isinstance(online, bool) or online < 1:
            raise SandboxError("the guest agent reported no usable vCPU count")
        self._vcpus = online
        if online != want:
            raise SandboxError(f"the guest brought {online} vCPUs online, not {want}")
        if want < plugged and self.accel == "kvm":
            while len(self._cpu_devices) > want - self.limits.base_vcpus:
                device = self._cpu_devices[-1]
                await self.qmp.device_del(device, timeout=self.timeout)
                self._cpu_devices.pop()
        return guest

    async def _plug_cpus(self, count: int) -> None:
        slots = await self.qmp.execute("query-hotpluggable-cpus")
        free = sorted((s for s in slots if isinstance(s, dict) and "qom-path" not in s),
                      key=lambda s: sorted(s.get("props", {}).items()))
        if len(free) < count:
            raise SandboxError(f"no room for {count} more vCPUs (maxcpus reached)")
        for slot in free[:count]:
            device = f"vcpu{len(self._cpu_devices) + self.limits.base_vcpus}"
            await self.qmp.device_add(slot["type"], device, **slot.get("props", {}))
            self._cpu_devices.append(device)

    # --- memory --------------------------------------------------------------

    async def _set_memory(self, want_mib: int) -> None:
        requested = (want_mib - self.limits.base_mib) << 20
        await self.qmp.execute("qom-set", {"path": HOTPLUG_MEMORY_PATH,
                                           "property": "requested-size", "value": requested})
        growing = want_mib > self._memory_mib
        deadline = time.monotonic() + (PLUG_TIMEOUT_S if growing else UNPLUG_WAIT_S)
        while True:
            size = await self.qmp.execute("qom-get", {"path": HOTPLUG_MEMORY_PATH,
                                                      "property": "size"})
            if not isinstance(size, int):
                raise SandboxError("QEMU reported no virtio-mem size")
            self._memory_mib = self.limits.base_mib + size // (1 << 20)
            if size == requested:
                return
            if time.monotonic() >= deadline:
                if growing:
                    raise SandboxError(f"the guest plugged {size >> 20} of {requested >> 20} "
                                       "MiB of memory in time")
                self.log.warning("guest kept memory plugged", asked_mib=want_mib,
                                 have_mib=self._memory_mib)
                return
            # The guest plugs and unplugs asynchronously; QEMU emits no event when done.
            await asyncio.sleep(0.05)

    async def _agent_call(self, op: str, **args: Any) -> dict[str, Any]:
        agent = self._agent()
        if agent is None:
            raise MonitorError("the guest agent is not connected")
        return await agent.call(op, timeout=self.timeout, **args)
