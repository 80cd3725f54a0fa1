"""More of containerd (1.6, runc v2 shim) over the runtime under test: `ctr task exec`,
`ctr run -t` on a real terminal, `ctr task kill -s SIGTERM`, and a pod the way the CRI
plugin asks for one (`io.kubernetes.cri.*` annotations), all through `ctr --runc-binary`.

Same private containerd as tests/compat/test_containerd.py (its fixtures, one daemon per
module).  ctr 1.6 can set OCI annotations (`--annotation`) and join namespaces
(`--with-ns`), so the CRI pod goes through the real shim too: the shim groups the sandbox
and its member into one shim process by `io.kubernetes.cri.sandbox-id`, as it does for
the CRI plugin, and calls `<runtime> --root /run/containerd/runc/<ns> create --bundle ...`
for each.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from test_containerd import (  # noqa: F401  (fixtures)
    CTR,
    IMAGE,
    NAMESPACE,
    Containerd,
    containerd,
    ctrd,
    wait_task,
)

from helpers import procs

pytestmark = pytest.mark.compat

SLEEP = ["sleep", "100000"]


def exec_args(cd: Containerd, name: str, exec_id: str, *extra: str) -> list[str]:
    return ["task", "exec", "--fifo-dir", str(cd.fifo_dir), "--exec-id", exec_id, *extra,
            name]


def kill_and_delete(cd: Containerd, name: str) -> None:
    cd.ok("task", "kill", "--signal", "SIGKILL", name)
    assert wait_task(cd, name, "STOPPED", cd.runtime.exit_timeout) == "STOPPED"
    cd.ok("task", "delete", name)
    cd.ok("container", "rm", name)


# -- ctr task exec --------------------------------------------------------------------------

def test_task_exec_output_and_exit_code(ctrd: Containerd) -> None:  # noqa: F811
    name = "exec-target"
    ctrd.ok(*ctrd.run_args("--detach"), IMAGE, name, *SLEEP)
    assert wait_task(ctrd, name, "RUNNING", 60) == "RUNNING"
    res = ctrd.ctr(*exec_args(ctrd, name, "e1"), "sh", "-c",
                   "echo out-$((6*7)); echo err >&2; exit 7")
    assert res.returncode == 7, res
    assert res.stdout == "out-42\n", res
    assert "err" in res.stderr and "err" not in res.stdout, res
    # A second exec sees what the first left in the container, and its own code (0).
    res = ctrd.ctr(*exec_args(ctrd, name, "e2"), "sh", "-c",
                   "echo hi > /tmp/mark; cat /tmp/mark")
    assert (res.returncode, res.stdout) == (0, "hi\n"), res
    res = ctrd.ctr(*exec_args(ctrd, name, "e3"), "cat", "/tmp/mark")
    assert (res.returncode, res.stdout) == (0, "hi\n"), res
    # Execs are gone; the task still runs.
    assert ctrd.tasks().get(name) == "RUNNING"
    kill_and_delete(ctrd, name)


# -- ctr run -t under a real pty --------------------------------------------------------------

class PtySession:
    """`argv` on a new pty: the test holds the master like a terminal emulator."""

    def __init__(self, argv: list[str], rows: int, cols: int) -> None:
        self.pid, self.master = pty.fork()
        if self.pid == 0:  # pragma: no cover - child
            with contextlib.suppress(Exception):
                os.execv(argv[0], argv)
            os._exit(127)
        self.resize(rows, cols)
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        """What a terminal emulator does when its window changes: the kernel then sends
        SIGWINCH to the pty's foreground process group (ctr), which resizes the task."""
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def expect(self, want: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while want not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"never saw {want!r}; got {self.seen[-600:]!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: the slave side is closed
                raise AssertionError(f"pty closed before {want!r}; got {self.seen!r}") \
                    from None
            if not chunk:
                raise AssertionError(f"pty EOF before {want!r}; got {self.seen!r}")
            self.seen += chunk
        return self.seen

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            # drain so that the child never blocks on a full pty
            with contextlib.suppress(OSError):
                if select.select([self.master], [], [], 0.05)[0]:
                    self.seen += os.read(self.master, 4096)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.master)
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                os.close(self.master)
                raise AssertionError(f"still running after {timeout}s; got {self.seen!r}")


