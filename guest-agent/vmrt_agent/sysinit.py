"""PID 1's duties before the agent can serve: filesystems, cgroups, lo, the port.

There is no init system, udev or mount binary in the guest, so this module
does their few jobs itself: the API filesystems crun and containers expect,
cgroup2 with every controller delegated, loopback up, and the
``/dev/virtio-ports/<name>`` links udev would have made.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
import time
from typing import Final

from vmrt_agent import linux
from vmrt_agent.errors import AgentError

log = logging.getLogger(__name__)

_NOSUID_NODEV: Final = linux.MS_NOSUID | linux.MS_NODEV
#: (source, target, type, flags, data), in mount order.
MOUNTS: Final = (
    ("proc", "/proc", "proc", _NOSUID_NODEV | linux.MS_NOEXEC, None),
    ("sysfs", "/sys", "sysfs", _NOSUID_NODEV | linux.MS_NOEXEC, None),
    ("devtmpfs", "/dev", "devtmpfs", linux.MS_NOSUID, "mode=0755"),
    # newinstance keeps the guest's ptys apart from any other devpts; /dev/ptmx
    # (from devtmpfs) opens the instance mounted at /dev/pts next to it.
    ("devpts", "/dev/pts", "devpts", linux.MS_NOSUID | linux.MS_NOEXEC,
     "newinstance,ptmxmode=0666,mode=0620,gid=5"),
    ("shm", "/dev/shm", "tmpfs", _NOSUID_NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", _NOSUID_NODEV, "mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", _NOSUID_NODEV, "mode=1777"),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", _NOSUID_NODEV | linux.MS_NOEXEC, None),
)
CGROUP_ROOT: Final = "/sys/fs/cgroup"
SYS_PORTS: Final = "/sys/class/virtio-ports"
DEV_PORTS: Final = "/dev/virtio-ports"
_SIOCGIFFLAGS: Final = 0x8913
_SIOCSIFFLAGS: Final = 0x8914
_IFF_UP: Final = 0x1
_IFREQ: Final = struct.Struct("16sH22x")


def mount_filesystems() -> None:
    for source, target, fstype, flags, data in MOUNTS:
        os.makedirs(target, mode=0o755, exist_ok=True)
        try:
            linux.mount(source, target, fstype, flags, data)
        except OSError as exc:
            # The kernel may have mounted devtmpfs already (DEVTMPFS_MOUNT).
            if exc.errno != errno.EBUSY:
                raise
    if not os.path.exists("/dev/ptmx"):
        os.symlink("pts/ptmx", "/dev/ptmx")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        if not os.path.lexists(f"/dev/{name}"):
            os.symlink(target, f"/dev/{name}")


def enable_controllers(root: str = CGROUP_ROOT) -> None:
    """Delegate every available controller, so crun can use any of them for containers.

    One write per controller: a controller the kernel refuses must not keep
    the others off.
    """
    with open(os.path.join(root, "cgroup.controllers")) as f:
        controllers = f.read().split()
    for controller in controllers:
        try:
            with open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
                f.write(f"+{controller}")
        except OSError as exc:
            log.warning("cannot enable cgroup controller %s: %s", controller, exc)


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = _IFREQ.pack(b"lo", 0)
        _, flags = _IFREQ.unpack(fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request))
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))


def kernel_arg(name: str, cmdline_path: str = "/proc/cmdline") -> str | None:
    """The value of ``name=`` on the kernel command line, if given."""
    with open(cmdline_path) as f:
        for token in f.read().split():
            key, sep, value = token.partition("=")
            if sep and key == name:
                return value
    return None


def link_virtio_ports(sys_dir: str = SYS_PORTS, dev_dir: str = DEV_PORTS) -> None:
    """Make ``/dev/virtio-ports/<name>`` -> ``../vportNpM`` links, as udev's rule would."""
    if not os.path.isdir(sys_dir):
        return
    os.makedirs(dev_dir, mode=0o755, exist_ok=True)
    for device in os.listdir(sys_dir):
        try:
            with open(os.path.join(sys_dir, device, "name")) as f:
                name = f.read().strip()
        except OSError:
            continue
        if not name or "/" in name or name in (".", ".."):
            continue  # a port name is the host's input too
        link = os.path.join(dev_dir, name)
        if not os.path.lexists(link):
            os.symlink(f"../{device}", link)


def open_port(name: str, timeout: float = 10.0) -> int:
    """Open the named virtio port, waiting (bounded) for the device to be probed."""
    path = os.path.join(DEV_PORTS, name)
    deadline = time.monotonic() + timeout
    while True:
        link_virtio_ports()
        try:
            return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                raise AgentError(f"virtio port {name!r} did not appear in {timeout:g}s") from None
        # Before the event loop exists, and bounded: polling is the only
        # notice of a probed port without udev.
        time.sleep(0.05)


def root_is_initramfs() -> bool:
    """Whether / is the kernel's initial rootfs (which pivot_root cannot leave)."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4] == "/":
                    fstype = fields[fields.index("-") + 1]
                    return fstype in ("rootfs", "ramfs", "tmpfs") and fields[2].startswith("0:")
    except (OSError, ValueError):
        pass
    return False
