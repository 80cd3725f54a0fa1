"""Busybox root filesystems and OCI bundles for the runtime tests.

Everything here is plain file manipulation: no runtime is called, so the same bundles
serve runc today and vmrt tomorrow.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\nnobody:x:65534:\n"


def busybox_applets(busybox: Path = BUSYBOX) -> list[str]:
    out = subprocess.run([str(busybox), "--list"], check=True, capture_output=True, text=True)
    return [a for a in out.stdout.split() if a and "/" not in a]


def build_busybox_rootfs(dest: Path, busybox: Path = BUSYBOX) -> Path:
    """Make a minimal root filesystem at `dest`: /bin/busybox and one symlink per applet,
    /etc/passwd and /etc/group with root and nobody, empty /proc /sys /dev /tmp."""
    if not busybox.is_file():
        raise FileNotFoundError(f"{busybox} missing: apt-get install busybox-static")
    dest.mkdir(parents=True, exist_ok=True)
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var"):
        (dest / d).mkdir(exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    target = dest / "bin" / "busybox"
    shutil.copy2(busybox, target)
    target.chmod(0o755)
    for applet in busybox_applets(busybox):
        link = dest / "bin" / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")
    (dest / "etc" / "passwd").write_text(PASSWD)
    (dest / "etc" / "group").write_text(GROUP)
    (dest / "etc" / "hostname").write_text("vmrt-test\n")
    return dest


def copy_rootfs(src: Path, dest: Path) -> Path:
    """A private copy (symlinks kept as symlinks, files really copied) so that a test
    writing into its rootfs cannot disturb another test."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


_SPEC_TEMPLATE: dict[str, Any] = {
    "ociVersion": "1.0.2-dev",
    "process": {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh"],
        "env": [DEFAULT_PATH, "TERM=xterm"],
        "cwd": "/",
        "capabilities": {
            k: ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            for k in ("bounding", "effective", "permitted", "ambient")
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": False},
    "hostname": "vmrt-test",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
    ],
    "linux": {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [
            {"type": "pid"},
            {"type": "network"},
            {"type": "ipc"},
            {"type": "uts"},
            {"type": "mount"},
        ],
        "maskedPaths": [
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
            "/proc/scsi",
        ],
        "readonlyPaths": [
            "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
        ],
    },
}


def make_spec(
    args: list[str],
    *,
    terminal: bool = False,
    env: list[str] | None = None,
    cwd: str = "/",
    cgroups_path: str | None = None,
    annotations: dict[str, str] | None = None,
    namespaces: list[str] | None = None,
    rootfs: str = "rootfs",
    readonly: bool = False,
) -> dict[str, Any]:
    """A config.json like `runc spec` writes, with the process the test asks for."""
    spec = copy.deepcopy(_SPEC_TEMPLATE)
    spec["process"]["args"] = list(args)
    spec["process"]["terminal"] = terminal
    spec["process"]["cwd"] = cwd
    if env is not None:
        spec["process"]["env"] = list(env)
    spec["root"] = {"path": rootfs, "readonly": readonly}
    if cgroups_path is not None:
        spec["linux"]["cgroupsPath"] = cgroups_path
    if annotations:
        spec["annotations"] = dict(annotations)
    if namespaces is not None:
        spec["linux"]["namespaces"] = [{"type": ns} for ns in namespaces]
    return spec


def write_bundle(
    bundle: Path, rootfs_src: Path | None, spec: dict[str, Any] | None
) -> Path:
    """Create `bundle` with its own copy of `rootfs_src` (if any) and config.json (if any)."""
    bundle.mkdir(parents=True, exist_ok=True)
    if rootfs_src is not None:
        copy_rootfs(rootfs_src, bundle / "rootfs")
    if spec is not None:
        (bundle / "config.json").write_text(json.dumps(spec, indent=2))
    return bundle


def edit_config(bundle: Path, edit: Any) -> dict[str, Any]:
    """Load config.json, let `edit(spec)` change it in place, write it back."""
    path = bundle / "config.json"
    spec = json.loads(path.read_text())
    edit(spec)
    path.write_text(json.dumps(spec, indent=2))
    return spec

