"""`make demo`: a pod VM running containers, on built-in defaults.

Builds bundles from the host's busybox-static and drives vmrt exactly as
CRI-O drives a runtime: a pod sandbox (its infra container) boots the VM,
two containers join it, one leaves a message in the pod's shared /dev/shm
for the other, an `exec` looks around inside, and deleting the sandbox
takes the VM away.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

POD = "vmrt-demo-pod"
SANDBOX = {"io.kubernetes.cri-o.ContainerType": "sandbox",
           "io.kubernetes.cri-o.SandboxName": POD}
MEMBER = {"io.kubernetes.cri-o.ContainerType": "container",
          "io.kubernetes.cri-o.SandboxID": POD}
FIRST = ('echo "[first]  kernel $(uname -r) (host HOST), hostname $(hostname), '
         '$(nproc) vCPU, $(grep MemTotal /proc/meminfo | tr -s \' \' | cut -d\' \' -f2) kB"; '
         'echo "a note left in the pod\'s /dev/shm by the first container" > /dev/shm/note')
SECOND = 'echo "[second] read from /dev/shm: $(cat /dev/shm/note)"'


def make_bundle(path: Path, args: list[str], busybox: str = "/bin/busybox",
                annotations: dict[str, str] | None = None) -> Path:
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
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]},
        "annotations": annotations or {},
    }
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


def main() -> int:
    vmrt = str(Path(sys.executable).with_name("vmrt"))
    with tempfile.TemporaryDirectory(prefix="vd", dir="/tmp") as tmp:
        base = Path(tmp)
        cli = [vmrt, "--root", str(base / "state")]

        def run(*args: str) -> int:
            return subprocess.run([*cli, *args], check=False).returncode

        pause = make_bundle(base / "pause", ["sleep", "100000"], annotations=SANDBOX)
        first = make_bundle(base / "first", ["sh", "-c", FIRST.replace("HOST", os.uname().release)],
                            annotations=MEMBER)
        second = make_bundle(base / "second", ["sh", "-c", SECOND], annotations=MEMBER)
        print(f"booting the pod VM for sandbox {POD} ...", flush=True)
        if run("run", "--detach", "--bundle", str(pause), POD) != 0:
            return 1
        try:
            codes = [run("run", "--bundle", str(first), "first"),
                     run("run", "--bundle", str(second), "second")]
            print("[exec]   processes in the sandbox container:", flush=True)
            codes.append(run("exec", POD, "ps", "-o", "pid,comm"))
            codes.append(run("debug", "ls"))
        finally:
            run("delete", "--force", POD)
        print("the sandbox is deleted and its VM is gone", flush=True)
        return max(codes)


if __name__ == "__main__":
    sys.exit(main())
