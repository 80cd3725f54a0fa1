"""The one place that spawns processes and the one place that reaps them.

The agent is PID 1 (or a subreaper outside a VM), so every orphan in the guest
is re-parented to it: container init processes once crun exits, and crun's own
helpers.  A second waiter would race: ``asyncio.create_subprocess_exec`` and
``subprocess`` call ``waitpid(pid)`` themselves, and whichever of the two
``waitpid`` calls comes first swallows the status for the other.  So nothing
here uses them.  Children are started with ``os.posix_spawn`` and every status
is collected by a single SIGCHLD handler looping ``waitpid(-1, WNOHANG)``,
which resolves the future registered for that pid.  A status that arrives
before anyone asked for it (a container that dies before its pid file was
read) is kept until claimed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from vmrt_agent import aio
from vmrt_agent.errors import AgentError
from vmrt_agent.protocol import ExitStatus

log = logging.getLogger(__name__)

#: The environment of everything the agent spawns: fixed, so that what crun
#: sees does not depend on what the kernel (or a test runner) handed PID 1.
SPAWN_ENV: Final = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
#: Statuses of orphans nobody claims (crun's helpers) are kept this many deep.
MAX_UNCLAIMED: Final = 1024
#: Python ignores these; an ignored disposition survives exec, so reset them
#: or every container would start with SIGPIPE ignored.
_RESET_SIGNALS: Final = (signal.SIGPIPE, signal.SIGXFSZ)


@dataclass(frozen=True, slots=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes


def exit_status(wait_status: int) -> ExitStatus:
    """The wire form of a raw ``waitpid`` status."""
    if os.WIFSIGNALED(wait_status):
        return ExitStatus(signal=os.WTERMSIG(wait_status))
    return ExitStatus(code=os.WEXITSTATUS(wait_status))


class Reaper:
    """Spawns children and hands out their exit statuses, exactly once each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._unclaimed: collections.OrderedDict[int, int] = collections.OrderedDict()

    def install(self) -> None:
        self._loop.add_signal_handler(signal.SIGCHLD, self.reap)
        self.reap()  # children that died before the handler existed

    def uninstall(self) -> None:
        self._loop.remove_signal_handler(signal.SIGCHLD)

    def reap(self) -> None:
        """Collect every exited child; SIGCHLDs coalesce, so loop until none is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            waiter = self._waiters.pop(pid, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(status)
                continue
            self._unclaimed[pid] = status
            while len(self._unclaimed) > MAX_UNCLAIMED:
                self._unclaimed.popitem(last=False)

    def spawn(self, argv: Sequence[str], fds: Mapping[int, int]) -> int:
        """Start ``argv`` with child fd ``k`` = our fd ``fds[k]``; nothing else is inherited.

        Every fd the agent opens is close-on-exec (Python's default), and the
        dup2 actions clear that flag on the targets only.
        """
        log.debug("spawn %s", list(argv))
        with contextlib.ExitStack() as stack:
            actions = []
            for target, source in sorted(fds.items()):
                if source in fds and source != target:
                    # A source that is also a target may be overwritten by an
                    # earlier dup2 (PID 1 may lack fds 0-2); move it above them.
                    moved = fcntl.fcntl(source, fcntl.F_DUPFD_CLOEXEC, max(fds) + 1)
                    stack.callback(os.close, moved)
                    source = moved
                actions.append((os.POSIX_SPAWN_DUP2, source, target))
            pid = os.posix_spawn(argv[0], list(argv), SPAWN_ENV, file_actions=actions,
                                 setsigdef=_RESET_SIGNALS, setsigmask=())
        # The pid is new, so any status kept under it belongs to an earlier
        # process that had the same number.  Reaping runs on this thread, so
        # the new child cannot have been reaped yet.
        self._unclaimed.pop(pid, None)
        return pid

    def wait(self, pid: int) -> asyncio.Future[int]:
        """The raw wait status of child ``pid``, spawned here (or see :meth:`adopt`)."""
        existing = self._waiters.get(pid)
        if existing is not None:
            return existing
        future: asyncio.Future[int] = self._loop.create_future()
        if pid in self._unclaimed:
            future.set_result(self._unclaimed.pop(pid))
        else:
            self._waiters[pid] = future
        return future

    def adopt(self, pid: int) -> asyncio.Future[int]:
        """Wait for a process that was not spawned here, like a container's init.

        If the process still exists (even as a zombie), a status kept under its
        number is stale, from an earlier process with the same pid.
        """
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pass  # already reaped: the kept status, if any, is its own
        else:
            self._unclaimed.pop(pid, None)
        return self.wait(pid)

    async def run(self, argv: Sequence[str], *, timeout: float, stdin: int | None = None,
                  stdout: int | None = None, stderr: int | None = None) -> Completed:
        """Run ``argv`` to completion; capture stdout/stderr unless given fds for them.

        ``stdin`` defaults to /dev/null.  On timeout the child is killed and
        :class:`AgentError` raised: no call into crun may hang the agent.
        """
        with contextlib.ExitStack() as stack:
            devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            stack.callback(os.close, devnull)
            fds = {0: devnull if stdin is None else stdin}
            captures: list[int] = []
            child_ends: list[int] = []
            for target, given in ((1, stdout), (2, stderr)):
                if given is not None:
                    fds[target] = given
                    continue
                read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
                stack.callback(os.close, read_end)
                captures.append(read_end)
                child_ends.append(write_end)
                fds[target] = write_end
            try:
                pid = self.spawn(argv, fds)
            finally:
                for fd in child_ends:  # so that the child's exit means EOF
                    os.close(fd)
            exited = self.wait(pid)
            readers = [asyncio.ensure_future(aio.read_all(fd)) for fd in captures]
            try:
                async with asyncio.timeout(timeout):
                    status = await exited
                    outputs = [await reader for reader in readers]
            except TimeoutError:
                if not exited.done():
                    os.kill(pid, signal.SIGKILL)
                    await exited
                raise AgentError(f"{' '.join(argv[:4])} timed out after {timeout:g}s") from None
            finally:
                for reader in readers:
                    reader.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
        code = os.waitstatus_to_exitcode(status)
        out = outputs.pop(0) if stdout is None else b""
        err = outputs.pop(0) if stderr is None else b""
        return Completed(code if code >= 0 else 128 - code, out, err)
