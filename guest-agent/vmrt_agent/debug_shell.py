"""`vmrt debug console`: an operator's shell in the guest, outside every container.

The host decides whether it is allowed (its config's `debug_console`; the
monitor's socket is root's alone); the agent only runs it: ``/bin/sh -i`` on a
fresh pty, as root, in the VM's own namespaces, where crun's state, the
shares' mounts and the kernel's view of the hot-plugged devices can be seen.
Its channel behaves like an exec'd process's: output under credit, RESIZE,
and an exit event after the output; the host hangs it up with a signal when
the operator's console goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections.abc import Coroutine
from typing import Any, Final

from vmrt_agent import protocol
from vmrt_agent.containers import Containers
from vmrt_agent.errors import InvalidError, NotFoundError
from vmrt_agent.io import ProcessIO
from vmrt_agent.reaper import SPAWN_ENV, exit_status

log = logging.getLogger(__name__)

SHELL: Final = "/bin/sh"
PROMPT: Final = "vmrt-guest:\\w# "
_TERM_RE: Final = re.compile(r"[A-Za-z0-9._+-]{1,64}")
#: Python ignores these; an ignored disposition survives exec (see reaper.py).
_RESET_SIGNALS: Final = (signal.SIGPIPE, signal.SIGXFSZ)


class DebugShells:
    def __init__(self, containers: Containers) -> None:
        self._containers = containers
        self._pids: dict[int, int] = {}  # channel -> pid of a live shell
        self._watchers: set[asyncio.Task[None]] = set()

    def __contains__(self, channel: int) -> bool:
        return channel in self._pids

    def open(self, channel: int, term: str) -> Coroutine[Any, Any, int]:
        """Reserve the channel now (frames for it may follow at once); start the shell later."""
        c = self._containers
        if not _TERM_RE.fullmatch(term):
            raise InvalidError(f"invalid TERM {term!r}")
        if channel in c._channels:
            raise InvalidError(f"channel {channel} is already in use")
        pio = ProcessIO(channel, c._writer, terminal=True)
        c._channels.add(pio)
        return self._start(channel, pio, term)

    async def _start(self, channel: int, pio: ProcessIO, term: str) -> int:
        c = self._containers
        try:
            master, slave = os.openpty()  # both close-on-exec
            try:
                pid = _spawn_on(os.ttyname(slave), term)
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            # Reaping runs on this thread: the shell cannot have been reaped yet.
            exited = c._reaper.adopt(pid)
        except BaseException:
            c._channels.remove(channel)
            pio.close()
            raise
        pio.attach_pty(master)
        self._pids[channel] = pid
        task = asyncio.create_task(self._watch(channel, pio, pid, exited))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        log.info("debug shell on channel %d (pid %d)", channel, pid)
        return pid

    async def _watch(self, channel: int, pio: ProcessIO, pid: int,
                     exited: asyncio.Future[int]) -> None:
        c = self._containers
        status = exit_status(await exited)
        self._pids.pop(channel, None)
        pio.notice_exit()
        await pio.wait_outputs_closed(c._config.exit_drain_timeout)
        c._writer.send(protocol.event("exit", id="", channel=channel, status=status.to_json()))
        c._channels.remove(channel)
        pio.close()  # closing the master hangs up whatever the shell left on the pty
        log.info("debug shell on channel %d (pid %d) exited: %s", channel, pid, status.to_json())

    def signal(self, channel: int, sig: int) -> None:
        pid = self._pids.get(channel)
        if pid is None:
            raise NotFoundError("no such process")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.Signals(sig) if sig else 0)


def _spawn_on(tty: str, term: str) -> int:
    """``/bin/sh -i`` as a session leader whose controlling terminal is ``tty``.

    posix_spawn runs setsid before the file actions, so opening the pty's
    slave as fd 0 makes it the new session's controlling terminal: job
    control and ^C work as on a console.
    """
    env = {**SPAWN_ENV, "TERM": term, "HOME": "/", "PS1": PROMPT}
    actions = [(os.POSIX_SPAWN_OPEN, 0, tty, os.O_RDWR, 0),
               (os.POSIX_SPAWN_DUP2, 0, 1), (os.POSIX_SPAWN_DUP2, 0, 2)]
    return os.posix_spawn(SHELL, [SHELL, "-i"], env, file_actions=actions, setsid=True,
                          setsigdef=_RESET_SIGNALS, setsigmask=())
