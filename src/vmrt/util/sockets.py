"""Unix sockets at paths of any length.

sun_path holds 107 bytes, and --root lives wherever the caller says (podman
and test runners nest it deep). Binding or connecting through
/proc/self/fd/<dirfd>/<name> keeps the address short whatever the directory.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

_MAX_SUN_PATH = 100


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    text = str(path)
    if len(text.encode()) <= _MAX_SUN_PATH:
        yield text
        return
    dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dirfd}/{path.name}"
    finally:
        os.close(dirfd)


def bind_unix(path: Path, *, backlog: int = 64, mode: int = 0o600) -> socket.socket:
    """A listening socket at `path`, mode 0600: only root may drive the VM behind it."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            with _short_path(path) as addr:
                sock.bind(addr)
        finally:
            os.umask(old)
        os.chmod(path, mode)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_unix(path: Path, *, timeout: float | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        with _short_path(path) as addr:
            sock.connect(addr)
    except BaseException:
        sock.close()
        raise
    return sock