def test_run_tty_sees_window_size(ctrd: Containerd) -> None:  # noqa: F811
    assert CTR
    name = "tty-run"
    argv = [CTR, "--address", str(ctrd.sock), "--namespace", NAMESPACE,
            *ctrd.run_args("--rm", "-t"), IMAGE, name, "sh"]
    s = PtySession(argv, 40, 100)
    t = ctrd.timeout
    try:
        s.expect(b"# ", t)  # the prompt: typing before it would be lost to the shell
        s.send(b"tty; stty size; echo ok-$((6*7))\n")
        out = s.expect(b"ok-42", t)
        assert b"/dev/pts/" in out or b"/dev/console" in out, out
        assert b"40 100" in out, out
        s.resize(33, 77)  # while it runs: SIGWINCH -> ctr -> shim -> runtime -> pty
        s.seen = b""
        s.send(b"stty size; echo ok-$((7*7))\n")
        out = s.expect(b"ok-49", t)
        assert b"33 77" in out, f"the resize did not reach the container: {out!r}"
        s.seen = b""
        s.send(b"exit 3\n")
        assert s.wait(t) == 3, "ctr run -t exits with the shell's code"
    finally:
        if procs.pid_alive(s.pid):
            os.kill(s.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(s.pid, 0)
    assert name not in ctrd.containers()


def test_task_exec_tty(ctrd: Containerd) -> None:  # noqa: F811
    """`ctr task exec -t` on a pty: a terminal in the exec, its size, its exit code."""
    assert CTR
    name = "tty-exec"
    ctrd.ok(*ctrd.run_args("--detach"), IMAGE, name, *SLEEP)
    assert wait_task(ctrd, name, "RUNNING", 60) == "RUNNING"
    argv = [CTR, "--address", str(ctrd.sock), "--namespace", NAMESPACE,
            *exec_args(ctrd, name, "tty1", "-t"), "sh"]
    s = PtySession(argv, 24, 132)
    try:
        s.expect(b"# ", ctrd.timeout)
        s.send(b"stty size; [ -t 0 ] && echo is-a-tty-$((5*5))\n")
        out = s.expect(b"is-a-tty-25", ctrd.timeout)
        assert b"24 132" in out, out
        s.send(b"exit 4\n")
        assert s.wait(ctrd.timeout) == 4
    finally:
        if procs.pid_alive(s.pid):
            os.kill(s.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(s.pid, 0)
    kill_and_delete(ctrd, name)


# -- ctr task kill -s SIGTERM -------------------------------------------------------------------

TRAPS_TERM = ("trap 'echo got-TERM; exit 42' TERM; echo ready; "
              "while :; do sleep 1000 & wait $!; done")


def test_kill_sigterm_trapped(ctrd: Containerd, tmp_path: Path) -> None:  # noqa: F811
    """PID 1 of the container traps TERM: `ctr task kill -s SIGTERM` reaches the handler,
    whose exit code is the task's; the foreground `ctr run` returns it."""
    assert CTR
    name = "trap-term"
    out_path, err_path = tmp_path / "out", tmp_path / "err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        run = subprocess.Popen(
            [CTR, "--address", str(ctrd.sock), "--namespace", NAMESPACE,
             *ctrd.run_args("--rm"), IMAGE, name, "sh", "-c", TRAPS_TERM],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        # The handler is installed before "ready" is printed: only then may TERM come.
        assert procs.wait_until(lambda: b"ready" in out_path.read_bytes(), ctrd.timeout,
                                interval=0.05), err_path.read_text()
        ctrd.ok("task", "kill", "--signal", "SIGTERM", name)
        assert run.wait(timeout=ctrd.runtime.exit_timeout) == 42, err_path.read_text()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert out_path.read_text() == "ready\ngot-TERM\n"
    assert name not in ctrd.containers()


# -- the CRI plugin's pod: io.kubernetes.cri.* annotations -------------------------------------

CRI_SANDBOX = "crisb"
CRI_MEMBER = "crictr"


def cri_annotations(kind: str, container_name: str) -> list[str]:
    """What containerd's CRI plugin (1.6) puts on a sandbox and on its containers."""
    ann = {
        "io.kubernetes.cri.container-type": kind,
        "io.kubernetes.cri.sandbox-id": CRI_SANDBOX,
        "io.kubernetes.cri.sandbox-name": "replay",
        "io.kubernetes.cri.sandbox-namespace": "default",
        "io.kubernetes.cri.sandbox-uid": "0f2c1e3a-0000-4000-8000-000000000002",
    }
    if kind == "sandbox":
        ann["io.kubernetes.cri.sandbox-log-directory"] = "/var/log/pods/replay"
    else:
        ann["io.kubernetes.cri.container-name"] = container_name
        ann["io.kubernetes.cri.image-name"] = IMAGE
    return [arg for k, v in ann.items() for arg in ("--annotation", f"{k}={v}")]


def sandboxes(cd: Containerd) -> dict[str, dict[str, Any]]:
    """sandbox.json of every pod VM under the shim's --root, read in containerd's mount
    namespace."""
    d = cd.private_path(f"/run/containerd/runc/{NAMESPACE}/sandboxes")
    if not d.is_dir():
        return {}
    out = {}
    for sb in d.iterdir():
        with contextlib.suppress(OSError, ValueError):
            out[sb.name] = json.loads((sb / "sandbox.json").read_text())
    return out


def test_cri_pod_annotations(ctrd: Containerd) -> None:  # noqa: F811
    """The sandbox serves on the pod's localhost; the member joins its namespaces by
    /proc/<sandbox pid>/ns/* as the CRI plugin does, and reaches it.  With vmrt both are
    one VM: one sandbox whose members are the two containers."""
    cd = ctrd
    qemu = 0
    try:
        cd.ok(*cd.run_args("--detach", *cri_annotations("sandbox", "")), IMAGE, CRI_SANDBOX,
              "sh", "-c", "mkdir -p /tmp/www && echo pod-lo-ok > /tmp/www/index.html && "
                          "exec httpd -f -p 8080 -h /tmp/www")
        assert wait_task(cd, CRI_SANDBOX, "RUNNING", 60) == "RUNNING"
        sb_pid = int(cd.ok("task", "ls").stdout.split(CRI_SANDBOX, 1)[1].split()[0])
        ns = [arg for kind, file in (("network", "net"), ("ipc", "ipc"), ("uts", "uts"))
              for arg in ("--with-ns", f"{kind}:/proc/{sb_pid}/ns/{file}")]
        cd.ok(*cd.run_args("--detach", *cri_annotations("container", "web-client"), *ns),
              IMAGE, CRI_MEMBER, *SLEEP)
        assert wait_task(cd, CRI_MEMBER, "RUNNING", 60) == "RUNNING"
        if cd.runtime.is_vmrt:
            pods = sandboxes(cd)
            assert list(pods) == [CRI_SANDBOX], f"one VM for the pod: {list(pods)}"
            assert set(pods[CRI_SANDBOX]["members"]) == {CRI_SANDBOX, CRI_MEMBER}, pods
            qemu = pods[CRI_SANDBOX]["qemu"]["pid"]
            assert procs.pid_alive(qemu)
        # The member reaches the sandbox's server on the pod's loopback (the server may
        # still be starting).
        got: list[subprocess.CompletedProcess[str]] = []

        def reached() -> bool:
            got[:] = [cd.ctr(*exec_args(cd, CRI_MEMBER, f"wget{len(got)}-{time.monotonic_ns()}"),
                             "wget", "-q", "-O", "-", "http://127.0.0.1:8080/")]
            return got[0].returncode == 0 and got[0].stdout == "pod-lo-ok\n"

        assert procs.wait_until(reached, 60, interval=0.5), got
        assert CRI_MEMBER in cd.runtime_state() and CRI_SANDBOX in cd.runtime_state()
        kill_and_delete(cd, CRI_MEMBER)
        if cd.runtime.is_vmrt:
            pods = sandboxes(cd)
            assert pods[CRI_SANDBOX]["members"] == [CRI_SANDBOX], "the member left the VM"
            assert procs.pid_alive(qemu), "the pod's VM outlives its member"
        kill_and_delete(cd, CRI_SANDBOX)
    finally:
        for name in (CRI_MEMBER, CRI_SANDBOX):
            if name in cd.tasks():
                cd.ctr("task", "kill", "--signal", "SIGKILL", name)
                cd.ctr("task", "delete", "--force", name)
            if name in cd.containers():
                cd.ctr("container", "rm", name)
    assert sandboxes(cd) == {}, "the pod's VM is gone with its sandbox"
    if cd.runtime.is_vmrt:
        assert procs.wait_gone([qemu], 30) == []
