"""What the agent needs to know about its surroundings, in one frozen value.

In the guest every default holds.  Tests and development runs on a host swap
the runtime (runc instead of crun, which refuses hybrid-cgroup hosts), the
directories (so they do not collide with the host's ``/run/vmrt``), and the
share mounting (bind mounts instead of virtio-fs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from vmrt_agent import shares


@dataclass(frozen=True, slots=True)
class AgentConfig:
    #: The OCI runtime; it is called with runc/crun's common command line.
    runtime: str = "/usr/bin/crun"
    #: The runtime's ``--root`` (its own state directory).
    runtime_root: str = "/run/crun"
    #: Holds ``shares/<id>``, ``bundles/<id>`` and ``consoles/``.
    base_dir: str = "/run/vmrt"
    mount_share: shares.MountShare = shares.mount_virtiofs
    unmount_share: shares.UnmountShare = shares.unmount
    #: How long an exited process's output gets to drain before the exit event.
    exit_drain_timeout: float = 2.0
    #: pivot_root(2) cannot leave an initramfs (the root is the special rootfs mount),
    #: so a guest booted from one runs crun with --no-pivot (MS_MOVE + chroot).
    no_pivot: bool = False
    #: Deadline of one runtime call (``create`` pulls in a whole spec's mounts).
    runtime_timeout: float = 60.0

    def share_dir(self, container_id: str) -> str:
        return os.path.join(self.base_dir, "shares", container_id)

    def bundle_dir(self, container_id: str) -> str:
        return os.path.join(self.base_dir, "bundles", container_id)

    def console_socket(self, channel: int) -> str:
        # Named by channel, not id: a unix socket path must fit in 108 bytes.
        return os.path.join(self.base_dir, "consoles", f"{channel}.sock")
