"""A container's files, shared into the guest with virtio-fs.

One virtiofsd per container serves a staging directory that holds the
rootfs (at `rootfs/`) and each bind-mount source of the spec (at `m<N>`),
bind-mounted there inside the monitor's private mount namespace. The guest
mounts the share by tag and crun finds everything under one directory, so a
container costs one device and one virtiofsd however many volumes it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmrt.errors import SandboxError
from vmrt.paths import SandboxDir
from vmrt.util import mount
from vmrt.util.sockets import bind_unix, connect_unix
from vmrt.vm.cmdline import root_port_id
from vmrt.vm.qmp import QMP


@dataclass(frozen=True)
class BindSource:
    name: str  # entry name in the staging dir, e.g. "m3"
    source: str  # host path


@dataclass
class Share:
    container_id: str
    tag: str
    device_id: str
    chardev_id: str
    slot: int
    staging: Path
    virtiofsd: subprocess.Popen[bytes]


def tag_for(container_id: str) -> str:
    # virtio-fs tags are at most 36 bytes; ids are up to 1024.
    import hashlib

    return "vmrt-" + hashlib.sha256(container_id.encode()).hexdigest()[:24]


def fuse_opt(value: str) -> str:
    """Escape a value for virtiofsd's `-o a=b,c=d` (libfuse's fuse_opt): a comma in
    --root must not end the path and start an option of its own."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def _stage(staging: Path, rootfs: str, binds: list[BindSource]) -> None:
    staging.parent.mkdir(mode=0o700, exist_ok=True)
    staging.mkdir(mode=0o700, exist_ok=True)
    (staging / "rootfs").mkdir(exist_ok=True)
    mount.bind(rootfs, str(staging / "rootfs"))
    for b in binds:
        target = staging / b.name
        if os.path.isdir(b.source):
            target.mkdir(exist_ok=True)
        else:
            target.touch(exist_ok=True)
        mount.bind(b.source, str(target))


def _unmount_staging(staging: Path) -> None:
    """Drop the monitor's staging mounts but keep the mount-point entries: removing a
    mount point detaches the mounts on it in *every* namespace, virtiofsd's included."""
    if not staging.exists():
        return
    for entry in sorted(staging.iterdir(), reverse=True):
        with contextlib.suppress(OSError):
            mount.umount(str(entry))


def _unstage(staging: Path) -> None:
    """Unmount and remove the staging entries, never recursively: if an unmount
    failed, rmdir/unlink refuse the mount point instead of deleting the user's files.
    Only once virtiofsd is gone (see _unmount_staging)."""
    if not staging.exists():
        return
    _unmount_staging(staging)
    for entry in sorted(staging.iterdir(), reverse=True):
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                entry.rmdir()
            else:
                entry.unlink()
    with contextlib.suppress(OSError):
        staging.rmdir()


async def plug(qmp: QMP, sbdir: SandboxDir, virtiofsd: str, container_id: str, slot: int,
               rootfs: str, binds: list[BindSource], log: Path) -> Share:
    """Stage, start virtiofsd, hot-plug its vhost-user-fs device; undo all on failure."""
    staging = sbdir.share(container_id)
    tag = tag_for(container_id)
    suffix = tag[5:17]
    device_id, chardev_id = f"fs-{suffix}", f"fsc-{suffix}"
    sock_path = sbdir.virtiofs_sock(container_id)
    proc: subprocess.Popen[bytes] | None = None
    plugged = chardev = False
    try:
        _stage(staging, rootfs, binds)
        listener = bind_unix(sock_path, backlog=1)
        logfd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            proc = subprocess.Popen(
                [virtiofsd, f"--fd={listener.fileno()}", "-o", f"source={fuse_opt(str(staging))}",
                 "-o", "cache=auto", "-o", "log_level=warn", "--thread-pool-size=1"],
                stdin=subprocess.DEVNULL, stdout=logfd, stderr=logfd,
                pass_fds=[listener.fileno()])
        finally:
            os.close(logfd)
            listener.close()
        client = connect_unix(sock_path)
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        try:
            await qmp.send_fd(chardev_id, client.fileno())
        finally:
            client.close()
        await qmp.chardev_add_fd(chardev_id, chardev_id)
        chardev = True
        await qmp.device_add("vhost-user-fs-pci", device_id, chardev=chardev_id, tag=tag,
                             bus=root_port_id(slot))
        plugged = True
    except BaseException as exc:
        if plugged:
            with contextlib.suppress(Exception):
                await qmp.device_del(device_id)
        if chardev:
            with contextlib.suppress(Exception):
                await qmp.chardev_remove(chardev_id)
        if proc is not None:
            proc.kill()
            await asyncio.to_thread(proc.wait)
        _unstage(staging)
        if isinstance(exc, (SandboxError, asyncio.CancelledError)):
            raise
        if isinstance(exc, OSError):
            raise SandboxError(f"cannot share {rootfs} with the VM: {exc}") from exc
        raise
    # virtiofsd took its own copy of the staged mounts when it set up its sandbox
    # (before it could answer the vhost-user handshake device_add waited for), so the
    # monitor's binds can go now: nothing stays mounted on the host's side.
    _unmount_staging(staging)
    return Share(container_id, tag, device_id, chardev_id, slot, staging, proc)


async def unplug(qmp: QMP, share: Share) -> None:
    try:
        await qmp.device_del(share.device_id)
        await qmp.chardev_remove(share.chardev_id)
    finally:
        share.virtiofsd.terminate()
        try:
            await asyncio.wait_for(asyncio.to_thread(share.virtiofsd.wait), 5)
        except TimeoutError:
            share.virtiofsd.kill()
            await asyncio.to_thread(share.virtiofsd.wait)
        _unstage(share.staging)

