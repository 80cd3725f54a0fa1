"""Typed wrappers for the Linux syscalls the stdlib does not expose.

mount(2), umount2(2), reboot(2) and prctl(2) are called through ctypes on the
libc the interpreter already links, so the guest image needs no mount binary
and the agent never shells out for them.  Failures raise ``OSError`` with the
errno, like the ``os`` module does.
"""

from __future__ import annotations

import ctypes
import os
from typing import Final

MS_NOSUID: Final = 0x2
MS_NODEV: Final = 0x4
MS_NOEXEC: Final = 0x8
MS_BIND: Final = 0x1000
MS_REC: Final = 0x4000
MNT_DETACH: Final = 0x2
RB_POWER_OFF: Final = 0x4321FEDC
PR_SET_CHILD_SUBREAPER: Final = 36

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.reboot.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


def _check(ret: object, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    _check(
        _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                    flags, data.encode() if data else None),
        f"mount {source} on {target}",
    )


def umount2(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def power_off() -> None:
    """Power the VM off; as PID 1 this is the only safe way to stop (exiting panics)."""
    os.sync()
    _check(_libc.reboot(RB_POWER_OFF), "reboot(RB_POWER_OFF)")


def set_child_subreaper() -> None:
    """Adopt orphaned descendants, as PID 1 does, when the agent runs outside a VM."""
    _check(_libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")
