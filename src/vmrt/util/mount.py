"""mount(2), umount2(2) and unshare(2) through libc: no `mount` binary, no shell."""

from __future__ import annotations

import ctypes
import os

MS_RDONLY = 0x1
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
CLONE_NEWNS = 0x00020000

# The libc this process runs on (already loaded): ctypes.util.find_library would import
# ≈13 ms of modules and run `ldconfig -p`, on the path of every VM's boot.
_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None), f"mount {source} on {target}")


def bind(source: str, target: str, *, recursive: bool = True) -> None:
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))


def umount(target: str, *, detach: bool = True) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH if detach else 0), f"umount {target}")


def private_mount_namespace() -> None:
    """Enter a mount namespace of our own that still receives the host's new mounts
    (slave propagation) but never sends ours back: what we bind-mount there for a
    share cannot leak onto the host, and vanishes when the last holder exits."""
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    mount("none", "/", None, MS_REC | MS_SLAVE)


def mounts_under(path: str | os.PathLike[str]) -> list[str]:
    """Mount points strictly below `path` in this process's namespace (the tree a
    cleanup must unmount before it may delete)."""
    base = os.path.realpath(path).rstrip("/") + "/"
    try:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4].replace("\\040", " ") for line in f]
    except OSError:
        return []
    return [p for p in points if (p + "/").startswith(base)]
