"""Start a sandbox monitor, detached, and wait for its word that the VM is up.

Readiness is a handshake, never a sleep: the monitor writes one JSON line
on an inherited pipe once the agent said hello ("ok") or the boot failed
(the error, with QEMU's log tail). If it dies silently, the pipe's EOF says so.
"""

from __future__ import annotations

import json
import os
import select
import sys
import time
from typing import Any

from vmrt.errors import VMLaunchError
from vmrt.paths import Root
from vmrt.util.proc import close_fds_except


def spawn(root: Root, sandbox_id: str, *, name: str, kernel: str, initrd: str,
          kernel_cmdline: tuple[str, ...], root_image: str, accel: str, config_path: str | None,
          timeout: float, netns_fd: int | None = None) -> dict[str, Any]:
    """`netns_fd`: the pod's network namespace, where the monitor and QEMU must live."""
    rfd, wfd = os.pipe()
    spec = {
        "root": str(root.path), "sandbox_id": sandbox_id, "name": name, "kernel": kernel,
        "initrd": initrd, "kernel_cmdline": list(kernel_cmdline), "root_image": root_image,
        "accel": accel,
        "config_path": config_path, "ready_fd": wfd,
    }
    log_path = root.sandbox(sandbox_id).monitor_log
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            if netns_fd is not None:
                from vmrt.network.netns import setns

                setns(netns_fd)
            close_fds_except({wfd})
            null = os.open(os.devnull, os.O_RDWR)
            logfd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(null, 0)
            os.dup2(logfd, 1)
            os.dup2(logfd, 2)
            os.set_inheritable(wfd, True)
            from vmrt.util.mount import private_mount_namespace

            private_mount_namespace()
            os.execv(sys.executable, [sys.executable, "-I", "-m", "vmrt.monitor", json.dumps(spec)])
        except BaseException as exc:
            os.write(wfd, (json.dumps({"ok": False, "error": f"cannot start monitor: {exc}"})
                           + "\n").encode())
        os._exit(1)
    os.close(wfd)
    try:
        os.waitpid(pid, 0)
        return _read_ready(rfd, timeout)
    finally:
        os.close(rfd)


def read_ready(fd: int, timeout: float) -> dict[str, Any]:
    """The monitor's one "ready" line on `fd` (also a warm pool VM's, on the claimer's
    connection: runtime/pool.py)."""
    return _read_ready(fd, timeout)


def _read_ready(fd: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise VMLaunchError(f"the VM did not come up within {timeout:g}s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise VMLaunchError("the sandbox monitor exited before the VM came up")
        buf += chunk
    msg = json.loads(buf.split(b"\n", 1)[0])
    if not isinstance(msg, dict):
        raise VMLaunchError("the sandbox monitor sent a malformed ready message")
    if not msg.get("ok"):
        raise VMLaunchError(str(msg.get("error", "the VM did not come up")))
    return msg
