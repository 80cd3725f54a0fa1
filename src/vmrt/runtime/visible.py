"""Check that the pod VM's monitor sees the files a new container brings.

The monitor lives in a mount namespace of its own, copied from the caller that
booted the VM and kept a slave of it: mounts a caller makes later (a member's
rootfs overlay, its volumes) reach the monitor only if that caller's mounts
propagate, as they do from a shared `/` (a systemd host). A caller whose
namespace is private (a containerd under `PrivateMounts=`, `unshare -m
--propagation private`) mounts them where the monitor cannot see: it would
share an empty directory, and crun in the guest would fail with a misleading
"executable file not found". So compare what this process sees with what the
monitor sees through /proc/<monitor>/root (two stats per path), and name the
real cause instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from vmrt.errors import SandboxError


def require_visible(monitor_pid: int, paths: Iterable[str]) -> None:
    """Raise SandboxError for the first of `paths` (absolute) that the monitor sees as a
    different file than this process does."""
    for path in paths:
        try:
            mine = os.stat(path)
        except OSError:
            continue  # a missing source is reported where it is used
        try:
            theirs = os.stat(f"/proc/{monitor_pid}/root{os.path.normpath(path)}")
            same = (theirs.st_dev, theirs.st_ino) == (mine.st_dev, mine.st_ino)
        except OSError:
            same = False
        if not same:
            raise SandboxError(
                f"{path} is not visible to the pod VM's monitor: it was mounted in a "
                "mount namespace whose mounts do not propagate to the monitor's "
                "(make the caller's / shared: mount --make-rshared /)")
