"""Mounting a container's share at ``/run/vmrt/shares/<id>``.

In a VM the share is a virtio-fs device the host hot-plugged just before
``create_container``.  The PCI device is probed asynchronously and there is no
udev in the guest to announce it, so the mount is tried again on each kernel
uevent (see ``uevents``) until the tag is known, within a bound.  Outside a VM
(tests, development) shares are bind mounts of ``<source dir>/<tag>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Final

from vmrt_agent import linux, uevents
from vmrt_agent.errors import AgentError

log = logging.getLogger(__name__)

MountShare = Callable[[str, str], Awaitable[None]]
UnmountShare = Callable[[str], None]

#: How long a hot-plugged virtio-fs device gets to appear.
MOUNT_TIMEOUT: Final = 5.0
#: The longest wait between two tries, whatever the cues.
RETRY_S: Final = 0.25
#: errnos virtiofs mount returns while the tag is not (yet) registered.
_NOT_YET: Final = frozenset({errno.EINVAL, errno.ENOENT, errno.ENODEV, errno.ENXIO})


async def mount_virtiofs(tag: str, target: str) -> None:
    """Mount virtio-fs ``tag`` on ``target``, waiting up to MOUNT_TIMEOUT for the device.

    The tag is known once the virtiofs driver has probed the hot-plugged device,
    which the kernel announces with a uevent: each uevent is the cue to try again
    (no udev here to wait on). Polling with backoff is kept only as the fallback
    when no uevent socket can be had, and as a bound on a missed cue.
    """
    os.makedirs(target, mode=0o700, exist_ok=True)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    delay = 0.01
    with contextlib.ExitStack() as stack:
        events = uevents.subscribe()  # before the first try: no event can slip between
        if events is not None:
            stack.callback(events.close)
        while True:
            try:
                linux.mount(tag, target, "virtiofs", linux.MS_NODEV)
                return
            except OSError as exc:
                if exc.errno not in _NOT_YET or time.monotonic() >= deadline:
                    raise AgentError(f"cannot mount virtio-fs share {tag!r}: {exc}") from exc
            if events is not None:
                await events.wait(RETRY_S)
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_S)


def bind_from(source_dir: str) -> MountShare:
    """A MountShare that bind-mounts ``source_dir/<tag>``, for running outside a VM."""

    async def mount_bind(tag: str, target: str) -> None:
        source = os.path.join(source_dir, tag)
        if not os.path.isdir(source):
            raise AgentError(f"share {tag!r} does not exist in {source_dir}")
        os.makedirs(target, mode=0o700, exist_ok=True)
        linux.mount(source, target, None, linux.MS_BIND)

    return mount_bind


def unmount(target: str) -> None:
    """Detach the share and remove its (then empty) mount point.

    Only ever rmdir: if the unmount failed, the directory still shows the
    host's files, and those must not be deleted.
    """
    try:
        linux.umount2(target, linux.MNT_DETACH)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not mounted
            log.warning("unmounting %s: %s", target, exc)
    try:
        os.rmdir(target)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("removing mount point %s: %s", target, exc)
