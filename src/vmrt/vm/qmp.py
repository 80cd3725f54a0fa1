"""The QMP vocabulary vmrt uses, typed, over qemu.qmp (pinned; 0.0.x is alpha).

Every plug has its unplug here, and an unplug returns only once QEMU reports
DEVICE_DELETED: the guest must have let go before virtiofsd or the backing
chardev are taken away, or the guest driver hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from qemu.qmp import EventListener, QMPClient, QMPError

from vmrt.errors import SandboxError


class QMP:
    def __init__(self, name: str) -> None:
        self._client = QMPClient(name)
        self._lock = asyncio.Lock()

    async def connect(self, sock: socket.socket) -> None:
        try:
            await self._client.connect(sock)
        except QMPError as exc:
            raise SandboxError(f"QMP handshake failed: {exc}") from exc

    async def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        try:
            return await self._client.execute(cmd, args)
        except QMPError as exc:
            raise SandboxError(f"QMP {cmd} failed: {exc}") from exc

    async def send_fd(self, name: str, fd: int) -> None:
        """Hand QEMU an fd (QMP getfd): QEMU opens nothing of the host by path itself."""
        self._client.send_fd_scm(fd)
        await self.execute("getfd", {"fdname": name})

    async def chardev_add_fd(self, chardev_id: str, fdname: str) -> None:
        await self.execute("chardev-add", {
            "id": chardev_id,
            "backend": {"type": "socket", "data": {
                "addr": {"type": "fd", "data": {"str": fdname}}, "server": False}},
        })

    async def chardev_remove(self, chardev_id: str) -> None:
        await self.execute("chardev-remove", {"id": chardev_id})

    async def device_add(self, driver: str, device_id: str, **props: Any) -> None:
        await self.execute("device_add", {"driver": driver, "id": device_id, **props})

    async def device_del(self, device_id: str, timeout: float = 10.0) -> None:
        listener = EventListener("DEVICE_DELETED")
        with self._client.listen(listener):
            await self.execute("device_del", {"id": device_id})
            try:
                async with asyncio.timeout(timeout):
                    async for event in listener:
                        data = event.get("data", {})  # noqa: SIM401 - Message is not a dict
                        if isinstance(data, dict) and data.get("device") == device_id:
                            return
            except TimeoutError:
                raise SandboxError(
                    f"the guest did not release {device_id} within {timeout:g}s") from None

    async def query_pci_ids(self) -> list[str]:
        buses = await self.execute("query-pci")
        ids: list[str] = []

        def walk(devices: list[dict[str, Any]]) -> None:
            for dev in devices:
                if dev.get("qdev_id"):
                    ids.append(dev["qdev_id"])
                bridge = dev.get("pci_bridge", {})
                walk(bridge.get("devices", []))

        for bus in buses:
            walk(bus.get("devices", []))
        return ids

    async def quit(self) -> None:
        # QEMU closing the socket as it quits is the expected answer.
        with contextlib.suppress(QMPError, EOFError, OSError):
            await self._client.execute("quit")
        await self.close()

    async def close(self) -> None:
        with contextlib.suppress(QMPError, EOFError, OSError):
            await self._client.disconnect()
