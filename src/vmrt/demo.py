"""`make demo`: a busybox container in its own VM, on built-in defaults.

Builds a bundle from the host's busybox-static, runs it with `vmrt run`
and prints what the container sees: its kernel (the guest's, not the
host's), its CPU and memory, and its hostname.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = (
    "echo \"hello from a container in a vmrt VM\"; "
    "echo \"kernel: $(uname -r) (host: HOST)\"; "
    "echo \"cpus: $(nproc), memory: $(grep MemTotal /proc/meminfo | tr -s ' ' | cut -d' ' -f2) kB\"; "
    "echo \"hostname: $(hostname)\""
)


def make_bundle(path: Path, args: list[str], busybox: str = "/bin/busybox") -> Path:
    rootfs = path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "tmp", "etc", "run"):
        (rootfs / d).mkdir(exist_ok=True)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    config = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": args,
                    "env": ["PATH=/bin", "TERM=xterm"], "cwd": "/",
                    "capabilities": {k: ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]
                                     for k in ("bounding", "effective", "permitted")},
                    "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "vmrt-demo",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]},
    }
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


def main() -> int:
    vmrt = str(Path(sys.executable).with_name("vmrt"))
    with tempfile.TemporaryDirectory(prefix="vmrt-demo-") as tmp:
        bundle = make_bundle(Path(tmp) / "bundle", ["sh", "-c", SCRIPT.replace("HOST", os.uname().release)])
        root = Path(tmp) / "state"
        proc = subprocess.run([vmrt, "--root", str(root), "run", "--bundle", str(bundle),
                               "vmrt-demo"], check=False)
        return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
