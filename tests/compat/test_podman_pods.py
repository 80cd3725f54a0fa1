"""podman pods and exec through the runtime under test: one VM per pod, `podman exec`
with pipes and with a real terminal, `podman run -it`."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
from test_podman import IMAGE, Podman, pm, podman  # noqa: F401  (fixtures)

pytestmark = pytest.mark.compat


def qemu_count() -> int:
    """VMs under vmrt's default root, which podman uses (other tests use private roots)."""
    out = subprocess.run(["pgrep", "-c", "-f", "qemu-system-x86_64 .*/run/vmrt/sandboxes/"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return int(out or 0)


def test_pod_is_one_vm(pm: Podman) -> None:  # noqa: F811
    if not pm.runtime.is_vmrt:
        pytest.skip("one VM per pod is what vmrt adds; runc has no VM to count")
    before = qemu_count()
    pod = "vmrtpod"
    pm.ok("pod", "create", "--name", pod, "--network", "none", "--infra-image", IMAGE,
          "--infra-command", "sleep 100000")
    try:
        pm.ok("pod", "start", pod)
        writer = pm.ok("run", "--runtime", pm.runtime.binary, "-d", "--pod", pod, IMAGE, "sh",
                       "-c", "echo shared-by-pod > /dev/shm/token; sleep 100000").stdout.strip()
        reader = pm.ok("run", "--runtime", pm.runtime.binary, "-d", "--pod", pod, IMAGE, "sh",
                       "-c", "while [ ! -s /dev/shm/token ]; do sleep 0.1; done; "
                             "cat /dev/shm/token; sleep 100000").stdout.strip()
        pm.container_ids |= {writer, reader}
        assert qemu_count() - before == 1, "the pod's infra and both members share one VM"
        deadline = time.monotonic() + 60
        while "shared-by-pod" not in pm("logs", reader).stdout and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pm("logs", reader).stdout.strip() == "shared-by-pod"
    finally:
        pm.ok("pod", "rm", "-f", pod)
    assert qemu_count() == before, "podman pod rm -f leaves no VM"


def test_podman_exec(pm: Podman) -> None:  # noqa: F811
    cid = pm.ok(*pm.run_args("-d", IMAGE, "sleep", "100000")).stdout.strip()
    pm.container_ids.add(cid)
    res = pm("exec", cid, "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (res.returncode, res.stdout, res.stderr) == (5, "out\n", "err\n"), res
    assert pm("exec", "-i", cid, "cat", input="through stdin\n").stdout == "through stdin\n"
    pm.ok("rm", "-f", "-t", "0", cid)


def _pty_session(argv: list[str], env: dict[str, str], script: list[tuple[bytes, bytes]],
                 timeout: float) -> bytes:
    """Run argv on a new pty of 40x100; for each (send, expect) write `send`, read until
    `expect`. Returns everything read."""
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - child
        os.execvpe(argv[0], argv, env)
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    seen = b""
    try:
        for send, expect in script:
            if send:
                os.write(master, send)
            deadline = time.monotonic() + timeout
            while expect not in seen:
                ready, _, _ = select.select([master], [], [], max(0, deadline - time.monotonic()))
                if not ready:
                    raise AssertionError(f"never saw {expect!r}; got {seen[-500:]!r}")
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
    finally:
        os.close(master)
        os.waitpid(pid, 0)
    return seen


def test_podman_exec_it_sees_resize(pm: Podman, tmp_path: Path) -> None:  # noqa: F811
    cid = pm.ok(*pm.run_args("-d", IMAGE, "sleep", "100000")).stdout.strip()
    pm.container_ids.add(cid)
    out = _pty_session(pm.argv("exec", "-it", cid, "sh"), pm.env, [
        (b"", b"# "),  # the prompt: an interactive shell drops what was typed before it
        (b"stty size\n", b"40 100"),
        (b"exit\n", b""),
    ], pm.timeout)
    assert b"40 100" in out
    pm.ok("rm", "-f", "-t", "0", cid)


def test_podman_run_it(pm: Podman) -> None:  # noqa: F811
    out = _pty_session(pm.argv(*pm.run_args("--rm", "-it", IMAGE, "sh")), pm.env, [
        (b"", b"# "),
        (b"stty size; echo ok-$((6*7))\n", b"ok-42"),
        (b"exit\n", b""),
    ], pm.timeout)
    assert b"40 100" in out
