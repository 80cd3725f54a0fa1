"""What a warm pool VM's monitor hands to the sandbox monitor it becomes.

`monitor.pooled` boots QEMU and waits; when a sandbox claims the VM it runs the
sandbox monitor in the same process, so QEMU stays its child (waitpid and the
parent-death signal still hold) and these fds carry the rest.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from dataclasses import dataclass
from typing import Any

from vmrt import protocol


@dataclass(frozen=True)
class Adoption:
    qemu_pid: int
    qmp_fd: int  # QMP, not yet negotiated: QEMU's greeting waits in the socket
    agent_fd: int  # the agent port, read up to and including the hello
    listen_fd: int  # the listening monitor.sock, renamed into the sandbox's directory

    def to_json(self) -> dict[str, int]:
        return {"qemu_pid": self.qemu_pid, "qmp_fd": self.qmp_fd, "agent_fd": self.agent_fd,
                "listen_fd": self.listen_fd}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Adoption:
        return cls(*(protocol.get_int(data, k, lo=0) for k in
                     ("qemu_pid", "qmp_fd", "agent_fd", "listen_fd")))

    def fds(self) -> tuple[int, ...]:
        return (self.qmp_fd, self.agent_fd, self.listen_fd)

    def qmp_socket(self) -> socket.socket:
        return _owned(self.qmp_fd)

    def agent_socket(self) -> socket.socket:
        return _owned(self.agent_fd)

    def listener(self) -> socket.socket:
        return _owned(self.listen_fd)


def _owned(fd: int) -> socket.socket:
    """An inherited fd as a socket this process keeps to itself (not passed on to the
    virtiofsd and helpers it starts)."""
    os.set_inheritable(fd, False)
    return socket.socket(fileno=fd)


class AdoptedQemu:
    """QEMU as a child inherited across exec: its pid, without the Popen that forked it.

    The subset of Popen the monitor uses (pid, poll, wait, kill)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def _reaped(self, status: int) -> int:
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self._reaped(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is not None:
            return self.returncode
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:  # reaped elsewhere already
            self.returncode = -1
            return -1
        return self._reaped(status)

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
