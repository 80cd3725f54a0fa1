"""`exec` as conmon (detached, reaped through --pid-file) and CRI-O's streaming path
(foreground, stdio or a terminal) use it. Runs unchanged against runc and vmrt."""

from __future__ import annotations

import array
import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.runtime import Runtime

pytestmark = pytest.mark.vm

SLEEP = ["sleep", "100000"]

# Plays conmon for an exec: subreaper, `exec --detach --pid-file`, then waitpid on that pid.
CONMON_EXEC = r"""
import ctypes, json, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
argv, pid_file = json.loads(sys.argv[1]), sys.argv[2]
rc = subprocess.run(argv, stdin=subprocess.DEVNULL).returncode
pid = int(open(pid_file).read())
_, status = os.waitpid(pid, 0)
print(json.dumps({"rc": rc, "exited": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                  "signaled": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}))
"""


@pytest.fixture
def running(runtime: Runtime, bundle, new_id) -> Iterator[str]:
    cid = new_id()
    res = runtime.run("run", "--detach", "--bundle", str(bundle(SLEEP)), cid)
    assert res.returncode == 0, res
    yield cid
    runtime.run("delete", "--force", cid)


def test_exec_output_and_exit_code(runtime: Runtime, running: str) -> None:
    res = runtime.run("exec", running, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (res.returncode, res.stdout, res.stderr) == (7, "out\n", "err\n"), res


def test_exec_stdin_and_eof(runtime: Runtime, running: str) -> None:
    assert runtime.run("exec", running, "cat", input="abc\n").stdout == "abc\n"
    # /dev/null cannot be polled: its EOF must still reach the process
    res = runtime.run("exec", running, "sh", "-c", "cat; echo eof-seen")
    assert (res.returncode, res.stdout) == (0, "eof-seen\n"), res


def test_exec_env_cwd_user(runtime: Runtime, running: str) -> None:
    res = runtime.run("exec", "--env", "FOO=bar", "--cwd", "/tmp", "--user", "65534:65534",
                      running, "sh", "-c", 'echo "$FOO $(pwd) $(id -u):$(id -g)"')
    assert res.stdout == "bar /tmp 65534:65534\n", res


def test_exec_process_file(runtime: Runtime, running: str, tmp_path: Path) -> None:
    process = {"args": ["sh", "-c", "echo from-process-json; exit 4"], "cwd": "/",
               "env": ["PATH=/bin:/usr/bin"], "user": {"uid": 0, "gid": 0}, "terminal": False}
    (tmp_path / "process.json").write_text(json.dumps(process))
    res = runtime.run("exec", "--process", str(tmp_path / "process.json"), running)
    assert (res.returncode, res.stdout) == (4, "from-process-json\n"), res


@pytest.mark.parametrize(("cmd", "want"), [
    ("exit 3", {"exited": 3, "signaled": None}),
    ("kill -9 $$", {"exited": None, "signaled": 9}),
])
def test_exec_detached_is_reaped_like_conmon(runtime: Runtime, running: str, tmp_path: Path,
                                             cmd: str, want: dict[str, int | None]) -> None:
    pid_file = tmp_path / "exec.pid"
    argv = runtime.argv("exec", "--detach", "--pid-file", str(pid_file), running, "sh", "-c", cmd)
    out = subprocess.run([sys.executable, "-c", CONMON_EXEC, json.dumps(argv), str(pid_file)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert json.loads(out) == {"rc": 0, **want}


def test_exec_into_stopped_or_unknown(runtime: Runtime, running: str) -> None:
    runtime.ok("kill", running, "KILL")
    assert runtime.wait_status(running, "stopped") == "stopped"
    res = runtime.run("exec", running, "true")
    assert res.returncode == 255
    assert res.stderr.strip().endswith("cannot exec in a stopped container"), res
    res = runtime.run("exec", "nosuch", "true")
    assert res.returncode == 255 and "container does not exist" in res.stderr, res
    res = runtime.run("exec", running + "x", "true")
    assert res.returncode == 255, res


def test_exec_missing_program(runtime: Runtime, running: str) -> None:
    res = runtime.run("exec", running, "no-such-program")
    assert res.returncode == 255
    assert 'exec: "no-such-program": executable file not found in $PATH' in res.stderr, res


def _recv_master(listener: socket.socket) -> int:
    conn, _ = listener.accept()
    with conn:
        fds = array.array("i")
        _, anc, _, _ = conn.recvmsg(1024, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: fds.itemsize])
        return fds[0]


def _read_until(fd: int, needle: bytes, timeout: float = 60) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"never saw {needle!r} in {buf!r}")
        try:
            buf += os.read(fd, 4096)
        except OSError:
            break
    return buf


def test_exec_tty_resize_and_interrupt(runtime: Runtime, running: str, tmp_path: Path) -> None:
    """conmon's path: the pty master comes over --console-socket; a resize on it reaches
    the process's terminal, and ^C interrupts the foreground program as on a local tty."""
    sock_path = str(tmp_path / "console.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)
    pid_file = tmp_path / "pid"
    res = runtime.run("exec", "--detach", "--tty", "--console-socket", sock_path,
                      "--pid-file", str(pid_file), running, "sh")
    assert res.returncode == 0, res
    master = _recv_master(listener)
    try:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
        time.sleep(0.5)  # the shim relays SIGWINCH asynchronously
        os.write(master, b"stty size\n")
        assert b"33 111" in _read_until(master, b"33 111")
        os.write(master, b"sleep 1000; echo after-sleep\n")
        time.sleep(1)
        os.write(master, b"\x03")  # ^C
        os.write(master, b"echo done-$((40+2))\n")
        assert b"done-42" in _read_until(master, b"done-42")
        os.write(master, b"exit\n")
    finally:
        os.close(master)
        listener.close()


def test_exec_large_stdin_is_not_lost(runtime: Runtime, running: str) -> None:
    """8 MiB through a process that reads slowly: input waits, it is never dropped."""
    data = bytes(range(256)) * (32 << 10)
    res = runtime.run("exec", running, "sh", "-c", "sleep 1; wc -c", input=data)
    assert (res.returncode, res.stdout.strip()) == (0, str(len(data))), res
