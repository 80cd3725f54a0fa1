"""Run containerd in a private mount namespace with a tmpfs on /run/containerd.

containerd's runc v2 shims put their sockets under /run/containerd/s whatever the
configuration says, so a test's containerd must not share /run/containerd with the
host's (or another test session's).  This script does the `unshare --mount
--propagation private` + `mount -t tmpfs` + `exec containerd` dance without a shell:

    python private_containerd.py CONTAINERD_BINARY [containerd args...]

The mount point /run/containerd is created on the host if it is missing (an empty
directory; it is never removed again because another session's namespace may hold a
mount on it).

After cutting the namespace off the host (rprivate), `/` is made rshared again, in a
peer group of its own: like a systemd host, where containerd's rootfs mounts propagate
into mount namespaces copied later from containerd's (a pod VM monitor's, which must see
the rootfs of a member container mounted after it started).  Nothing propagates back to
the host.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MOUNTPOINT = "/run/containerd"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: private_containerd.py CONTAINERD [ARGS...]", file=sys.stderr)
        return 2
    libc = _libc()
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_char_p]
    os.makedirs(MOUNTPOINT, exist_ok=True)
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / rprivate")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_SHARED, None), "make / rshared")
    _check(libc.mount(b"tmpfs", MOUNTPOINT.encode(), b"tmpfs", 0, b"mode=711"),
           f"mount tmpfs on {MOUNTPOINT}")
    os.execv(argv[1], argv[1:])
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
