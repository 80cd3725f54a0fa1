"""The monitor's half of pod networking: carry the namespace's interfaces into the VM.

The monitor (and QEMU) run in the pod's network namespace, so everything here
acts on the calling thread's namespace: no setns, no paths. For each interface
CNI made and the VM does not carry yet: a tap beside it with tc redirecting
both ways (`vmrt.network.tap`), the tap's fd handed to QEMU (`getfd`,
`netdev_add tap,fd=…`), a `virtio-net-pci` with the interface's MAC hot-plugged
into a free root port, and then one `setup_network` request so the agent gives
the guest's NICs the addresses, routes and MTU the interfaces have.

Slots are taken under the monitor's device lock, from the devices recorded in
sandbox.json, like the virtio-fs shares; every NIC is recorded there
(kind "net") and its interface in the sandbox's network links, so a `delete`
whose monitor died can still undo the redirect. Every plug registers its
unplug; a failure anywhere undoes the interfaces of that call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmrt.errors import MonitorError, SandboxError, VmrtError
from vmrt.log import Logger
from vmrt.monitor.agent_link import AgentLink
from vmrt.network.netns import TAP_PREFIX
from vmrt.network.scan import Interface
from vmrt.state.model import Device, NetworkRef, SandboxState
from vmrt.state.store import Store
from vmrt.util.record import replace
from vmrt.vm.cmdline import root_port_id
from vmrt.vm.qmp import QMP

KIND = "net"


@dataclass(frozen=True)
class Carried:
    """One interface of the namespace and the NIC that carries it into the VM."""

    iface: Interface
    slot: int

    @property
    def tap(self) -> str:
        return f"{TAP_PREFIX}{self.slot}"

    @property
    def device_id(self) -> str:
        return f"net{self.slot}"

    @property
    def netdev_id(self) -> str:
        return f"netdev{self.slot}"

    @property
    def fd_name(self) -> str:
        return f"tapfd{self.slot}"


class PodNetwork:
    def __init__(self, *, qmp: QMP, agent: Callable[[], AgentLink | None], store: Store,
                 sandbox_id: str, device_lock: asyncio.Lock, slots: int, timeout: float,
                 log: Logger) -> None:
        self._qmp = qmp
        self._agent = agent
        self._store = store
        self._sandbox_id = sandbox_id
        self._lock = device_lock
        self._slots = slots
        self._timeout = timeout
        self._log = log
        self.carried: dict[str, Carried] = {}

    async def attach(self) -> dict[str, Any]:
        """Carry every interface not carried yet; answer the names carried in all."""
        from vmrt.network import scan

        async with self._lock:
            found = await asyncio.to_thread(scan.scan)
            new = [i for i in found if i.name not in self.carried]
            if new:
                await self._attach(new)
        return {"links": sorted(self.carried)}

    async def _attach(self, ifaces: list[Interface]) -> None:
        agent = self._agent()
        if agent is None:
            raise SandboxError("the guest agent is not connected")
        async with contextlib.AsyncExitStack() as undo:
            plugged = []
            for iface in ifaces:
                carried = Carried(iface, self._free_slot())
                await self._plug(carried)
                undo.push_async_callback(self._unplug, carried)
                plugged.append(carried)
            await agent.call("setup_network", timeout=self._timeout,
                             interfaces=[c.iface.to_wire() for c in plugged])
            undo.pop_all()
        self._log.info("network attached", links=[c.iface.name for c in plugged])

    def _free_slot(self) -> int:
        used = {d.slot for d in self._store.load_sandbox(self._sandbox_id).devices}
        slot = next((s for s in range(self._slots) if s not in used), None)
        if slot is None:
            raise MonitorError(f"no free hot-plug slot in the VM ({self._slots} used)")
        return slot

    async def _plug(self, c: Carried) -> None:
        from vmrt.network import tap

        try:
            fd = await asyncio.to_thread(tap.create, c.tap, c.iface.index, c.iface.mtu)
        except (OSError, VmrtError) as exc:
            raise SandboxError(f"cannot carry {c.iface.name} into the VM: {exc}") from exc
        try:
            # Recorded before QEMU holds anything, so a crash from here on is undone by delete.
            self._record(c, add=True)
            try:
                await self._qmp.send_fd(c.fd_name, fd)
            finally:
                os.close(fd)
            try:
                await self._qmp.execute("netdev_add", {"type": "tap", "id": c.netdev_id,
                                                       "fd": c.fd_name})
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._qmp.execute("closefd", {"fdname": c.fd_name})
                raise
            try:
                await self._qmp.device_add(
                    "virtio-net-pci", c.device_id, netdev=c.netdev_id, mac=c.iface.mac,
                    host_mtu=c.iface.mtu, bus=root_port_id(c.slot))
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._qmp.execute("netdev_del", {"id": c.netdev_id})
                raise
        except BaseException:
            await self._unredirect(c)
            self._record(c, add=False)
            raise
        self.carried[c.iface.name] = c

    async def _unplug(self, c: Carried) -> None:
        """Undo one interface; every step is tried, whatever failed before it."""
        await self._unredirect(c)  # first: the pod's frames stop going to a NIC on its way out
        # QEMU may be gone (teardown after its death): then there is nothing to unplug.
        try:
            await self._qmp.device_del(c.device_id)
        except Exception as exc:
            self._log.warning("cannot unplug a NIC", device=c.device_id, error=repr(exc))
        with contextlib.suppress(Exception):
            await self._qmp.execute("netdev_del", {"id": c.netdev_id})  # QEMU closes the tap
        self.carried.pop(c.iface.name, None)
        self._record(c, add=False)

    async def _unredirect(self, c: Carried) -> None:
        from vmrt.network import tap

        try:
            await asyncio.to_thread(tap.remove_redirect, c.iface.name)
        except Exception as exc:  # pyroute2's errors are its own; the rest must still run
            self._log.warning("cannot remove a tc redirect", link=c.iface.name, error=repr(exc))

    def _record(self, c: Carried, *, add: bool) -> None:
        def change(s: SandboxState) -> SandboxState:
            devices = tuple(d for d in s.devices if d.id != c.device_id)
            net = s.network or NetworkRef("host")
            links = tuple(name for name in net.links if name != c.iface.name)
            if add:
                devices += (Device(c.device_id, KIND, c.slot, self._sandbox_id),)
                links += (c.iface.name,)
            return replace(s, devices=devices, network=replace(net, links=links))

        self._store.update_sandbox(self._sandbox_id, change)

    async def detach_all(self) -> dict[str, Any]:
        """Unplug every NIC, remove every redirect; the CNI interfaces stay for CNI's DEL."""
        async with self._lock:
            for c in sorted(self.carried.values(), key=lambda c: c.slot, reverse=True):
                await self._unplug(c)
        return {}

    async def info(self) -> dict[str, Any]:
        """What is carried, and the ids of the PCI devices QEMU has (to check unplugs)."""
        return {"links": sorted(self.carried), "pci": await self._qmp.query_pci_ids()}
