"""Warming a guest up: one throwaway container through crun before any host container.

The first container a fresh guest runs pays for what nothing has touched yet:
under TCG every kernel and crun path it takes (namespaces, mounts, cgroups,
pivot_root, seccomp) is translated for the first time, and crun's libraries
are read from the root disk. Measured here: `crun create` of the first
container ≈0.45 s, of the next ones ≈0.12 s; `crun start` ≈0.19 s, then
≈0.05 s. A warm pool VM (the host's `monitor/pooled.py` asks for this once,
after the hello) pays that while it waits, not while a pod starts.

The container is the agent's own, not the host's: its root is an empty
directory on /run (tmpfs) with the guest's static busybox bound in, and
nothing of it stays (crun removes its state and cgroup; the bundle goes too).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Final

from vmrt_agent.containers import Containers
from vmrt_agent.errors import AgentError

WARMUP_DIR: Final = "/run/vmrt/warmup"
CONTAINER_ID: Final = "vmrt-warmup"
BUSYBOX: Final = "/bin/busybox"
TIMEOUT: Final = 60.0


def spec(rootfs: str) -> dict[str, Any]:
    """A container shaped like a host's: its own pid/ipc/uts/mount namespaces, the usual
    mounts, a cgroup under /vmrt like every container's, and no network namespace."""
    caps = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"]
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0},
                    "args": [BUSYBOX, "true"], "env": ["PATH=/bin"], "cwd": "/",
                    "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
                    "noNewPrivileges": True},
        "root": {"path": rootfs, "readonly": False},
        "hostname": "warmup",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": BUSYBOX, "type": "bind", "source": BUSYBOX,
             "options": ["bind", "ro"]},
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "cgroupsPath": "/vmrt/" + CONTAINER_ID,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }


async def warm_up(containers: Containers) -> dict[str, Any]:
    """`crun run` the throwaway container to its exit; how long it took."""
    if not os.path.exists(BUSYBOX):
        raise AgentError(f"cannot warm up: no {BUSYBOX} in the guest")
    bundle = os.path.join(WARMUP_DIR, "bundle")
    rootfs = os.path.join(bundle, "rootfs")
    shutil.rmtree(WARMUP_DIR, ignore_errors=True)
    try:
        for d in ("proc", "dev", "sys", "bin", "tmp"):
            os.makedirs(os.path.join(rootfs, d), exist_ok=True)
        with open(os.path.join(rootfs, "bin", "busybox"), "w"):
            pass  # the bind mount's target
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(spec(rootfs), f)
        t0 = time.monotonic()
        result = await containers.run_tool(
            [*containers.runtime_argv(), "run", "--bundle", bundle, CONTAINER_ID], timeout=TIMEOUT)
        seconds = time.monotonic() - t0
    finally:
        shutil.rmtree(WARMUP_DIR, ignore_errors=True)
    if result.returncode != 0:
        text = result.stderr.decode(errors="replace").strip()[-300:]
        raise AgentError(f"the warm-up container failed: {text or result.returncode}")
    return {"seconds": round(seconds, 3)}
