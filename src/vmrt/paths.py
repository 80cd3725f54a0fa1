"""Every path vmrt keeps under --root, in one place.

    <root>/containers/<id>/state.json      one container (and its lock)
    <root>/sandboxes/<sb>/sandbox.json     one pod VM (and its lock)
    <root>/sandboxes/<sb>/monitor.sock     the monitor's request socket
    <root>/sandboxes/<sb>/{qmp,agent}.sock QEMU's sockets, owned by the monitor
    <root>/sandboxes/<sb>/{console,qemu,monitor,virtiofsd}.log
    <root>/sandboxes/<sb>/shares/<id>/     staging dir of a container's virtio-fs share
    <root>/pool/.lock                      taken while the warm pool is refilled or drained
    <root>/pool/<vm>/                      one warm VM (config `pool_size`): booted, bound to no
                                           sandbox; the files of a sandbox dir (monitor.sock, logs)
    <root>/pool/<vm>/pool.json             its monitor (pid + start time) and boot fingerprint
    <root>/pool/<vm>/ready.json            its QEMU; written by its monitor after the agent's hello
    <root>/pool/.<vm>.gone/                a VM being taken out of the pool (drained or dead)

A sandbox create claims a warm VM by renaming <root>/pool/<vm> to
<root>/sandboxes/<sb> (RENAME_NOREPLACE: one syscall claims both the VM and the
sandbox id), then tells its monitor, which becomes that sandbox's monitor in the
same process. Until then a pool VM's monitor runs `python -m vmrt.monitor.pooled`,
which no sandbox names: its processes belong to <root>/pool/<vm>, not to any
sandbox (`runtime/procscan.py` knows them by the logs they hold open there).
"""

from __future__ import annotations

import os
from pathlib import Path

from vmrt.util.record import record

DEFAULT_ROOT = "/run/vmrt"


@record
class ContainerDir:
    path: Path

    @property
    def state(self) -> Path:
        return self.path / "state.json"


@record
class SandboxDir:
    path: Path

    @property
    def state(self) -> Path:
        return self.path / "sandbox.json"

    @property
    def monitor_sock(self) -> Path:
        return self.path / "monitor.sock"

    @property
    def qmp_sock(self) -> Path:
        return self.path / "qmp.sock"

    @property
    def agent_sock(self) -> Path:
        return self.path / "agent.sock"

    @property
    def console_log(self) -> Path:
        return self.path / "console.log"

    @property
    def qemu_log(self) -> Path:
        return self.path / "qemu.log"

    @property
    def monitor_log(self) -> Path:
        return self.path / "monitor.log"

    @property
    def virtiofsd_log(self) -> Path:
        return self.path / "virtiofsd.log"

    def share(self, container_id: str) -> Path:
        return self.path / "shares" / container_id

    def virtiofs_sock(self, container_id: str) -> Path:
        return self.path / "shares" / f"{container_id}.vfs.sock"


@record
class PoolVMDir:
    """A warm VM's directory; once claimed, the same directory is a SandboxDir."""

    path: Path

    @property
    def vm(self) -> SandboxDir:
        return SandboxDir(self.path)

    @property
    def record(self) -> Path:
        return self.path / "pool.json"

    @property
    def ready(self) -> Path:
        return self.path / "ready.json"


@record
class Root:
    path: Path

    @classmethod
    def at(cls, root: str) -> Root:
        return cls(Path(os.path.abspath(root)))

    @property
    def containers(self) -> Path:
        return self.path / "containers"

    @property
    def sandboxes(self) -> Path:
        return self.path / "sandboxes"

    @property
    def pool(self) -> Path:
        return self.path / "pool"

    @property
    def pool_lock(self) -> Path:
        return self.pool / ".lock"

    def pool_vm(self, vm_id: str) -> PoolVMDir:
        from vmrt.ids import validate_id

        return PoolVMDir(self.pool / validate_id(vm_id))

    def container(self, container_id: str) -> ContainerDir:
        """Every path of a container is made here, so every ID is validated here: an ID
        is a path component, and `/` or `..` in it would name another directory."""
        from vmrt.ids import validate_id

        return ContainerDir(self.containers / validate_id(container_id))

    def sandbox(self, sandbox_id: str) -> SandboxDir:
        from vmrt.ids import validate_id

        return SandboxDir(self.sandboxes / validate_id(sandbox_id))

    def ensure(self) -> None:
        """Create the root 0700: it holds sockets that drive VMs as root."""
        for d in (self.path, self.containers, self.sandboxes):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
