"""Start QEMU and watch it die.

QEMU gets its QMP and agent sockets as already-connected fds (a
socketpair each), so there is no window in which it listens on a path that
someone else could connect to first, and no polling for a socket to appear.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmrt.errors import VMLaunchError
from vmrt.util.pdeath import die_with_parent


@dataclass
class QemuProcess:
    popen: subprocess.Popen[bytes]
    qmp: socket.socket
    agent: socket.socket
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, limit: int = 2000) -> str:
        try:
            data = self.log.read_bytes()[-limit:]
        except OSError:
            return ""
        return data.decode(errors="replace").strip()


def socket_pairs() -> tuple[tuple[socket.socket, socket.socket], tuple[socket.socket, socket.socket]]:
    return socket.socketpair(), socket.socketpair()


def launch(argv: list[str], *, qemu_fds: list[int], log: Path) -> subprocess.Popen[bytes]:
    """Run QEMU with only `qemu_fds` inherited; its stdout/stderr go to `log`."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        # QEMU dies with the monitor (see util/pdeath.py). The monitor forks QEMU from its
        # only thread, before any worker thread exists, so a preexec_fn is safe here.
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                pass_fds=qemu_fds, close_fds=True,
                                preexec_fn=die_with_parent())  # noqa: PLW1509
    except OSError as exc:
        raise VMLaunchError(f"cannot run {argv[0]}: {exc.strerror}") from exc
    finally:
        os.close(fd)
