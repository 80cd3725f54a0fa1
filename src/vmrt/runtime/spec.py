"""`spec`: a starter config.json, the one runc writes (with `--rootless`, its rootless form).

Everything in it works under vmrt; it only names vmrt as the hostname.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

from vmrt.errors import ExistsError, InvalidArgumentError

_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]

DEFAULT: dict[str, Any] = {
    "ociVersion": "1.0.2-dev",
    "process": {
        "terminal": True,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"],
        "cwd": "/",
        "capabilities": {k: list(_CAPS) for k in ("bounding", "effective", "permitted",
                                                  "ambient")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "vmrt",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ],
    "linux": {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
        "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                        "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                        "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                          "/proc/sysrq-trigger"],
    },
}


def rootless(spec: dict[str, Any]) -> dict[str, Any]:
    """runc's ToRootless: a user namespace mapping the caller, /sys bound, no devices rule."""
    spec = copy.deepcopy(spec)
    linux = spec["linux"]
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
    linux["namespaces"].append({"type": "user"})
    linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
    linux.pop("resources", None)
    mounts = []
    for mount in spec["mounts"]:
        if mount["destination"] == "/sys":
            mount = {"destination": "/sys", "type": "none", "source": "/sys",
                     "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
        elif mount["type"] == "devpts":
            mount = {**mount, "options": [o for o in mount["options"] if o != "gid=5"]}
        mounts.append(mount)
    spec["mounts"] = mounts
    return spec


def write_spec(bundle: str, *, is_rootless: bool = False) -> str:
    """Write `<bundle>/config.json`; refuse to overwrite one, as runc does."""
    if not os.path.isdir(bundle):
        raise InvalidArgumentError(f"chdir {bundle}: no such file or directory")
    path = os.path.join(bundle, "config.json")
    if os.path.lexists(path):
        raise ExistsError("File config.json exists. Remove it first")
    doc = rootless(DEFAULT) if is_rootless else DEFAULT
    try:
        with open(path, "x") as f:
            f.write(json.dumps(doc, indent="\t"))
    except FileExistsError:
        raise ExistsError("File config.json exists. Remove it first") from None
    except OSError as exc:
        raise InvalidArgumentError(f"open {path}: {(exc.strerror or str(exc)).lower()}") from None
    return path
