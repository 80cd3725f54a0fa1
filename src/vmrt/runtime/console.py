"""--console-socket: hand the caller a pty master, as runc does (SCM_RIGHTS)."""

from __future__ import annotations

import os
import socket

from vmrt.errors import InvalidArgumentError


def send_console(console_socket: str) -> int:
    """Open a host pty, send its master to the socket, return the slave for the shim."""
    master, slave = os.openpty()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(console_socket)
            name = os.ttyname(slave).encode()
            socket.send_fds(sock, [name], [master])
    except OSError as exc:
        os.close(slave)
        raise InvalidArgumentError(f"cannot use console socket {console_socket}: {exc}") from exc
    finally:
        os.close(master)
    return slave
