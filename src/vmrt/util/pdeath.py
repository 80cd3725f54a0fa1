"""Children that die with their parent (prctl PR_SET_PDEATHSIG), for QEMU.

The monitor is QEMU's only driver: it holds both ends QEMU talks to (QMP and
the agent port are socketpairs). A QEMU that outlived a SIGKILLed monitor
would keep the workload running where nobody can reach, stop or even see it,
while `state` (which follows the shim, and the shim follows the monitor)
already says `stopped`. With the parent-death signal the kernel kills QEMU
the moment the monitor dies, so the lie cannot happen; virtiofsd follows on
its own when QEMU's end of the vhost-user socket closes.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A `preexec_fn` for subprocess.Popen that makes the child receive `sig` when the
    thread that forked it exits.

    Everything is looked up here, in the parent: the function that runs between
    fork and exec only calls prctl and getppid (no import, no allocation to speak
    of). If the parent died before prctl took effect, the child is already an
    orphan and kills itself rather than run unsupervised.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # the loaded libc: no `ldconfig -p` run
    parent = os.getpid()

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0 or os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec
