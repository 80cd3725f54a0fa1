"""Receiving a container's pty master from crun over ``--console-socket``.

With ``terminal``, crun allocates the pty inside the container's setup and
sends the master to a unix socket the caller listens on (SCM_RIGHTS), the same
contract conmon relies on with runc.  The agent is that caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from vmrt_agent import aio
from vmrt_agent.errors import AgentError


def listen(path: str) -> socket.socket:
    """A listening unix socket at ``path``, replacing a stale one, for one connection."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(1)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def receive_pty(listener: socket.socket) -> int:
    """Accept crun's connection and return the pty master fd it sends (close-on-exec)."""
    loop = asyncio.get_running_loop()
    conn, _ = await loop.sock_accept(listener)
    with conn:
        conn.setblocking(False)
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1,
                                                          socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                await aio.wait_readable(conn.fileno())
                continue
            if fds:
                for extra in fds[1:]:
                    os.close(extra)
                return fds[0]
            if not data:
                raise AgentError("the runtime closed the console socket without a terminal")
