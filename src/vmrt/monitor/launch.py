"""Launch a pod VM's QEMU; light on imports, so that QEMU starts first.

QEMU's boot (≈2 s under TCG) does not need the monitor: it needs its argv and
its two socketpairs. So `python -m vmrt.monitor` launches it before importing
asyncio, QMP and the rest (≈0.1 s of imports that then overlap the boot), and
a warm pool VM's monitor (`pooled.py`) launches it the same way. Nothing here
imports more than the argv builder, the config and subprocess.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmrt.config import Config
from vmrt.monitor import vmspec
from vmrt.vm import cmdline, qemu


@dataclass(frozen=True)
class Launched:
    """A QEMU that is booting, and the host ends of its sockets."""

    qemu: subprocess.Popen[bytes]
    qmp: socket.socket  # not yet read: QEMU's greeting waits in it
    agent: socket.socket
    nonce: str  # the agent's hello must echo it
    argv: list[str]
    spare_qmp: socket.socket | None = None  # a second QMP monitor, if asked for


def _hold_stdio() -> None:
    """Occupy whichever of fds 0-2 is closed: QEMU gets its stdio by dup2 onto 0-2, so
    a socket that landed there would be clobbered (`monitor/spawn.py` leaves 0 and 1
    close-on-exec, so a fresh monitor starts without them)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def launch(cfg: Config, *, name: str, kernel: str, initrd: str, kernel_cmdline: tuple[str, ...],
           root_image: str, accel: str, console_log: Path, qemu_log: Path,
           spare_qmp: bool = False) -> Launched:
    _hold_stdio()
    # QEMU would create the console log 0644 (its umask): the guest's output is ours.
    os.close(os.open(console_log, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    (qmp_host, qmp_vm), (agent_host, agent_vm) = qemu.socket_pairs()
    spare_host, spare_vm = socket.socketpair() if spare_qmp else (None, None)
    hosts = [s for s in (qmp_host, agent_host, spare_host) if s is not None]
    vm_ends = [s for s in (qmp_vm, agent_vm, spare_vm) if s is not None]
    nonce = os.urandom(16).hex()
    limits = vmspec.bounds(cfg)
    try:
        argv = cmdline.build(vmspec.pod_vm(
            cfg, name=name, kernel=kernel, initrd=initrd, kernel_cmdline=kernel_cmdline,
            root_image=root_image, accel=accel, nonce=nonce, qmp_fd=qmp_vm.fileno(),
            agent_fd=agent_vm.fileno(), console_log=str(console_log),
            max_vcpus=limits.max_vcpus, max_memory_mib=limits.max_mib,
            spare_qmp_fd=spare_vm.fileno() if spare_vm is not None else -1))
        proc = qemu.launch(argv, qemu_fds=[s.fileno() for s in vm_ends], log=qemu_log)
    except BaseException:
        for sock in hosts:
            sock.close()
        raise
    finally:
        for sock in vm_ends:
            sock.close()
    return Launched(proc, qmp_host, agent_host, nonce, argv, spare_host)
